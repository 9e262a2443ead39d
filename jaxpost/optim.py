"""The optax chain from `config.optim`: clip -> AdamW (decay masked to matrices) with warmup + cosine."""
from __future__ import annotations

import jax
import optax


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup 0 -> lr over `warmup_steps`, then cosine to lr * end_lr_ratio, or constant."""
  warmup = min(optim_cfg.warmup_steps, max(total_steps - 1, 0))
  if optim_cfg.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, optim_cfg.lr, max(warmup, 1)),
                                 optax.constant_schedule(optim_cfg.lr)], [warmup]) if warmup else \
        optax.constant_schedule(optim_cfg.lr)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=optim_cfg.lr * optim_cfg.end_lr_ratio)


def decay_mask(params):
  """Weight decay only on matrices: norms, biases and other 1-D params are excluded."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = learning_rate_schedule(optim_cfg, total_steps)
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule
