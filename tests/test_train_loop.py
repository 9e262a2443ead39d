"""The offline loop end to end: resume == uninterrupted (bitwise), NaN stop, and the real command line."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxpost.loops import common, offline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "assets", "arithmetic")


def _config(steps=6):
  from jaxpost.config import base_config
  c = base_config()
  c.tokenizer.path = os.path.join(ASSETS, "tokenizer.model")
  c.data.train_path = os.path.join(ASSETS, "sft_train.jsonl")
  c.data.seq_len = 48
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 32, 1, 64
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 2, 1, 16
  c.train.steps, c.train.batch_size, c.train.log_every = steps, 8, 1
  c.train.checkpoint_every, c.train.keep_checkpoints, c.train.progress = 3, 5, False
  return c


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _params(workdir, step):
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(os.path.abspath(path))["params"]


def test_resumed_run_equals_uninterrupted(tmp_path):
  """6 steps straight vs 3 steps + restart from the step-3 checkpoint + 3 steps: bitwise equal on CPU
  (same losses at steps 4-6, same final params, same data order through the restored iterator)."""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  offline.run(_config(), straight)
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))  # As if the run died after step 3's save.
  os.remove(os.path.join(resumed, "metrics.jsonl"))
  offline.run(_config(), resumed)
  a, b = _losses(straight), _losses(resumed)
  assert sorted(b) == [4, 5, 6]
  assert [a[s] for s in (4, 5, 6)] == [b[s] for s in (4, 5, 6)]
  pa, pb = _params(straight, 6), _params(resumed, 6)
  for x, y in zip(__import__("jax").tree.leaves(pa), __import__("jax").tree.leaves(pb)):
    np.testing.assert_array_equal(x, y)


def test_nonfinite_loss_stops_with_the_step(tmp_path):
  c = _config(steps=50)
  c.optim.lr, c.optim.warmup_steps, c.optim.grad_clip, c.train.checkpoint_every = 1e12, 0, 0.0, 0
  with pytest.raises(common.NonFiniteLossError, match=r"^step \d+: loss is (nan|inf)"):
    offline.run(c, str(tmp_path / "nan"))


def test_command_line_trains_evaluates_checkpoints_and_resumes(tmp_path):
  workdir = str(tmp_path / "cli")
  # The persistent compilation cache lets the resumed run skip the first run's XLA compiles.
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  base = [sys.executable, "-m", "jaxpost.train", "--config=configs/sft_tiny.py", f"--workdir={workdir}",
          "--config.train.log_every=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
          "--config.model.d_model=32", "--config.model.mlp_dim=64"]
  first = subprocess.run(base + ["--config.train.steps=4"], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records if "loss" in r] == [2, 4]
  assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
  assert {"loss", "lr", "grad_norm", "tokens_per_sec"} <= set(records[0])
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
  assert os.listdir(os.path.join(workdir, "tb"))
  second = subprocess.run(base + ["--config.train.steps=6"], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "resuming from checkpoint step 4" in second.stdout
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]

  # A different model on this workdir: one line naming the setting, nothing in the workdir touched (orbax
  # used to fail mid-restore with ~370 lines ending in "Event loop is closed").
  def snapshot():
    return {os.path.join(d, f): (os.stat(os.path.join(d, f)).st_size, os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, _, files in os.walk(workdir) for f in files}
  before = snapshot()
  wider = subprocess.run(base + ["--config.train.steps=8", "--config.model.d_model=64"], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=300)
  assert wider.returncode == 2 and snapshot() == before, wider.stderr[-2000:]
  assert wider.stderr.strip().splitlines()[-1] == (
      f"error: config.model.d_model=64 (recorded: 32) differs from the checkpoint's {workdir}/model.json; "
      "resume with the same model settings, or train in a new --workdir")
  # --workdir naming a file: one line, exit 2 (was a raw FileExistsError).
  with open(tmp_path / "a_file", "w") as f:
    f.write("x")
  on_file = subprocess.run(base[:4] + [f"--workdir={tmp_path / 'a_file'}"], cwd=ROOT, capture_output=True, text=True,
                           env=env, timeout=300)
  assert on_file.returncode == 2
  assert on_file.stderr.strip().splitlines() == [f"error: --workdir={tmp_path / 'a_file'}: is a file, not a directory"]
