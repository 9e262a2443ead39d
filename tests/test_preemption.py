"""Preemption and multi-host end to end: SIGTERM stops after the current step with a finalised checkpoint
(exit 143), re-runs resume at the next step with 1 or 2 processes and the losses of an uninterrupted run,
2 processes stop together when only one is signalled, and a save killed half-way is never the latest."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny model with a constant learning rate, so `train.steps` changes nothing but where the run ends.
TINY = ["--config=configs/sft_tiny.py", "--config.model.d_model=32", "--config.model.mlp_dim=64",
        "--config.model.num_layers=1", "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
        "--config.model.head_dim=16", "--config.data.seq_len=48", "--config.train.batch_size=8",
        "--config.optim.schedule=constant", "--config.optim.warmup_steps=0", "--config.train.log_every=1",
        "--config.train.checkpoint_every=0", "--config.train.keep_checkpoints=3", "--config.data.eval_path=",
        "--config.train.progress=false"]


# Cheaper XLA:CPU codegen (as tests/test_bench_train.py's subprocess): the runs' compiles (8 devices, then
# 2 processes x 4) are most of this test's time. Every run here gets the same flags, so the losses compared
# (run against run) come from the same programs.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def cli_env(cache_dir: str, devices: int = 1) -> dict:
  """A clean CPU environment; the persistent compilation cache lets later runs skip XLA compiles."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             PYTHONUNBUFFERED="1", XLA_FLAGS=FAST_COMPILE)
  return env


