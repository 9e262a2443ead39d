"""Reward model: Bradley-Terry loss on the scalar head, read at the last real token of each sequence.

  L = -log sig(r(x, y_w) - r(x, y_l) - m) + eta (r(x, y_w) + r(x, y_l))^2

Bradley & Terry (1952); the reward-model recipe of Ouyang et al. 2022 (InstructGPT). `m` is an optional
per-pair margin from the data (Llama 2, Touvron et al. 2023: larger for clearly better answers); the
centering term (Eisenstein et al. 2023, "Helping or Herding?") keeps rewards near zero, since the
Bradley-Terry loss only sees their differences.

The batch is the preference layout of `jaxpost.data.preferences`: fields (B, 2, T), `[:, 0]` chosen and
`[:, 1]` rejected, plus `margin` (B,). The score is read at the last non-padding input position, which for
chat-templated rows is the `<|im_end|>` that closes the reply (the trailing newline is a target only).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpost.algorithms.base import Algorithm
from jaxpost.algorithms.dpo import PAIR_ROWS, normalizer, pair_valid  # The same pair-mean convention.


def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=0.0, *, center_coef: float = 0.0):
  """-log sig(r_w - r_l - m) + eta (r_w + r_l)^2. (B,) each -> (B,)."""
  loss = -jax.nn.log_sigmoid(chosen_rewards - rejected_rewards - margin)
  return loss + center_coef * jnp.square(chosen_rewards + rejected_rewards)


def last_token_scores(scores, segment_ids):
  """scores (N, T), segment_ids (N, T) (one sequence per row, left-aligned; 0 = padding) -> (N,)."""
  last = jnp.maximum(jnp.sum(segment_ids > 0, axis=-1) - 1, 0)  # (N,)
  return jnp.take_along_axis(scores, last[:, None], axis=-1)[:, 0]


def sequence_rewards(graphdef, params, inputs, positions, segment_ids):
  """(..., T) int32 fields -> the reward of each sequence (...) f32, read at its last real token."""
  lead, t = inputs.shape[:-1], inputs.shape[-1]
  flat = lambda x: x.reshape(-1, t)
  model = nnx.merge(graphdef, params)
  scores = model.scores(flat(inputs), flat(positions), flat(segment_ids))  # (N, T)
  return last_token_scores(scores, flat(segment_ids)).reshape(lead)


def make_loss_fn(graphdef, logprob_impl: str = "naive", *, center_coef: float = 0.0):
  """Returns (loss_fn(params, batch, frozen) -> (sum of pair losses, metric sums), normalizer), for `step.py`.

  Metrics (means over pairs once divided by `normalizer`): loss, accuracy (r_w > r_l), reward/chosen,
  reward/rejected, reward/margin."""
  del logprob_impl  # The scalar head has no vocabulary projection.

  def loss_fn(params, batch, frozen=None):
    del frozen  # A reward model keeps no reference.
    valid = pair_valid(batch)  # (B,)
    rewards = sequence_rewards(graphdef, params, batch["inputs"], batch["positions"], batch["segment_ids"])  # (B, 2)
    margin = batch["margin"] if "margin" in batch else 0.0
    losses = bradley_terry_loss(rewards[:, 0], rewards[:, 1], margin, center_coef=center_coef)
    r = jax.lax.stop_gradient(rewards)
    total = jnp.sum(losses * valid)
    return total, {"loss": total, "accuracy": jnp.sum((r[:, 0] > r[:, 1]) * valid),
                   "reward/chosen": jnp.sum(r[:, 0] * valid), "reward/rejected": jnp.sum(r[:, 1] * valid),
                   "reward/margin": jnp.sum((r[:, 0] - r[:, 1]) * valid)}

  return loss_fn, normalizer


def validate(config, checks) -> None:
  checks.unused(("data.pack",), PAIR_ROWS)
  checks.check(config.rm.center_coef >= 0, "rm.center_coef", f"must be >= 0, got {config.rm.center_coef}")


ALGORITHM = Algorithm(
    name="rm", loop="offline", head="scalar", validate=validate, data=lambda config: "pairs",
    eval_accuracy="accuracy",
    make_loss=lambda config, models: make_loss_fn(models.graphdef, center_coef=config.rm.center_coef))
