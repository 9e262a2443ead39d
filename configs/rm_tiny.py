"""Reward model on the toy arithmetic preferences (correct sum chosen, a - b rejected); CPU, ~1 minute.

  python -m jaxpost.train --config=configs/rm_tiny.py --workdir=/tmp/rm_tiny
  python -m jaxpost.train --config=configs/rm_tiny.py:sharded --workdir=/tmp/rm_tiny8   # data/fsdp/tensor = 2/2/2

A tiny Llama-style model with a scalar head (model.head = scalar), trained from random weights with the
Bradley-Terry loss; eval/accuracy is the fraction of held-out pairs (unseen (a, b) problems, see
jaxpost/tasks/arithmetic_preferences.py) that it ranks right (measured: 0.97 at step 100 from scratch;
1.00 from the SFT backbone). --config.model.init_checkpoint=/tmp/sft_tiny starts from an LM run's
backbone with a fresh scalar head; --config.model.path=HF_DIR from a HF model. The trained workdir is a
GRPO reward: --config.rl.reward_fns=rm:/tmp/rm_tiny.
"""
import os

from jaxpost.config import base_config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets")


def get_config(arg: str = ""):
  c = base_config()
  c.algorithm = "rm"
  c.model.head = "scalar"
  c.tokenizer.path = os.path.join(ROOT, "arithmetic", "tokenizer.model")
  c.data.train_path = os.path.join(ROOT, "preferences", "arithmetic_train.jsonl")
  c.data.eval_path = os.path.join(ROOT, "preferences", "arithmetic_eval.jsonl")
  c.data.seq_len = 48
  c.train.steps = 100
  c.train.batch_size = 32
  c.train.log_every = 20
  c.train.eval_every = 50
  c.train.checkpoint_every = 50
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 20
  if arg == "sharded":  # 8 devices, e.g. XLA_FLAGS=--xla_force_host_platform_device_count=8 on CPU.
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  elif arg:
    raise ValueError(f"configs/rm_tiny.py: unknown variant {arg!r} (known: sharded)")
  return c
