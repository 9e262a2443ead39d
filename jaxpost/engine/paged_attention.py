"""Attention of a query block over a slot's KV pages, in plain XLA (every backend).

  k_pages, v_pages (num_pages + 1, page_size, K, hd) --gather page_table (B, P)--> (B, S = P * page_size, K, hd)
  out[b, t, h] = sum_s softmax_s(softcap(scale * q[b, t, h] . k[b, s, h // G])) v[b, s, h // G]

Key s of row b sits at position s (a slot's sequence starts at page 0, row 0; no left padding), so the
mask is the kernels' `attention_mask` (kernels/attention/reference.py) with real positions: causal, the
sliding window, and `q_valid` in place of segment ids (padding queries see nothing and output zeros). Keys
past a query's position are masked by causality, which is what makes unallocated (trash) pages harmless.
Numerics are `attention_reference(upcast=False)`'s, the model's: q, k, v in their dtype for both dots,
f32 logits and softmax, probabilities cast to v's dtype. GQA reads each K/V head once for its G queries.

Deviation from a production kernel: every row gathers all P pages of its table (S = max_seq_len), not
only the pages it holds; a Pallas kernel would stop at the row's length.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpost.kernels.attention import reference as kernel_reference


def gather_pages(pages: jax.Array, page_table: jax.Array) -> jax.Array:
  """pages (N, page_size, K, hd), page_table (B, P) int32 -> (B, P * page_size, K, hd)."""
  b, p = page_table.shape
  out = jnp.take(pages, page_table, axis=0)  # (B, P, page_size, K, hd)
  return out.reshape(b, p * pages.shape[1], *pages.shape[2:])


def paged_attention(q, k_pages, v_pages, page_table, q_positions, q_valid, *, sliding_window=None,
                    logit_softcap=None, sm_scale=None):
  """q (B, T, H, hd) at q_positions (B, T) int32 (q_valid (B, T) bool) over each row's pages -> (B, T, H, hd).

  The queries' own keys must already be written into the pages."""
  b, t, h, hd = q.shape
  k = gather_pages(k_pages, page_table)  # (B, S, K, hd)
  v = gather_pages(v_pages, page_table)  # (B, S, K, hd)
  s, nkv = k.shape[1], k.shape[2]
  scale = hd ** -0.5 if sm_scale is None else sm_scale
  qg = q.reshape(b, t, nkv, h // nkv, hd)  # (B, T, K, G, hd)
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale  # (B, K, G, T, S)
  if logit_softcap is not None:
    logits = logit_softcap * jnp.tanh(logits / logit_softcap)
  kv_positions = jnp.arange(s, dtype=jnp.int32)[None, None, :]  # (1, 1, S)
  mask = kernel_reference.attention_mask(q_positions[:, :, None], kv_positions, causal=True,
                                         sliding_window=sliding_window)  # (B, T, S)
  mask = (mask & q_valid[:, :, None])[:, None, None]  # (B, 1, 1, T, S)
  probs = jax.nn.softmax(jnp.where(mask, logits, kernel_reference.MASK_VALUE), axis=-1)
  probs = jnp.where(mask, probs, 0.0).astype(v.dtype)  # (B, K, G, T, S)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)  # (B, T, K, G, hd)
  return out.reshape(b, t, h, hd).astype(q.dtype)


def write_pages(pages: jax.Array, page_table: jax.Array, positions: jax.Array, valid: jax.Array,
                new: jax.Array) -> jax.Array:
  """Writes new (B, T, K, hd) at `positions` (B, T) of each row into its pages; invalid tokens (and
  positions past the table) go to the trash page 0."""
  page_size, max_pages = pages.shape[1], page_table.shape[1]
  index = positions // page_size  # (B, T)
  page = jnp.take_along_axis(page_table, jnp.clip(index, 0, max_pages - 1), axis=1)  # (B, T)
  page = jnp.where(valid & (index < max_pages), page, 0)
  return pages.at[page, positions % page_size].set(new.astype(pages.dtype))
