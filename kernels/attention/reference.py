"""Attention semantics: the token mask and the pure-jnp oracle `attention_reference`.

Masking rules (shared by the oracle and the kernels, so there is one definition of "who sees whom"):
  * positions: query i of T sits at position `S - T + i` (queries are aligned to the END of the keys,
    the decode / chunked-prefill convention); key j of S sits at position j.
  * causal: key position <= query position.
  * sliding_window=W: key position in [p - W + 1, p] for a query at position p (W keys including
    itself). The window is causal by definition, so it requires causal=True.
  * segment ids: a query sees a key only when their segment ids are equal (id 0 is an ordinary id,
    not padding).
A query that sees no key at all (a fully masked row) outputs zeros.

Logits: `s = sm_scale * q . k` (sm_scale defaults to 1/sqrt(D)), then with a soft-cap c,
`s = c * tanh(s / c)`; then `softmax_j(s) @ v`.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Finite "minus infinity" for masked logits (kernels and oracle): exp(MASK_VALUE - m) underflows to 0
# and MASK_VALUE - MASK_VALUE is 0, never NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(q_pos, kv_pos, q_seg=None, kv_seg=None, *, causal, sliding_window=None, kv_len=None):
  """Boolean visibility mask, broadcast over the shapes of its inputs; None when nothing is masked.

  Args:
    q_pos: int32 query positions (already offset by S - T), e.g. `[T, 1]` or `[bq, bkv]` iota.
    kv_pos: int32 key positions, e.g. `[1, S]`.
    q_seg, kv_seg: int32 segment ids broadcastable like q_pos / kv_pos, or None.
    causal: mask keys after the query.
    sliding_window: W, keep keys at positions p-W+1..p.
    kv_len: keys at positions >= kv_len are padding and masked (kernels pad S up to a block multiple).
  """
  mask = None

  def _and(a, b):
    return b if a is None else jnp.logical_and(a, b)

  if causal:
    mask = _and(mask, kv_pos <= q_pos)
  if sliding_window is not None:
    mask = _and(mask, kv_pos > q_pos - sliding_window)
  if q_seg is not None:
    mask = _and(mask, q_seg == kv_seg)
  if kv_len is not None:
    mask = _and(mask, kv_pos < kv_len)
  return mask


def token_mask(q_segment_ids, kv_segment_ids, *, causal=True, sliding_window=None):
  """`attention_mask` over every (query, key) token pair of a batch: segment ids `[B, T]`, `[B, S]`
  -> bool `[B, T, S]`, query t at position S - T + t and key s at position s."""
  T, S = q_segment_ids.shape[1], kv_segment_ids.shape[1]
  q_pos = (S - T + jnp.arange(T, dtype=jnp.int32))[:, None]  # (T, 1)
  kv_pos = jnp.arange(S, dtype=jnp.int32)[None, :]  # (1, S)
  mask = attention_mask(q_pos, kv_pos, q_segment_ids[:, :, None], kv_segment_ids[:, None, :],
                        causal=causal, sliding_window=sliding_window)
  return jnp.broadcast_to(mask, (q_segment_ids.shape[0], T, S))  # (B, T, S)


def attention_reference(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, causal=True,
                        sliding_window=None, logit_softcap=None, sm_scale=None, upcast=True,
                        **unused_kernel_kwargs):
  """Plain-jnp attention with an f32 softmax: the oracle the kernels are tested against, and (with
  upcast=False) the model's XLA attention.

  out[b, t, h] = sum_s softmax_s(logits[b, h, t, s]) v[b, s, h // G],  G = Nq // Nkv,
  logits = softcap(sm_scale * q[b, t, h] . k[b, s, h // G]), masked as in the module docstring.

  Args:
    q: `[B, T, Nq, D]`; k, v: `[B, S, Nkv, D]` with Nq a multiple of Nkv (GQA, no K/V repeat).
    q_segment_ids: int32 `[B, T]`; kv_segment_ids: int32 `[B, S]` (defaults to q_segment_ids when
      T == S). Without q_segment_ids every row is one segment.
    upcast: True (the oracle): q, k, v go to f32 and both dots run at HIGHEST precision. False (the
      model): the dots take q, k, v in their own dtype (bf16 on the MXU / tensor cores) with f32
      logits, and the f32 probabilities are cast to v's dtype for the second dot.
    unused_kernel_kwargs: block_sizes / interpret / backend, accepted so the oracle and
      `flash_attention` take the same keyword arguments.
  Returns:
    `[B, T, Nq, D]` in q's dtype; rows that see no key are zeros.
  """
  del unused_kernel_kwargs
  B, T, Nq, D = q.shape
  S, Nkv = k.shape[1], k.shape[2]
  G = Nq // Nkv
  if sliding_window is not None and not causal:
    raise ValueError("sliding_window requires causal=True (the window p-W+1..p is causal).")
  if q_segment_ids is None:
    q_segment_ids, kv_segment_ids = jnp.zeros((B, T), jnp.int32), jnp.zeros((B, S), jnp.int32)
  elif kv_segment_ids is None:
    kv_segment_ids = q_segment_ids
  scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
  out_dtype = q.dtype
  precision = jax.lax.Precision.HIGHEST if upcast else None
  if upcast:
    q, k, v = q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32)

  qg = q.reshape(B, T, Nkv, G, D)  # (B, T, Nkv, G, D)
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32,
                      precision=precision) * scale  # (B, Nkv, G, T, S) f32
  if logit_softcap is not None:
    logits = logit_softcap * jnp.tanh(logits / logit_softcap)
  mask = token_mask(q_segment_ids, kv_segment_ids, causal=causal,
                    sliding_window=sliding_window)[:, None, None]  # (B, 1, 1, T, S)
  # A finite fill keeps fully masked rows NaN-free (uniform, then zeroed by the second where).
  probs = jax.nn.softmax(jnp.where(mask, logits, MASK_VALUE), axis=-1)
  probs = jnp.where(mask, probs, 0.0).astype(v.dtype)  # (B, Nkv, G, T, S)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v, precision=precision)  # (B, T, Nkv, G, D)
  return out.reshape(B, T, Nq, D).astype(out_dtype)


class BlockPlan(NamedTuple):
  """Which (query block, key block) tiles can hold a visible pair, as int32 ranges the kernels read.

  kv_lo, kv_hi: `[B, nq]`, query block i visits key blocks kv_lo <= j < kv_hi (empty: 0, 0).
  q_lo, q_hi: `[B, nk]`, key block j is visited by query blocks q_lo <= i < q_hi.
  q_seg_min, q_seg_max: `[B, nq]`; kv_seg_min, kv_seg_max: `[B, nk]`: segment-id range of each
    block. Inside a range a tile is still skipped when the two id ranges do not overlap (exact for
    sorted ids, conservative for unsorted ones).
  Causal and window masks make the visited key blocks of a query block contiguous, so kv_lo/kv_hi
  are exact for them and the kernels clamp their index maps to the range (no copy outside it).
  """
  kv_lo: jax.Array
  kv_hi: jax.Array
  q_lo: jax.Array
  q_hi: jax.Array
  q_seg_min: jax.Array
  q_seg_max: jax.Array
  kv_seg_min: jax.Array
  kv_seg_max: jax.Array


def _block_min_max(seg, length, block):
  """seg `[B, L]` (L a multiple of block, first `length` valid) -> min, max per block `[B, L // block]`."""
  B, L = seg.shape
  valid = (jnp.arange(L) < length)[None, :]
  blocks = lambda x: x.reshape(B, L // block, block)
  big = jnp.iinfo(jnp.int32).max
  return (jnp.min(blocks(jnp.where(valid, seg, big)), axis=-1),
          jnp.max(blocks(jnp.where(valid, seg, -big)), axis=-1))


def block_plan(q_seg, kv_seg, *, batch, T, S, Tp, Sp, block_q, block_kv, causal,
               sliding_window=None) -> BlockPlan:
  """Block-level version of `attention_mask` for padded lengths Tp, Sp (first T, S valid).

  Tile (i, j) is visited iff some valid pair in it is unmasked by causal / window (exact, from the
  position ranges) and the segment-id ranges of the two blocks overlap.
  """
  nq, nk = Tp // block_q, Sp // block_kv
  offset = S - T
  i = jnp.arange(nq, dtype=jnp.int32)[:, None]  # (nq, 1)
  j = jnp.arange(nk, dtype=jnp.int32)[None, :]  # (1, nk)
  q_first, q_last = offset + i * block_q, offset + jnp.minimum((i + 1) * block_q, T) - 1
  kv_first, kv_last = j * block_kv, jnp.minimum((j + 1) * block_kv, S) - 1
  visit = (i * block_q < T) & (kv_first < S)  # (nq, nk); blocks made only of padding are skipped
  if causal:
    visit &= kv_first <= q_last
  if sliding_window is not None:
    visit &= kv_last > q_first - sliding_window
  visit = jnp.broadcast_to(visit, (batch, nq, nk))  # (B, nq, nk)
  if q_seg is None:
    zq, zk = jnp.zeros((batch, nq), jnp.int32), jnp.zeros((batch, nk), jnp.int32)
    q_min, q_max, kv_min, kv_max = zq, zq, zk, zk
  else:
    q_min, q_max = _block_min_max(q_seg, T, block_q)
    kv_min, kv_max = _block_min_max(kv_seg, S, block_kv)
    visit &= (q_min[:, :, None] <= kv_max[:, None, :]) & (kv_min[:, None, :] <= q_max[:, :, None])

  def first_last(v, n):  # v (..., n) bool -> [first, last + 1) of its True entries, (0, 0) if none
    any_ = jnp.any(v, axis=-1)
    lo = jnp.argmax(v, axis=-1)
    hi = n - jnp.argmax(v[..., ::-1], axis=-1)
    return (jnp.where(any_, lo, 0).astype(jnp.int32), jnp.where(any_, hi, 0).astype(jnp.int32))

  kv_lo, kv_hi = first_last(visit, nk)
  q_lo, q_hi = first_last(jnp.swapaxes(visit, 1, 2), nq)
  return BlockPlan(kv_lo, kv_hi, q_lo, q_hi, q_min, q_max, kv_min, kv_max)
