"""Pure-jnp oracle for the teacher-student divergence: materialises both models' full [N, V] f32 logits.

    z_s = softcap_s(h_s @ W_s) / T,   z_t = softcap_t(h_t @ W_t) / T,   p = softmax(z)

softcap(x) = c tanh(x / c) (identity when c is None), each model with its own c; the temperature T is
shared. The generalised Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024), in TRL's
`generalized_jsd_loss` convention, per token:
    beta = 0:      L = KL(p_t || p_s)                                       (forward KL)
    beta = 1:      L = KL(p_s || p_t)                                       (reverse KL)
    0 < beta < 1:  L = beta KL(p_t || m) + (1 - beta) KL(p_s || m),   m = beta p_t + (1 - beta) p_s

The teacher is frozen: its logits pass through stop_gradient, so plain autodiff of this oracle gives the
student-only gradients that the hand-written backward in chunked.py must match.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxpost.kernels.logprobs.reference import apply_softcap


def _logits(hidden, w_unembed, *, temperature, logit_softcap, precision):
  raw = jnp.dot(hidden, w_unembed, preferred_element_type=jnp.float32, precision=precision)  # (N, V)
  return apply_softcap(raw, logit_softcap) / temperature  # (N, V)


def generalized_jsd(logp_s: jax.Array, logp_t: jax.Array, beta: float) -> jax.Array:
  """L [...] from log-probs [..., V] of student and teacher (see module docstring)."""
  if beta == 0.0:
    return jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)
  if beta == 1.0:
    return jnp.sum(jnp.exp(logp_s) * (logp_s - logp_t), axis=-1)
  log_m = jnp.logaddexp(jnp.log(beta) + logp_t, jnp.log1p(-beta) + logp_s)  # (..., V)
  kl_tm = jnp.sum(jnp.exp(logp_t) * (logp_t - log_m), axis=-1)
  kl_sm = jnp.sum(jnp.exp(logp_s) * (logp_s - log_m), axis=-1)
  return beta * kl_tm + (1.0 - beta) * kl_sm


def token_divergence_reference(
    h_s: jax.Array,
    w_s: jax.Array,
    h_t: jax.Array,
    w_t: jax.Array,
    *,
    beta: float,
    temperature: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    return_argmax: bool = False,
    precision: lax.Precision | None = lax.Precision.HIGHEST,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """L [N] f32 from full f32 logits; with `return_argmax` also (argmax_s, argmax_t) [N] int32.

  Args:
    h_s: [N, D_s] student hidden states; w_s: [D_s, V] student unembedding.
    h_t: [N, D_t] teacher hidden states; w_t: [D_t, V] teacher unembedding (no gradient).
    beta: in [0, 1]; 0 = forward KL(p_t || p_s), 1 = reverse KL(p_s || p_t).
    precision: of the dots. HIGHEST for the oracle; None (default precision) for impl='naive'.
  """
  z_s = _logits(h_s, w_s, temperature=temperature, logit_softcap=student_softcap, precision=precision)  # (N, V)
  z_t = lax.stop_gradient(_logits(h_t, w_t, temperature=temperature, logit_softcap=teacher_softcap,
                                  precision=precision))  # (N, V)
  loss = generalized_jsd(jax.nn.log_softmax(z_s, axis=-1), jax.nn.log_softmax(z_t, axis=-1), beta)  # (N,)
  if not return_argmax:
    return loss
  argmax_s = jnp.argmax(z_s, axis=-1).astype(jnp.int32)  # (N,)
  argmax_t = jnp.argmax(z_t, axis=-1).astype(jnp.int32)  # (N,)
  return loss, argmax_s, argmax_t
