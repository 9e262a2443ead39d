"""The tool demo's stages: two-digit multiplication with a calculator (see jaxpost/demo_tools.py, which writes
the data, trains the tokenizer and chains them).

  make demo-tools  # or: python -m jaxpost.demo_tools --workdir=runs/demo_tools [--seed=N]
  python -m jaxpost.train --config=configs/demo_tools.py:sft --workdir=W/sft --config.tokenizer.path=W/tokenizer.model \
      --config.data.train_path=W/data/sft.jsonl
  python -m jaxpost.train --config=configs/demo_tools.py:grpo --workdir=W/grpo --config.tokenizer.path=W/tokenizer.model \
      --config.model.init_checkpoint=W/sft --config.data.train_path=W/data/prompts.jsonl \
      --config.data.eval_path=W/data/eval_prompts.jsonl

`sft`:  chat SFT from scratch on conversations of a reluctant teacher (tasks/multiplication.py): the
        calculator on some problems (the call, its answer, the product), an estimate from memory on the rest.
`grpo`: GRPO over calculator episodes (rl.env = calculator), reward 1 for the exact product; the held-out
        evaluation (greedy episodes) at step 0 is the SFT model's.
"""
from jaxpost.config import base_config


def get_config(arg: str = "sft"):
  c = base_config()
  c.algorithm = "sft"
  c.model.d_model = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.head_dim = 32
  c.model.mlp_dim = 384
  c.train.progress = False
  if arg == "sft":
    # Measured (2 CPU cores, 2026-12-07): 300 steps take ~90 s and end at loss ~0.32; the model then copies
    # operands and products well enough for RL to start from (GRPO's first rollouts: 28-61% of episodes right).
    # At 200 steps with the teacher calling the tool on 10% of 1000 conversations, no sampled call in 40 GRPO
    # steps copied its way to a right answer (reward 0 throughout): too few demonstrations to copy from.
    # The teacher's memory answers start with "about": with bare numbers, the single `<tool_call>` piece
    # outweighed every first digit and the greedy SFT model called the tool on every problem (69% right).
    c.data.seq_len = 160
    c.train.steps = 300
    c.train.batch_size = 16
    c.train.log_every = 50
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 20
  elif arg == "grpo":
    c.algorithm = "grpo"
    # Seeds 0-2: held-out accuracy 76.5 / 66.5 / 82.0 at step 20 and 79.0 / 75.5 / 81.5 at step 40, every
    # greedy episode calling the tool from step 20 on; 60 steps (seed 0) gave 78.5. ~1.8 s a step: 0.6-0.8 s of
    # episodes (0.8-1.1 s when every turn re-prefilled its context), ~1.1 s of update on rows of 175 tokens.
    c.train.steps = 40
    c.train.log_every = 10
    c.train.eval_every = 20
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    c.rl.env = "calculator"
    c.rl.max_turns = 3
    c.rl.prompts_per_step = 8
    c.rl.num_generations = 8
    c.rl.temperature = 1.0
    c.rl.max_prompt_len = 112
    c.rl.max_new_tokens = 64      # Whole episode after the prompt: call (~12), tool answer (~10), product (~6).
    c.rl.max_turn_tokens = 24
    c.rl.reward_fns = "exact_match"
    c.rl.eval_prompts = 200
  else:
    raise ValueError(f"configs/demo_tools.py: unknown stage {arg!r} (known: sft, grpo)")
  return c
