"""Per-token estimators of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020,
"Approximating KL Divergence", http://joschu.net/blog/kl-approx.html).

With a token y ~ pi and log r = log pi_ref(y) - log pi(y):

  k1 = -log r                      unbiased, high variance, can be negative
  k2 = (log r)^2 / 2               biased (low bias when pi ~ pi_ref), always >= 0
  k3 = (r - 1) - log r             unbiased (E_pi[r] = 1), always >= 0, low variance

Each `fn(logps [B, T], ref_logps [B, T]) -> kl [B, T]` is elementwise; the caller masks and aggregates.
`logps` carries the gradient (the GRPO penalty beta * KL is differentiated through it), `ref_logps` is a
constant. Deviation: k3 clips log r to [-20, 20] before the exp so that one token the reference finds
far likelier than the policy (log r = +50) cannot produce an inf; the value is unchanged in practice.
"""
from __future__ import annotations

import jax.numpy as jnp

_LOG_RATIO_CLIP = 20.0


def k1(logps: jnp.ndarray, ref_logps: jnp.ndarray) -> jnp.ndarray:
  """k1 = -log r = log pi(y) - log pi_ref(y)."""
  return logps - ref_logps


def k2(logps: jnp.ndarray, ref_logps: jnp.ndarray) -> jnp.ndarray:
  """k2 = (log r)^2 / 2."""
  return 0.5 * jnp.square(ref_logps - logps)


def k3(logps: jnp.ndarray, ref_logps: jnp.ndarray) -> jnp.ndarray:
  """k3 = (r - 1) - log r, with r = exp(clip(log r, -20, 20)) (the GRPO paper's KL term, eq. 4)."""
  log_r = jnp.clip(ref_logps - logps, -_LOG_RATIO_CLIP, _LOG_RATIO_CLIP)
  return jnp.expm1(log_r) - log_r


KL_ESTIMATORS = {"k1": k1, "k2": k2, "k3": k3}


def kl_estimate(logps: jnp.ndarray, ref_logps: jnp.ndarray, estimator: str) -> jnp.ndarray:
  """Per-token KL estimate [B, T] by registry name ('k1', 'k2', 'k3')."""
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {sorted(KL_ESTIMATORS)}")
  return KL_ESTIMATORS[estimator](logps, ref_logps)
