"""Pure-jnp oracle for token log-probs: materialises the full [N, V] f32 logits.

    z      = softcap(h @ W) / T,  softcap(x) = c * tanh(x / c)   (identity when c is None)

The cap acts on the model's logits and the sampling temperature after it, as in Gemma 2 and HF.
    lse_i  = logsumexp_v z[i, v]
    logp_i = z[i, y_i] - lse_i
    H_i    = lse_i - sum_v softmax(z)[i, v] * z[i, v]

Gradients of the oracle come from plain autodiff, so it also checks the hand-written backward passes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def apply_softcap(x: jax.Array, logit_softcap: float | None) -> jax.Array:
  """softcap(x) = c * tanh(x / c); identity when `logit_softcap` is None."""
  if logit_softcap is None:
    return x
  return logit_softcap * jnp.tanh(x / logit_softcap)


def token_logprob_stats_reference(
    hidden: jax.Array,
    w_unembed: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    precision: lax.Precision | None = lax.Precision.HIGHEST,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(logps, entropy, lse), each [N] f32, from full f32 logits.

  Args:
    hidden: [N, D] final hidden states.
    w_unembed: [D, V] unembedding matrix.
    targets: [N] int token ids in [0, V).
    precision: of the h @ W dot (and of its transposes in the backward). HIGHEST for the oracle;
      None (default precision, like the kernels) for impl='naive' in api.py.
  """
  # bf16 x bf16 products are exact in f32, so an f32-accumulating dot equals upcasting first;
  # HIGHEST only matters for f32 operands (full f32 rather than bf16 passes / TF32), which includes
  # the backward's f32 cotangent dots even for bf16 inputs.
  logits = jnp.dot(hidden, w_unembed, preferred_element_type=jnp.float32,
                   precision=precision)  # (N, V)
  z = apply_softcap(logits, logit_softcap) / temperature  # (N, V)
  lse = jax.nn.logsumexp(z, axis=-1)  # (N,)
  z_target = jnp.take_along_axis(z, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]  # (N,)
  probs = jax.nn.softmax(z, axis=-1)  # (N, V)
  entropy = lse - jnp.sum(probs * z, axis=-1)  # (N,)
  return z_target - lse, entropy, lse


def token_logprobs_reference(
    hidden: jax.Array,
    w_unembed: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    return_entropy: bool = False,
    precision: lax.Precision | None = lax.Precision.HIGHEST,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """log p(targets | hidden): logps [N] f32, and entropy [N] f32 when `return_entropy`."""
  logps, entropy, _ = token_logprob_stats_reference(
      hidden, w_unembed, targets, temperature=temperature, logit_softcap=logit_softcap,
      precision=precision)
  return (logps, entropy) if return_entropy else logps
