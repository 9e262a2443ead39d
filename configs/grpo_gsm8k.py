"""GRPO on GSM8K with the math reward in its `gsm8k` mode (`#### N`, math-verify), for a TPU or GPU.

  python -m jaxpost.train --config=configs/grpo_gsm8k.py --workdir=W \\
      --config.model.init_checkpoint=SFT_WORKDIR --config.tokenizer.path=TOKENIZER.model \\
      --config.data.train_path=../shared/data/gsm8k/train.jsonl --config.data.eval_path=../shared/data/gsm8k/test.jsonl

GSM8K (MIT, github.com/openai/grade-school-math) is not bundled: point `data.*_path` at its JSONL files
(`{"question", "answer": "... #### 72"}` records are read as prompt + final answer). The reward reads only
the completion's `#### N`, the format of GSM8K's worked solutions that the SFT model learnt: a completion
without it scores 0, whatever numbers it ends with (docs/rewards.md). The model comes from
a jaxpost checkpoint (`model.init_checkpoint`) with matching `model.*` sizes; loading Hugging Face
checkpoints directly arrives with the HF interop work (`--config.model.path`).
"""
from jaxpost.config import base_config


def get_config(arg: str = ""):
  del arg
  c = base_config()
  c.algorithm = "grpo"
  c.model.dtype = "bfloat16"
  c.model.attention = "auto"
  c.model.logprob_impl = "auto"
  c.model.remat = "dots"
  c.data.train_path = "../shared/data/gsm8k/train.jsonl"
  c.data.eval_path = "../shared/data/gsm8k/test.jsonl"
  c.train.steps = 500
  c.train.log_every = 1
  c.train.eval_every = 50
  c.train.checkpoint_every = 50
  c.optim.lr = 1e-6
  c.optim.warmup_steps = 10
  c.optim.schedule = "constant"
  c.optim.weight_decay = 0.0
  c.rl.prompts_per_step = 32
  c.rl.num_generations = 8
  c.rl.minibatch_size = 64
  c.rl.max_prompt_len = 256
  c.rl.max_new_tokens = 512
  c.rl.advantage = "grpo"
  c.rl.policy_loss = "ppo_clip"
  c.rl.epsilon_high = 0.28      # DAPO clip-higher.
  c.rl.aggregation = "token_mean"
  c.rl.beta = 0.0
  c.rl.reward_fns = "math:gsm8k"  # Only `#### N` counts: GSM8K's answer format (docs/rewards.md).
  c.rl.dynamic_sampling = True
  c.rl.overlong = "soft"
  c.rl.overlong_buffer = 64
  c.rl.eval_prompts = 500
  return c
