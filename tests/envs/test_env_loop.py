"""rl.env in the online loop: GRPO over multi-turn episodes. The environment's tokens are in the rows with no
loss, and the first update of an on-policy batch has ratio 1 (the sampler's log-probs of every model token,
across turns, equal the trainer's), so nothing of the environment leaks into the loss or the ratios."""
import json
import os

import jax
import numpy as np
import pytest

from jaxpost import envs, rollout, state as state_lib
from jaxpost.config import ConfigError, base_config, validate
from jaxpost.loops import online
from jaxpost.tasks import arithmetic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@envs.register("test_go_on")
class _GoOn(envs.Environment):
  """Answers the first turn with a user message, ends at the second; reward: the second reply's length is odd."""

  def reset(self):
    return [{"role": "user", "content": self.example["prompt"]}]

  def step(self, turn):
    self.n = getattr(self, "n", 0) + 1
    if self.n == 1:
      return envs.EnvStep(({"role": "user", "content": "go on"},))
    return envs.EnvStep(reward=float(len(turn.text) % 2), done=True)


def test_rollout_batch_masks_the_environments_tokens():
  """Prompt [1, 2], completion [3, 4, 5, 6] of which 5 is the environment's: targets 3..6 sit at columns 1..4,
  so the loss mask is 1, 1, 0, 1 there; old_logps are the sampler's where the mask is 1."""
  mask = np.array([[True, True, False, True]])
  logps = np.array([[-0.1, -0.2, 0.0, -0.4]], np.float32)
  batch = rollout.rollout_batch([[1, 2]], [[3, 4, 5, 6]], logps, num_samples=1, seq_len=6, completion_masks=mask)
  assert batch["targets"][0].tolist() == [2, 3, 4, 5, 6, 0]
  assert batch["loss_mask"][0].tolist() == [0, 1, 1, 0, 1, 0]
  np.testing.assert_allclose(batch["old_logps"][0], [0, -0.1, -0.2, 0, -0.4, 0])


def _config(tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in arithmetic.prompt_records(arithmetic.TRAIN_PAIRS[:16])))
  c = base_config()
  c.algorithm = "grpo"
  c.tokenizer.path = os.path.join(ROOT, "assets", "arithmetic", "tokenizer.model")
  c.data.train_path = str(prompts)
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 32, 1, 64
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 2, 1, 16
  c.train.steps, c.train.log_every, c.train.progress = 1, 1, False
  c.rl.prompts_per_step, c.rl.num_generations, c.rl.max_prompt_len, c.rl.max_new_tokens = 4, 2, 32, 32
  c.rl.env, c.rl.max_turns, c.rl.max_turn_tokens, c.rl.eval_prompts = "test_go_on", 3, 8, 4
  c.rl.reward_fns = "exact_match"  # A verifier: accuracy = % of episodes with reward >= 1.
  return c


@pytest.fixture
def stopping_init(fast_init_params, monkeypatch):
  """The run's init, with the chat stop tokens' embeddings moved along dim 0 (as test_episode_engine.py): a
  random model then ends its turns within a few tokens, so episodes have several turns."""
  init = state_lib.init_params

  def init_params(cfg, mesh, seed):
    params = init(cfg, mesh, seed)
    table = np.array(params["embed"]["embedding"])
    table[:, 0], table[[3, 5], 0] = 1.0, 3.0  # eos, <|im_end|>
    params["embed"]["embedding"] = jax.device_put(table, params["embed"]["embedding"].sharding)
    return params
  monkeypatch.setattr(state_lib, "init_params", init_params)


def test_grpo_over_episodes_is_on_policy_at_its_first_update(tmp_path, stopping_init):
  c = _config(tmp_path)
  online.run(c, str(tmp_path / "run"))
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  first = next(r for r in records if r["step"] == 1 and "ratio" in r)
  assert first["episode/turns"] > 1.5, first  # most episodes had both turns: environment tokens were in the rows
  np.testing.assert_allclose(first["ratio"], 1.0, atol=1e-5)
  assert first["clip_frac"] == 0.0
  assert 0.0 <= first["reward/env"] <= 1.0 and "episode/tool_calls" in first and "episode/truncated" in first
  # (Greedy evaluation episodes: tests/test_demo_tools.py.)


def test_env_config_errors(tmp_path):
  c = _config(tmp_path)
  c.rl.env = "abacus"
  with pytest.raises(ConfigError, match="rl.env.*unknown environment 'abacus'"):
    validate(c)
  c.rl.env, c.rl.sampler = "calculator", "static"
  with pytest.raises(ConfigError, match="rl.env.*set rl.sampler=engine"):
    validate(c)
  c.rl.sampler, c.rl.max_staleness = "engine", 1
  with pytest.raises(ConfigError, match="rl.env.*synchronous loop so far"):
    validate(c)
  c.rl.max_staleness, c.rl.max_turn_tokens = 0, 64
  with pytest.raises(ConfigError, match="rl.max_turn_tokens"):
    validate(c)
  c.rl.max_turn_tokens = 8
  c.rl.env, c.rl.max_prompt_len = "calculator", 32
  with pytest.raises(ConfigError, match="rl.max_prompt_len=32.*opening prompt has .* tokens"):
    online.run(c, str(tmp_path / "b"))
