"""The one generic train step, built from an algorithm's loss.

  g = (1/W) sum_a grad loss_sum(params, microbatch_a),   W = normalizer(global batch)
  params, opt_state = optimizer(g)

Gradient accumulation, clipping (inside the optax chain), metrics and donation live here, never in an
algorithm. Microbatch a takes rows a, a+A, a+2A, ... so that each microbatch stays spread over every
data shard.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def split_microbatches(batch, num: int):
  """(B, ...) leaves -> (A, B/A, ...), microbatch a holding rows a, a+A, ..."""
  def split(x):
    return x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def make_train_step(loss_fn: Callable, normalizer: Callable, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum: int = 1) -> Callable:
  """Returns step(state, batch, frozen) -> (state, metrics), pure and ready for jax.jit."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state, batch, frozen=None):
    params = state["params"]
    weight = normalizer(batch)
    if grad_accum == 1:
      (loss_sum, metric_sums), grads = grad_fn(params, batch, frozen)
    else:
      def accumulate(carry, microbatch):
        (l, m), g = grad_fn(params, microbatch, frozen)
        return jax.tree.map(jnp.add, carry, (l, m, g)), None
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: grad_fn(params, batch, frozen)))
      zeros = (zeros[0][0], zeros[0][1], jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
      (loss_sum, metric_sums, grads), _ = jax.lax.scan(accumulate, zeros, split_microbatches(batch, grad_accum))
    grads = jax.tree.map(lambda g, p: (g / weight).astype(p.dtype), grads, params)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates), "opt_state": opt_state}
    metrics = {k: v / weight for k, v in metric_sums.items()}
    metrics.update(loss=loss_sum / weight, grad_norm=optax.tree.norm(grads), lr=schedule(state["step"]),
                   loss_tokens=weight)
    return new_state, metrics

  return step


def make_eval_step(loss_fn: Callable) -> Callable:
  """Returns eval_step(params, batch, frozen) -> (loss_sum, weight = loss tokens), summed over batches by
  the caller: the held-out loss is a token mean over the whole eval set, not a mean of batch means."""
  def eval_step(params, batch, frozen=None):
    loss_sum, _ = loss_fn(params, batch, frozen)
    return loss_sum, jnp.sum(batch["loss_mask"].astype(jnp.float32))
  return eval_step
