"""PPO with a critic on CPU in a couple of minutes: arithmetic prompts, 16 prompts x 2 samples a step.

  python -m jaxpost.train --config=configs/ppo_tiny.py --workdir=/tmp/ppo_tiny
  python -m jaxpost.train --config=configs/ppo_tiny.py:rm --workdir=/tmp/ppo_rm   # after configs/rm_tiny.py

Default: from random weights with the toy reward of configs/grpo_tiny.py (the reply starts with a digit),
so the reward climbs from ~0.1 towards 1 while the critic learns it (explained_variance rises).
`:rm`: the reward is the reward model trained by configs/rm_tiny.py (/tmp/rm_tiny), which also
initialises the critic. Any HF model: --config.model.path=DIR.
"""
import os

from jaxpost.config import base_config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ASSETS = os.path.join(ROOT, "assets", "arithmetic")


def get_config(arg: str = ""):
  c = base_config()
  c.algorithm = "ppo"
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
  c.rl.prompts_per_step = 16
  c.rl.num_generations = 2
  c.rl.num_epochs = 2
  c.rl.minibatch_size = 16
  c.rl.max_prompt_len = 32
  c.rl.max_new_tokens = 5
  c.rl.beta = 0.02
  c.rl.reward_fns = "jaxpost.tasks.arithmetic:leading_digit_reward"
  c.rl.eval_prompts = 100
  if arg == "rm":
    c.rl.reward_fns = "rm:/tmp/rm_tiny"
    c.ppo.value_init = "/tmp/rm_tiny"
  elif arg:
    raise ValueError(f"configs/ppo_tiny.py: unknown variant {arg!r} (known: rm)")
  return c
