"""The demo's stages on the arithmetic task (see jaxpost/demo.py, which writes the data and chains them).

  make demo        # or: python -m jaxpost.demo --workdir=runs/demo [--seed=N]
  python -m jaxpost.train --config=configs/demo.py:base --workdir=W/base --config.data.train_path=W/data/pretrain.jsonl
  python -m jaxpost.train --config=configs/demo.py:sft --workdir=W/sft --config.model.init_checkpoint=W/base \
      --config.data.train_path=W/data/sft.jsonl
  python -m jaxpost.train --config=configs/demo.py:grpo --workdir=W/grpo --config.model.init_checkpoint=W/sft

`base`: pre-training from scratch on procedural arithmetic questions (loss on every token).
`sft`:  chat SFT from the base checkpoint (loss on assistant tokens only). The demo's conversations come
        from the sloppy teacher who never carries; the bundled sft_train.jsonl has exact sums.
`grpo`: GRPO from the SFT checkpoint with a verifiable reward (the exact sum), 16 prompts x 8 samples,
        groups with mixed rewards only (dynamic sampling).
Measured per stage (2 CPU cores, seeds 0-2): the numbers in the comments below.
"""
import os

from jaxpost.config import base_config

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "arithmetic")


def get_config(arg: str = "base"):
  c = base_config()
  c.algorithm = "sft"
  c.tokenizer.path = os.path.join(ASSETS, "tokenizer.model")
  c.model.d_model = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.head_dim = 32
  c.model.mlp_dim = 384
  c.train.log_every = 100
  c.train.progress = False
  c.optim.warmup_steps = 50
  if arg == "base":
    # Questions only, one a record, two packed a row of 52 tokens. Addition is learnt in a jump (loss
    # ~0.47 -> ~0.37, held-out plain-text accuracy ~17% -> ~100%: the ones digit is the last to
    # generalise). Weight decay brings the jump forward: without it, ~550 steps on seed 0 (none yet
    # after 800 at batch 32); with 1.0, ~375 on seeds 0 and 1; with 2.0, ~275-300 on seeds 0-2.
    c.data.seq_len = 52
    c.train.steps = 500
    c.train.batch_size = 64
    c.optim.lr = 3e-3
    c.optim.weight_decay = 2.0
  elif arg == "sft":
    c.data.train_path = os.path.join(ASSETS, "sft_train.jsonl")
    c.data.seq_len = 64
    # To convergence on the teacher: with the sloppy teacher, held-out accuracy ends at its level (48-52%
    # against its 54.5%) on every seed. At lr 3e-4 seed 0 had not yet taken to the chat format after 100
    # steps (6.0%), while seed 1 had (53.2%).
    c.train.steps = 150
    c.train.batch_size = 16
    c.train.log_every = 25
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 5
    c.optim.schedule = "constant"
  elif arg == "grpo":
    c.algorithm = "grpo"
    c.data.train_path = os.path.join(ASSETS, "prompts_train.jsonl")
    c.data.eval_path = os.path.join(ASSETS, "prompts_eval.jsonl")
    c.train.steps = 200
    c.train.log_every = 25
    c.train.eval_every = 25
    # From the sloppy-teacher SFT model (seed 0, held-out 52.5% at step 0), 150 steps: lr 1e-4 without
    # dynamic sampling reached 56%, lr 5e-4 collapsed to 0%, lr 3e-4 with dynamic sampling 92.6%. At a
    # constant lr the curve can fall back late (seed 1, temperature 1.3: 80% at step 125, 69.5% at 175);
    # decayed by a cosine, it climbs to the end (seed 1, 200 steps: 88.5% at temperature 1.0, 83% at 1.3).
    # Temperature 1.3 samples more carrying answers, so fewer groups are all-wrong and refilled: rollouts
    # take ~0.13 s a step against ~0.3 s at 1.0 (seed 0 at 1.0: 79.6%, and the demo ran 306 s).
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 0
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.1
    # Rollouts go through the rollout engine (rl.sampler's default). Measured from seed 0's SFT model, 40
    # steps, 2 CPU cores (2026-12-07): 0.28 s of rollout a step against 0.15 s with rl.sampler = static, and
    # ~10 s more compiling. Completions of <= 5 tokens leave continuous batching nothing to win, and each
    # refill round is a prefill and a decode call with host checks between them; static is the faster
    # sampler for this equal-length case (docs/architecture.md), the engine the one the loop is built on.
    c.rl.prompts_per_step = 16
    c.rl.num_generations = 8
    c.rl.dynamic_sampling = True  # Keep only groups whose 8 rewards differ; refill from new prompts.
    c.rl.temperature = 1.3
    c.rl.max_prompt_len = 32
    c.rl.max_new_tokens = 5       # Up to 3 digits, <|im_end|>, and one spare.
    c.rl.advantage = "grpo"
    c.rl.policy_loss = "ppo_clip"
    c.rl.reward_fns = "exact_match"
    c.rl.eval_prompts = 200
  elif arg == "distill":
    # Not a stage of `make demo`: on-policy distillation from the SFT model with the demo's GRPO model as the
    # teacher, the GRPO stage's prompts, steps and schedule (scripts/bench_distill.py compares the two).
    c.algorithm = "distill"
    c.data.train_path = os.path.join(ASSETS, "prompts_train.jsonl")
    c.data.eval_path = os.path.join(ASSETS, "prompts_eval.jsonl")
    c.train.steps = 200
    c.train.log_every = 25
    c.train.eval_every = 25
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 0
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.1
    c.distill.loss = "reverse_kl"
    c.rl.prompts_per_step = 16
    c.rl.num_generations = 8
    c.rl.temperature = 1.0        # The teacher's log-probs are of its own distribution at this temperature.
    c.rl.max_prompt_len = 32
    c.rl.max_new_tokens = 5
    c.rl.policy_loss = "reinforce"  # One update a batch: ratio 1, nothing to clip.
    c.rl.aggregation = "token_mean"
    c.rl.reward_fns = "exact_match"  # Reported only.
    c.rl.eval_prompts = 200
  else:
    raise ValueError(f"configs/demo.py: unknown stage {arg!r} (known: base, sft, grpo, distill)")
  return c
