"""Supervised fine-tuning: masked token-level negative log-likelihood.

  L = - sum_{b,t} m_{b,t} log p(y_{b,t} | x_{b,<=t}) / sum_{b,t} m_{b,t}

The normaliser is the number of loss tokens in the whole global batch (all microbatches together),
so every loss token weighs the same however examples are packed or split into microbatches (the
"token-mean" convention; a per-sequence mean would up-weight short replies).
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxpost import logprobs as logprobs_lib
from jaxpost.algorithms.base import Algorithm


def normalizer(batch) -> jnp.ndarray:
  """Number of loss tokens in the batch (at least 1, so an all-padding batch gives loss 0)."""
  return jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)


def make_loss_fn(graphdef, logprob_impl: str = "naive"):
  """Returns (loss_fn(params, batch, frozen) -> (sum of masked NLL, {"loss": same sum}), normalizer)."""
  def loss_fn(params, batch, frozen=None):
    del frozen  # SFT keeps no reference model.
    logps = logprobs_lib.token_logprobs(graphdef, params, batch, impl=logprob_impl)  # (B, T)
    nll_sum = -jnp.sum(logps * batch["loss_mask"].astype(jnp.float32))
    return nll_sum, {"loss": nll_sum}
  return loss_fn, normalizer


ALGORITHM = Algorithm(
    name="sft", loop="offline", data=lambda config: "sequences",
    make_loss=lambda config, models: make_loss_fn(models.graphdef, models.model_cfg.logprob_impl))
