"""DPO (or IPO / SimPO / ORPO / KTO) of a tiny Llama-style model on the toy arithmetic preferences; CPU, ~1 minute.

  python -m jaxpost.train --config=configs/sft_tiny.py --workdir=/tmp/sft_tiny          # the policy to align
  python -m jaxpost.train --config=configs/dpo_tiny.py --workdir=/tmp/dpo_tiny \\
      --config.model.init_checkpoint=/tmp/sft_tiny
  python -m jaxpost.train --config=configs/dpo_tiny.py:simpo --workdir=/tmp/simpo_tiny   # variants: ipo simpo orpo kto

Pairs are (correct sum, a - b) on arithmetic questions (assets/preferences/). Without init_checkpoint it
starts from random weights, which still shows the mechanics: rewards/accuracies and rewards/margins rise
from 0 (policy == reference at step 0 gives loss ln 2 = 0.693 and zero margins). eval/accuracy is the
fraction of held-out pairs with a positive implicit-reward margin. The reference is the initial params;
--config.dpo.ref_logps=online recomputes its log-probs every step instead of once before training.
HF policies via --config.model.path arrive with HF loading.
"""
import os

from jaxpost.config import base_config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets")
VARIANTS = {  # loss_type -> (beta, lr): values in the range the papers / TRL use, scaled to this toy.
    "sigmoid": (0.1, 1e-3), "ipo": (0.1, 1e-3), "simpo": (2.0, 1e-3), "orpo": (0.1, 1e-3), "kto": (0.1, 1e-3)}


def get_config(arg: str = ""):
  c = base_config()
  c.algorithm = "dpo"
  loss_type = arg or "sigmoid"
  if loss_type not in VARIANTS:
    raise ValueError(f"configs/dpo_tiny.py: unknown variant {arg!r} (known: {', '.join(VARIANTS)})")
  c.dpo.loss_type = loss_type
  c.dpo.beta, c.optim.lr = VARIANTS[loss_type]
  c.tokenizer.path = os.path.join(ROOT, "arithmetic", "tokenizer.model")
  c.data.train_path = os.path.join(ROOT, "preferences", "arithmetic_train.jsonl")
  c.data.eval_path = os.path.join(ROOT, "preferences", "arithmetic_eval.jsonl")
  c.data.seq_len = 48
  c.train.steps = 60
  c.train.batch_size = 16
  c.train.log_every = 10
  c.train.eval_every = 30
  c.train.checkpoint_every = 30
  c.optim.warmup_steps = 5
  return c
