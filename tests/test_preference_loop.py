"""Reward model and DPO end to end from the command line on the toy arithmetic preferences (tiny model,
1 CPU device): the RM ranks > 90% of held-out pairs right and scores GRPO completions as `rm:WORKDIR`;
DPO starts at loss ln 2 with zero margins (policy == reference) and raises reward accuracy and margins."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.d_model=64", "--config.model.mlp_dim=128", "--config.model.head_dim=16",
        "--config.model.num_layers=1", "--config.train.progress=False"]


# Cheaper XLA:CPU codegen (as tests/test_bench_train.py's subprocess): the runs' compiles are most of their time.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _train(config: str, workdir: str, *overrides: str) -> list[dict]:
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": FAST_COMPILE}
  cmd = [sys.executable, "-m", "jaxpost.train", f"--config={config}", f"--workdir={workdir}", *TINY, *overrides]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def rm_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("rm") / "run")
  records = _train("configs/rm_tiny.py", workdir, "--config.train.steps=60", "--config.train.log_every=60",
                   "--config.train.eval_every=0", "--config.train.checkpoint_every=0")
  return workdir, records


def test_reward_model_reaches_90_percent_held_out(rm_workdir):
  _, records = rm_workdir
  final = [r for r in records if "eval/accuracy" in r][-1]
  assert final["step"] == 60
  assert final["eval/accuracy"] > 0.9, final
  assert final["eval/reward/chosen"] > final["eval/reward/rejected"]


def test_reward_model_as_grpo_reward(rm_workdir):
  """`rm:WORKDIR` in rl.reward_fns: the correct sums of held-out questions outscore a - b, batched."""
  from jaxpost import rewards
  from jaxpost.tasks.arithmetic import HELD_OUT_PAIRS, question
  workdir, _ = rm_workdir
  pairs = HELD_OUT_PAIRS[:40:4]
  examples = [{"prompt": question(a, b)} for a, b in pairs] * 2
  completions = [str(a + b) for a, b in pairs] + [str(a - b) for a, b in pairs]
  scores, metrics = rewards.score_batch(f"rm:{workdir}", completions, examples)
  assert scores.shape == (20,) and metrics["reward/errors"] == 0
  assert np.mean(scores[:10] > scores[10:]) >= 0.9, scores


def test_dpo_raises_reward_accuracy_and_margins(tmp_path):
  records = _train("configs/dpo_tiny.py", str(tmp_path / "dpo"), "--config.train.steps=20",
                   "--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.checkpoint_every=0")
  train = [r for r in records if "rewards/margins" in r and "eval_loss" not in r]
  first, last = train[0], train[-1]
  assert first["step"] == 1 and abs(first["loss"] - np.log(2)) < 1e-4  # policy == reference at step 1
  assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4) and first["rewards/accuracies"] == 0.0
  late = train[-5:]
  assert np.mean([r["rewards/accuracies"] for r in late]) > 0.7, late
  assert np.mean([r["rewards/margins"] for r in late]) > 0.1, late
  assert last["loss"] < np.log(2)
  assert "eval/accuracy" in records[-1]


@pytest.mark.parametrize("key,value,message", [
    ("dpo.loss_type", "dpop", r"config.dpo.loss_type: 'dpop' is not one of sigmoid, ipo, simpo, orpo, kto"),
    ("dpo.ref_logps", "cached", r"config.dpo.ref_logps: 'cached' is not one of precompute, online"),
    ("dpo.beta", 0.0, r"config.dpo.beta: must be > 0"),
    ("dpo.label_smoothing", 0.5, r"config.dpo.label_smoothing: must be in \[0, 0.5\)"),
    ("model.head", "scalar", r"config.model.head: algorithm dpo needs head 'lm', got 'scalar'")])
def test_validate_names_bad_dpo_keys(key, value, message):
  from jaxpost import config as config_lib
  c = config_lib.base_config()
  c.algorithm = "dpo"
  group, name = key.split(".")
  c[group][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(c)


def test_validate_rm_needs_scalar_head():
  from jaxpost import config as config_lib
  c = config_lib.base_config()
  c.algorithm = "rm"
  with pytest.raises(config_lib.ConfigError, match=r"config.model.head: algorithm rm needs head 'scalar'"):
    config_lib.validate(c)
  c.model.head = "scalar"
  config_lib.validate(c)
