"""Distillation on CPU in a couple of minutes: a smaller student from random weights learns from a frozen teacher.

  python -m jaxpost.train --config=configs/sft_tiny.py --workdir=/tmp/sft_tiny          # the teacher, ~1 minute
  python -m jaxpost.train --config=configs/distill_tiny.py --workdir=/tmp/distill_tiny
  python -m jaxpost.train --config=configs/distill_tiny.py:gkd --workdir=/tmp/gkd_tiny
  (another teacher: --config.distill.teacher=DIR)

Default (`reverse_kl`): on-policy distillation. The student (d_model 64, one layer: a quarter of the teacher's
parameters) samples replies to the arithmetic prompts and every sampled token's advantage is the teacher's
log-prob of it minus the student's (jaxpost/algorithms/distill.py); distill/reverse_kl falls and
distill/teacher_logp rises as the student takes the teacher's answer format.
`gkd`: generalized knowledge distillation, the JSD (beta 0.5) over full next-token distributions, half of the
steps on the student's samples and half on the records' own answers (lambda = 0.5), one sample a prompt.
The teacher may be any model with the student's tokenizer: an HF directory or a jaxpost workdir (e.g. after
`make demo`, `runs/demo/grpo`, with `--config=configs/demo.py:...` model sizes for the student).
"""
import os

from jaxpost.config import base_config

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "arithmetic")


def get_config(arg: str = ""):
  c = base_config()
  c.algorithm = "distill"
  c.distill.teacher = "/tmp/sft_tiny"  # Where the docstring's first command writes it.
  c.tokenizer.path = os.path.join(ASSETS, "tokenizer.model")
  c.data.train_path = os.path.join(ASSETS, "prompts_train.jsonl")
  c.data.eval_path = os.path.join(ASSETS, "prompts_eval.jsonl")
  c.model.d_model = 64
  c.model.num_layers = 1
  c.model.num_heads = 2
  c.model.num_kv_heads = 2
  c.model.mlp_dim = 192
  c.train.steps = 60
  c.train.log_every = 10
  c.train.eval_every = 30
  c.train.checkpoint_every = 30
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.rl.prompts_per_step = 8
  c.rl.num_generations = 4
  c.rl.max_prompt_len = 32
  c.rl.max_new_tokens = 5
  c.rl.eval_prompts = 100
  c.rl.reward_fns = "exact_match"  # Reported (reward/mean, eval/accuracy); the teacher's signal is what trains.
  if arg in ("", "reverse_kl"):
    c.distill.loss = "reverse_kl"
    c.rl.policy_loss = "reinforce"  # One update a rollout batch: the ratio is 1, nothing to clip.
    c.rl.aggregation = "token_mean"
  elif arg == "gkd":
    c.distill.loss = "gkd"
    c.distill.beta = 0.5
    c.distill.on_policy_fraction = 0.5
    c.rl.prompts_per_step = 32
    c.rl.num_generations = 1
  else:
    raise ValueError(f"configs/distill_tiny.py: unknown variant {arg!r} (known: reverse_kl, gkd)")
  return c
