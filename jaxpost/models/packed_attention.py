"""cuDNN attention on packed rows without a dense mask: segment ids -> cuDNN's packed (varlen) layout.

`jax.nn.dot_product_attention` takes packing only as a boolean (B, 1, T, S) mask, which it turns into
an additive bias that cuDNN reads in the forward and backward pass (128 MiB a layer at 4 x 4096), and
it can no longer skip the blocks that the mask empties. cuDNN's own packed layout describes a row as
runs: run r of row b starts at `offsets[b, r]` and has `seqlens[b, r]` tokens, and a token attends
(causally) only within its run. A row of segment ids is exactly such a list of runs when each segment
id occupies one contiguous stretch, which is how every jaxpost batch is built (packed examples, left
padding, right padding: padding is a run of its own, whose outputs no loss reads).

The number of runs per row must be static (`max_runs`, config `model.cudnn_max_segments`); a batch
with a longer row takes the dense-mask path instead (`lax.cond`), so the result never depends on it.

Deviation from the segment-mask semantics of `attention.py`: two stretches of the same segment id
separated by another id are separate runs here (they would see each other under the mask). No jaxpost
batch has such rows.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_runs(segment_ids: jax.Array, max_runs: int):
  """Runs of equal segment id along each row, in the form cuDNN's packed layout takes.

  segment_ids (B, T) -> (seqlens (B, M) int32, offsets (B, M + 1) int32, fits () bool) with M =
  max_runs: run r of row b covers tokens [offsets[b, r], offsets[b, r] + seqlens[b, r]); entries past
  a row's last run are -1 (cuDNN's convention), and `fits` says every row has at most M runs.
  E.g. [[1, 1, 2, 0]] with M = 3 -> seqlens [[2, 1, 1]], offsets [[0, 2, 3, -1]], fits True.
  """
  b, t = segment_ids.shape
  first = jnp.ones((b, 1), bool)
  starts = jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)  # (B, T)
  fits = jnp.all(jnp.sum(starts, axis=1) <= max_runs)
  # Start positions, then T for every missing run: (B, M + 1), so seqlens = successive differences.
  begin = jax.vmap(lambda s: jnp.nonzero(s, size=max_runs + 1, fill_value=t)[0])(starts).astype(jnp.int32)
  present = begin < t  # (B, M + 1)
  seqlens = jnp.where(present[:, :-1], begin[:, 1:] - begin[:, :-1], -1)  # (B, M)
  offsets = jnp.where(present, begin, -1)  # (B, M + 1)
  return seqlens, offsets, fits


def packed_reference(q, k, v, seqlens, offsets, *, causal=True, sliding_window=None, sm_scale=None):
  """The packed layout's meaning in plain jnp (the oracle for the cuDNN call, and its CPU stand-in).

  q (B, T, H, hd), k/v (B, T, K, hd), seqlens (B, M), offsets (B, M + 1) as from `segment_runs`:
  softmax over the keys of the query's own run (not after it if causal; within `sliding_window`
  positions of it if set), f32 softmax; tokens outside every run give 0."""
  b, t, h, d = q.shape
  kvh = k.shape[2]
  scale = d ** -0.5 if sm_scale is None else sm_scale
  pos = jnp.arange(t)  # (T,)
  start, length = offsets[:, None, :-1], seqlens[:, None, :]  # (B, 1, M)
  inside = (start >= 0) & (pos[None, :, None] >= start) & (pos[None, :, None] < start + length)  # (B, T, M)
  run = jnp.where(jnp.any(inside, -1), jnp.argmax(inside, -1), -1)  # (B, T): run index, -1 = none
  mask = (run[:, :, None] == run[:, None, :]) & (run[:, :, None] >= 0)  # (B, T, T)
  if causal:
    mask &= pos[None, None, :] <= pos[None, :, None]
  if sliding_window is not None:
    mask &= pos[None, None, :] > pos[None, :, None] - sliding_window
  qg = q.reshape(b, t, kvh, h // kvh, d)  # (B, T, K, G, hd)
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale  # (B, K, G, T, S)
  logits = jnp.where(mask[:, None, None], logits, -jnp.inf)
  probs = jnp.nan_to_num(jax.nn.softmax(logits, axis=-1) * mask[:, None, None]).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)  # (B, T, K, G, hd)
  return out.reshape(b, t, h, d)


def cudnn_packed_kernel(q, k, v, seqlens, offsets, *, causal=True, sliding_window=None, sm_scale=None):
  """cuDNN's fused attention on the packed layout (Hopper or newer; jax's internal cuDNN binding)."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn
  mask_type = cudnn.MaskType.PADDING_CAUSAL if causal else cudnn.MaskType.PADDING
  scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
  return cudnn.dot_product_attention(q, k, v, q_seqlen=seqlens, kv_seqlen=seqlens, q_offsets=offsets,
                                     kv_offsets=offsets, scale=scale, mask_type=mask_type,
                                     sliding_window_length=sliding_window)


def packed_attention(q, k, v, segment_ids, *, max_runs: int, dense, causal=True, sliding_window=None,
                     sm_scale=None, kernel=None):
  """Self-attention of packed rows through the packed layout, or `dense()` when a row has > max_runs runs.

  q (B, T, H, hd), k/v (B, T, K, hd), segment_ids (B, T) -> (B, T, H, hd). `kernel` defaults to cuDNN
  on GPU and to `packed_reference` elsewhere (so CPU tests run this very code path)."""
  if kernel is None:
    kernel = cudnn_packed_kernel if jax.default_backend() == "gpu" else packed_reference
  seqlens, offsets, fits = segment_runs(segment_ids, max_runs)
  options = dict(causal=causal, sliding_window=sliding_window, sm_scale=sm_scale)
  return jax.lax.cond(fits, lambda: kernel(q, k, v, seqlens, offsets, **options), dense)