def losses(workdir: str) -> dict[int, float]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _train(workdir, steps, env):
  return subprocess.run([sys.executable, "-m", "jaxpost.train", *ARGS, f"--workdir={workdir}",
                         f"--config.train.steps={steps}"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


def _wait_for_steps(workdir, n, proc, timeout_s=240):
  deadline = time.monotonic() + timeout_s
  while len(losses(workdir)) < n and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  assert len(losses(workdir)) >= n, proc.communicate(timeout=60) if proc.poll() is not None else "too slow"
  return max(losses(workdir))


def _child(launcher_pid: int, process_id: int) -> int:
  """The pid of `jaxpost.launch_local`'s process `process_id` (found by its JAXPOST_PROCESS_ID)."""
  with open(f"/proc/{launcher_pid}/task/{launcher_pid}/children") as f:
    for pid in map(int, f.read().split()):
      with open(f"/proc/{pid}/environ", "rb") as env:
        if f"JAXPOST_PROCESS_ID={process_id}".encode() in env.read().split(b"\0"):
          return pid
  raise AssertionError(f"no process {process_id} under launcher {launcher_pid}")


# 8 devices as data=4 x fsdp=2, so 2 processes x 4 devices shard the batch and the params across hosts.
ARGS = TINY + ["--config.mesh.data=4", "--config.mesh.fsdp=2"]


def test_sigterm_stops_after_the_step_and_runs_resume_across_process_counts(tmp_path):
  """One scenario, four runs (each run costs seconds of compiling, so each checks several things):

  1. 1 process x 8 devices, SIGTERM: exit 143 after at most the step in flight, one finalised checkpoint
     at the last step run (step f).
  2. 2 processes x 4 devices (jaxpost.launch_local) resume from f: the 1-process checkpoint restores on 2
     processes and training goes on at f + 1. SIGTERM to process 1 only: both processes stop after the
     same step g (the all-reduce vote), each exits 143, and g is the latest checkpoint.
  3. 1 process, uninterrupted, steps 1..g+2: the reference.
  4. 1 process resumes from g: the 2-process checkpoint restores on 1 process.
  Losses: run 1 equals the reference exactly (same layout); runs 2 and 4 match it up to float-summation
  order (2 processes hold the same global batch of 8 rows, in another device order).
  """
  env = cli_env(str(tmp_path / "xla_cache"), devices=8)
  run, reference, back = str(tmp_path / "run"), str(tmp_path / "reference"), str(tmp_path / "back")

  # 1. One process, SIGTERM.
  proc = subprocess.Popen([sys.executable, "-m", "jaxpost.train", *ARGS, f"--workdir={run}",
                           "--config.train.steps=100000"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  seen = _wait_for_steps(run, 2, proc)
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-2000:]
  assert time.monotonic() - sent < 60
  f = max(losses(run))
  assert f"stopped by SIGTERM after step {f}" in err
  assert os.listdir(os.path.join(run, "checkpoints")) == [str(f)]
  assert seen <= f <= seen + 2  # The step logged when we looked, then at most the one in flight.

  # 2. Two processes resume; SIGTERM to process 1 alone.
  multi_env = {k: v for k, v in env.items() if k != "JAX_NUM_CPU_DEVICES"}
  launcher = subprocess.Popen([sys.executable, "-m", "jaxpost.launch_local", "--num_processes=2",
                               "--devices_per_process=4", "--", *ARGS, f"--workdir={run}",
                               "--config.train.steps=100000"], cwd=ROOT, env=multi_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
  _wait_for_steps(run, f + 1, launcher)
  os.kill(_child(launcher.pid, 1), signal.SIGTERM)
  out, _ = launcher.communicate(timeout=120)
  assert launcher.returncode == 143, out[-3000:]
  assert f"[p0] resuming from checkpoint step {f}" in out
  g = max(losses(run))
  assert f"[p0] stopped by SIGTERM after step {g}" in out and f"[p1] stopped by SIGTERM after step {g}" in out
  assert "[p1] SIGTERM: finishing" in out and "[p0] SIGTERM" not in out  # p0 stopped by the vote alone.
  assert "[p1] step" not in out  # Only process 0 logs metrics.
  assert sorted(os.listdir(os.path.join(run, "checkpoints")), key=int)[-1] == str(g)
  two = losses(run)
  assert sorted(two) == list(range(1, g + 1))  # One line per step (process 0 only), none repeated.

  # 3. The uninterrupted reference; 4. one process resumes from the 2-process checkpoint g.
  shutil.copytree(run, back)
  done = _train(reference, g + 2, env)
  assert done.returncode == 0, done.stderr[-2000:]
  resumed = _train(back, g + 2, env)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"resuming from checkpoint step {g}" in resumed.stdout
  ref, one_more = losses(reference), losses(back)
  assert [two[s] for s in range(1, f + 1)] == [ref[s] for s in range(1, f + 1)]
  np.testing.assert_allclose([two[s] for s in range(f + 1, g + 1)], [ref[s] for s in range(f + 1, g + 1)],
                             rtol=1e-4)
  np.testing.assert_allclose([one_more[g + 1], one_more[g + 2]], [ref[g + 1], ref[g + 2]], rtol=1e-4)


_KILLED_SAVE = """
import os, sys
import jax.numpy as jnp
from jaxpost.checkpoint import Checkpointer
c = Checkpointer(sys.argv[1])
c.save(1, {"w": jnp.ones((2048, 2048))}, {"next_index": 1})
c.wait()
c.save(2, {"w": jnp.full((2048, 2048), 2.0)}, {"next_index": 2})  # Async: returns before the write.
# Die once the write has begun (its temporary directory exists), like a host SIGKILLed mid-save: on a loaded
# machine the background write may not have created it yet when save() returns.
root = os.path.join(sys.argv[1], "checkpoints")
for _ in range(2_000_000):
  if any(n.startswith("2.orbax-checkpoint-tmp") for n in os.listdir(root)):
    break
os._exit(0)  # No finalisation.
"""


def test_a_save_killed_half_way_is_never_the_latest(tmp_path):
  """orbax writes step 2 into `2.orbax-checkpoint-tmp*` and renames it when done; a process killed
  before that leaves the temporary directory, which `latest_step` ignores (and the next manager removes)."""
  from jaxpost.checkpoint import Checkpointer
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  run = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  left = sorted(os.listdir(tmp_path / "checkpoints"))
  assert "1" in left and "2" not in left, left
  assert any(name.startswith("2.orbax-checkpoint-tmp") for name in left), left
  checkpointer = Checkpointer(str(tmp_path))
  assert checkpointer.latest_step() == 1
  state, data = checkpointer.restore(1, {"w": np.zeros((2048, 2048), np.float32)})
  assert float(state["w"][0, 0]) == 1.0 and data == {"next_index": 1}
  checkpointer.close()


def test_stop_request_records_the_signal_and_restores_the_handlers():
  from jaxpost import preemption
  before = signal.getsignal(signal.SIGTERM)
  with preemption.StopRequest() as stop:
    assert not stop.should_stop()
    os.kill(os.getpid(), signal.SIGTERM)  # The handler runs in this (main) thread before kill returns.
    assert stop.should_stop() and stop.agreed == signal.SIGTERM
    error = stop.preempted(7)
  assert signal.getsignal(signal.SIGTERM) is before
  assert isinstance(error, SystemExit) and error.code == 143 and str(error).startswith("stopped by SIGTERM after step 7")
