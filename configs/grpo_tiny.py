"""GRPO on CPU in a couple of minutes: arithmetic prompts, 8 prompts x 8 samples a step.

  python -m jaxpost.train --config=configs/grpo_tiny.py --workdir=/tmp/grpo_tiny

Default: from random weights with a reward a random model can already earn sometimes (the reply starts
with a digit, a user function named by import path), so the reward visibly climbs from ~0.1 to ~1.
From the demo's SFT checkpoint with the verifiable reward (the exact sum), after `make demo`, use the
demo's own stage: `--config=configs/demo.py:grpo --config.model.init_checkpoint=runs/demo/sft`.
"""
import os

from jaxpost.config import base_config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ASSETS = os.path.join(ROOT, "assets", "arithmetic")


def get_config(arg: str = ""):
  c = base_config()
  c.algorithm = "grpo"
  c.tokenizer.path = os.path.join(ASSETS, "tokenizer.model")
  c.data.train_path = os.path.join(ASSETS, "prompts_train.jsonl")
  c.data.eval_path = os.path.join(ASSETS, "prompts_eval.jsonl")
  c.model.num_kv_heads = 4
  c.train.steps = 60
  c.train.log_every = 5
  c.train.eval_every = 30
  c.train.checkpoint_every = 30
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.rl.prompts_per_step = 8
  c.rl.num_generations = 8
  c.rl.max_prompt_len = 32
  c.rl.max_new_tokens = 5
  c.rl.reward_fns = "jaxpost.tasks.arithmetic:leading_digit_reward"
  c.rl.eval_prompts = 100
  if arg:
    raise ValueError(f"configs/grpo_tiny.py: unknown variant {arg!r} (it has none)")
  return c
