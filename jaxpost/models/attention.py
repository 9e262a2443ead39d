"""Attention implementations behind one signature, picked by `ModelConfig.attention`.

All take q (B, T, H, D), k and v (B, S, K, D) with H % K == 0 (grouped-query attention: K/V are
never repeated in memory), and segment ids (B, T)/(B, S): a query attends to a key only when both
have the same segment id and, if causal, the key is not after the query. Packed rows therefore never
attend across examples.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, *, causal: bool = True,
                   sliding_window: int | None = None) -> jax.Array:
  """Boolean (B, T, S) mask of allowed (query, key) pairs; queries aligned to the end of the keys."""
  t, s = q_segment_ids.shape[1], kv_segment_ids.shape[1]
  mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]  # (B, T, S)
  q_pos = jnp.arange(t)[:, None] + (s - t)  # (T, 1)
  k_pos = jnp.arange(s)[None, :]  # (1, S)
  if causal:
    mask &= (k_pos <= q_pos)[None]
  if sliding_window is not None:
    mask &= (k_pos > q_pos - sliding_window)[None]
  return mask


def xla_attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal=True, sliding_window=None,
                  logit_softcap=None, sm_scale=None):
  """softmax(q k^T * scale + mask) v with f32 softmax, as plain XLA ops. Fully masked rows give 0."""
  b, t, h, d = q.shape
  kvh = k.shape[2]
  g = h // kvh
  scale = d ** -0.5 if sm_scale is None else sm_scale
  qg = q.reshape(b, t, kvh, g, d)  # (B, T, K, G, D)
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale  # (B, K, G, T, S)
  if logit_softcap is not None:
    logits = logit_softcap * jnp.tanh(logits / logit_softcap)
  mask = attention_mask(q_segment_ids, kv_segment_ids, causal=causal, sliding_window=sliding_window)
  mask = mask[:, None, None]  # (B, 1, 1, T, S)
  logits = jnp.where(mask, logits, _MASKED)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = jnp.where(mask, probs, 0.0).astype(v.dtype)  # Rows with no allowed key -> zeros.
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)  # (B, T, K, G, D)
  return out.reshape(b, t, h, d)


IMPLEMENTATIONS = {"xla": xla_attention}


def attend(impl: str, q, k, v, **kwargs):
  """Dispatches to the named implementation (see IMPLEMENTATIONS)."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"config.model.attention: {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
  return IMPLEMENTATIONS[impl](q, k, v, **kwargs)
