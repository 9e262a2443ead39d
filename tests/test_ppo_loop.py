"""The PPO loop end to end on the toy reward: the reward rises, the critic's metrics are reported, and the
exported policy is the trained one."""
import json
import os

import numpy as np

from jaxpost.config import base_config, validate
from jaxpost.loops import online
from jaxpost.tasks import arithmetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy_config(tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in arithmetic.prompt_records(arithmetic.TRAIN_PAIRS[:64])))
  c = base_config()
  c.algorithm = "ppo"
  c.tokenizer.path = os.path.join(ROOT, "assets", "arithmetic", "tokenizer.model")
  c.data.train_path = str(prompts)
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 32, 1, 64
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 2, 1, 16
  c.train.steps, c.train.log_every, c.train.progress = 10, 1, False
  c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 1e-2, 0, "constant"
  c.rl.prompts_per_step, c.rl.num_generations, c.rl.max_prompt_len, c.rl.max_new_tokens = 16, 2, 32, 3
  c.rl.num_epochs, c.rl.minibatch_size, c.rl.beta = 2, 16, 0.02
  c.rl.reward_fns = "jaxpost.tasks.arithmetic:leading_digit_reward"
  validate(c, num_devices=8)
  return c


def test_ppo_raises_a_toy_reward(tmp_path, fast_init_params):  # (conftest: the same init, compiled cheaply)
  c = _toy_config(tmp_path)
  online.run(c, str(tmp_path / "run"))
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if '"reward/mean"' in line]
  rewards = [r["reward/mean"] for r in records]
  assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.2, rewards
  for key in ("value_loss", "explained_variance", "kl", "clip_frac", "entropy", "policy_loss", "grad_norm"):
    assert key in records[0], key
  assert abs(records[0]["kl"]) < 1e-6  # The first rollout comes from the reference policy itself.
  with open(tmp_path / "run" / "model.json") as f:
    assert json.load(f)["params_key"] == "policy"


def test_ppo_keeps_a_reference_copy_only_when_beta_is_positive(tmp_path, monkeypatch, fast_init_params):
  """Device bytes alive at the first rollout, fresh and resumed: with beta 0.02 they exceed beta 0's by
  exactly one copy of the policy's params (the frozen reference), and with beta 0 nothing beyond the
  train state is kept (the starting weights used to stay on device for the whole run)."""
  import gc

  import jax
  from jaxpost import state as state_lib
  from jaxpost import workdir as workdir_lib
  from jaxpost import rollout
  seen = []
  collect = rollout.Rollouts.collect

  def counting_collect(self, params, *args, **kwargs):
    if len(seen) < len(runs):  # First rollout of this run (before the engine allocates its page pool).
      gc.collect()
      seen.append(sum(x.nbytes for x in jax.live_arrays()))
    return collect(self, params, *args, **kwargs)
  monkeypatch.setattr(rollout.Rollouts, "collect", counting_collect)
  runs = []
  for beta in (0.0, 0.02):
    c = _toy_config(tmp_path)
    c.train.steps, c.rl.beta, c.rl.num_epochs = 0, beta, 1
    workdir = str(tmp_path / f"beta{beta}")
    for _ in ("fresh", "resumed"):
      runs.append(beta)
      c.train.steps += 1  # The second run resumes from the first's checkpoint.
      online.run(c, workdir)
  fresh0, resumed0, fresh2, resumed2 = seen
  shapes = state_lib.abstract_model(workdir_lib.read_model_record(workdir)[0])[1]
  policy_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  assert fresh2 - fresh0 == resumed2 - resumed0 == policy_bytes
