"""Config loading, variants, overrides and the one-line errors for bad values (jaxpost/config.py, train.py)."""
import os
import subprocess
import sys

import pytest

from jaxpost import config as config_lib
from jaxpost import mesh as mesh_lib
from jaxpost.algorithms import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(spec):
  import importlib.util
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def test_tiny_config_loads_and_validates():
  c = _load("configs/sft_tiny.py")
  config_lib.validate(c, num_devices=1)
  assert c.algorithm == "sft" and c.mesh.data == -1


def test_variant_argument_changes_mesh():
  c = _load("configs/sft_tiny.py:sharded")
  assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (2, 2, 2)
  config_lib.validate(c, num_devices=8)
  with pytest.raises(config_lib.ConfigError, match=r"^config\.mesh: .* 8 devices, but 1 are present"):
    config_lib.validate(c, num_devices=1)


def test_mesh_shape_resolves_minus_one():
  c = config_lib.base_config()
  c.mesh.tensor = 2
  assert mesh_lib.mesh_shape(c, 8) == {"data": 4, "fsdp": 1, "tensor": 2}


@pytest.mark.parametrize("key,value,pattern", [
    ("train.steps", -1, r"^config\.train\.steps: must be > 0"),
    ("algorithm", "ppx", r"^config\.algorithm: 'ppx' is not one of"),
    ("model.family", "gpt9", r"^config\.model\.family: 'gpt9' is not one of"),
    ("model.num_kv_heads", 3, r"^config\.model\.num_kv_heads: num_heads=4 is not a multiple"),
    ("train.grad_accum", 3, r"^config\.train\.grad_accum: batch_size=8 is not divisible"),
    ("mesh.data", 3, r"^config\.mesh\.fsdp: mesh \(data=3, fsdp=-1, tensor=1\) does not divide 8 devices"),
    ("rl.temperature", 0.0, r"^config\.rl\.temperature: must be > 0, got 0.0: rollouts sample"),
    ("train.batch_size", 32, r"^config\.train\.batch_size: 32 is not used by algorithm=grpo \(the rollout batch is "
                             r"rl\.prompts_per_step x rl\.num_generations rows, .*\); leave it at its default 8$"),
    ("ppo:rl.dynamic_sampling", True, r"^config\.rl\.dynamic_sampling: True is not used by algorithm=ppo \(PPO's "
                                      r"advantages are GAE"),
    ("ppo:rl.advantage", "rloo", r"^config\.rl\.advantage: 'rloo' is not used by algorithm=ppo"),
    ("grpo:data.seq_len", 256, r"^config\.data\.seq_len: 256 is not used by algorithm=grpo \(rollout rows are "
                               r"rl\.max_prompt_len \+ rl\.max_new_tokens - 1 long.*leave it at its default 128$"),
    ("dpo:data.pack", False, r"^config\.data\.pack: False is not used by algorithm=dpo \(a row holds one pair, "
                             r".*never packed\); leave it unset$"),
    ("dpo:dpo.beta", 0.0, r"^config\.dpo\.beta: must be > 0, got 0\.0$"),
    ("grpo:rl.dual_clip", 0.5, r"^config\.rl\.dual_clip: must be 0 \(off\) or > 1, got 0\.5$"),
    ("rl.sampler", "vllm", r"^config\.rl\.sampler: 'vllm' is not one of engine, static$"),
    ("rl.engine.num_pages", -1, r"^config\.rl\.engine\.num_pages: must be >= 0 \(0 = automatic\), got -1$"),
    ("rl.engine.page_size", 0, r"^config\.rl\.engine\.page_size: must be > 0, got 0$"),
    ("rl.cuda_graphs", True, r"^config\.rl\.cuda_graphs: applies to the static sampler; set rl\.sampler=static"),
])
def test_bad_values_name_the_key(key, value, pattern):
  c = config_lib.base_config()
  if ":" in key:
    c.algorithm, key = key.split(":")
  elif key.startswith(("rl.", "train.batch_size")):
    c.algorithm = "grpo"
  *groups, field = key.split(".")
  target = c
  for g in groups:
    target = target[g]
  target[field] = value
  if key == "mesh.data":
    c.mesh.fsdp = -1
  with pytest.raises(config_lib.ConfigError, match=pattern):
    config_lib.validate(c, num_devices=8)


def _cli(*args):
  proc = subprocess.run([sys.executable, "-m", "jaxpost.train", "--config=configs/sft_tiny.py",
                         "--workdir=/tmp/jaxpost-never-created", *args], cwd=ROOT, capture_output=True, text=True,
                        env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}, timeout=120)
  return proc.returncode, proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("override,expected", [
    ("--config.train.stpes=3", "error: --config.train.stpes: config.train.stpes does not exist (did you mean train.steps?)"),
    ("--config.trian.steps=3", "error: --config.trian.steps: config.trian does not exist (did you mean train?)"),
    ("--config.train.steps=-3", "error: config.train.steps: must be > 0, got -3"),
    ("--config.algorithm=rlhf", f"error: config.algorithm: 'rlhf' is not one of {', '.join(registry.ALGORITHMS)}"),
    ("--config.mesh.data=3", "error: config.mesh: mesh (data=3, fsdp=1, tensor=1) has 3 devices, but 1 are present"),
])
def test_command_line_errors_are_one_line(override, expected):
  code, last = _cli(override)
  assert code == 2
  assert last == expected
