"""SFT of a tiny (0.4M-parameter) Llama-style model on bundled arithmetic chat data; CPU, ~1 minute.

  python -m jaxpost.train --config=configs/sft_tiny.py --workdir=/tmp/sft_tiny
  python -m jaxpost.train --config=configs/sft_tiny.py:sharded --workdir=/tmp/sft_tiny8   # data/fsdp/tensor = 2/2/2

Starts from random weights (the demo starts it from a pre-trained base instead), so the loss falls
from ~ln(vocab) = 4.6 to below 1 as the model learns the answer format and digit statistics.
"""
import os

from jaxpost.config import base_config

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "arithmetic")


def get_config(arg: str = ""):
  c = base_config()
  c.algorithm = "sft"
  c.tokenizer.path = os.path.join(ASSETS, "tokenizer.model")
  c.data.train_path = os.path.join(ASSETS, "sft_train.jsonl")
  c.data.eval_path = os.path.join(ASSETS, "sft_eval.jsonl")
  c.data.seq_len = 64
  c.train.steps = 200
  c.train.batch_size = 16
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 20
  if arg == "sharded":  # 8 devices, e.g. XLA_FLAGS=--xla_force_host_platform_device_count=8 on CPU.
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  elif arg:
    raise ValueError(f"configs/sft_tiny.py: unknown variant {arg!r} (known: sharded)")
  return c
