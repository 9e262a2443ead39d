"""Multi-host pieces: the processes split the data, the launcher stops the others and passes the failing
status on, and the start-up settings fail loudly. 2 processes x 4 devices training like 1 x 8, checkpoints
moving between the layouts and the stop vote run end to end in test_preemption.py."""
import time

import numpy as np
import pytest

from jaxpost import distributed, launch_local
from jaxpost.data import pipeline


def test_processes_read_disjoint_rows_that_add_up_to_the_single_process_batch():
  """The iterator the offline loop builds per process (process_index/count): at every step, also after a
  resume, the 2 processes' rows together are the 1-process global batch, and within an epoch no row
  reaches both processes (across an epoch boundary a row may recur, as it does for a single process)."""
  rows = {"tokens": np.repeat(np.arange(50, dtype=np.int32)[:, None], 4, axis=1)}  # Row r holds r.
  make = lambda i, n, b: pipeline.make_train_iterator(rows, batch_size=b, seed=3, process_index=i, process_count=n)
  single, parts = make(0, 1, 8), [make(0, 2, 4), make(1, 2, 4)]
  seen = [[], []]
  for step in range(15):  # 50 rows, 8 a step: steps 0-5 are inside epoch 0, later steps cross epochs.
    if step == 7:  # Resume both processes from their saved states.
      parts = [make(i, 2, 4) for i in range(2)]
      for it, saved in zip(parts, states):
        it.set_state(saved)
    p0, p1 = (next(it)["tokens"][:, 0] for it in parts)
    states = [it.get_state() for it in parts]
    assert sorted(np.concatenate([p0, p1])) == sorted(next(single)["tokens"][:, 0]), step
    if step < 6:
      seen[0] += list(p0)
      seen[1] += list(p1)
  assert len(set(seen[0]) | set(seen[1])) == 48 and not set(seen[0]) & set(seen[1])


def test_launcher_stops_the_others_and_returns_the_failing_status(tmp_path):
  (tmp_path / "worker.py").write_text(
      "import os, sys, time\n"
      "if os.environ['JAXPOST_PROCESS_ID'] == '1':\n"
      "  print('failing', flush=True); sys.exit(3)\n"
      "time.sleep(120)\n")
  start = time.monotonic()
  status = launch_local.launch([], num_processes=2, module="worker", cwd=str(tmp_path), grace_s=5)
  assert status == 3
  assert time.monotonic() - start < 30  # Process 0 was stopped, not waited for.


def test_launcher_environment_per_process():
  env = launch_local.process_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1"},
                                 process_id=1, num_processes=2, port=1234, devices_per_process=4, platform="cpu")
  assert env["JAXPOST_COORDINATOR_ADDRESS"] == "localhost:1234"
  assert (env["JAXPOST_NUM_PROCESSES"], env["JAXPOST_PROCESS_ID"], env["JAX_NUM_CPU_DEVICES"]) == ("2", "1", "4")
  assert env["XLA_FLAGS"] == "--xla_foo=1"  # The inherited device count would override ours.
  gpu = launch_local.process_env({}, process_id=1, num_processes=2, port=1, devices_per_process=4, platform="gpu")
  assert gpu["JAX_LOCAL_DEVICE_IDS"] == "4,5,6,7" and "JAX_PLATFORMS" not in gpu


def test_initialize_settings():
  # Nothing asked for, not a TPU slice: single process, jax untouched.
  assert distributed.initialize(mode="auto") is False
  assert distributed.initialize(coordinator_address="h:1", num_processes=2, process_id=0, mode="off") is False
  with pytest.raises(distributed.DistributedError, match=r"missing --num_processes .*--process_id"):
    distributed.initialize(coordinator_address="h:1")
  with pytest.raises(distributed.DistributedError, match="0 <= process_id < num_processes"):
    distributed.initialize(coordinator_address="h:1", num_processes=2, process_id=2)
  with pytest.raises(distributed.DistributedError, match="not one of"):
    distributed.initialize(mode="yes")


def test_tpu_worker_count_from_environment(monkeypatch):
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
  assert distributed.tpu_worker_count() == 4
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert distributed.tpu_worker_count() == 0  # Not a TPU VM: no metadata query at all.
