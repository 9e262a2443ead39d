"""Attention implementations behind one signature, picked by `ModelConfig.attention`.

All take q (B, T, H, D), k and v (B, S, K, D) with H % K == 0 (grouped-query attention: K/V are
never repeated in memory), and segment ids (B, T)/(B, S): a query attends to a key only when both
have the same segment id and, if causal, the key is not after the query. Packed rows therefore never
attend across examples.
"""
from __future__ import annotations

import functools

import jax
from jax.sharding import PartitionSpec as P

from jaxpost import mesh as mesh_lib
from jaxpost.kernels.attention import reference as kernel_reference
from jaxpost.models import packed_attention

# segment ids (B, T), (B, S) -> bool (B, T, S): the kernels' mask, the one definition of who sees whom.
attention_mask = kernel_reference.token_mask


def xla_attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal=True, sliding_window=None,
                  logit_softcap=None, sm_scale=None):
  """softmax(q k^T * scale + mask) v as plain XLA ops: the kernels' `attention_reference` with the
  model's numerics (upcast=False): q, k, v stay in their dtype for both dots (f32 logits and softmax,
  probabilities cast to v's dtype), so bf16 runs at bf16 matmul speed. Fully masked rows give 0."""
  return kernel_reference.attention_reference(
      q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, causal=causal,
      sliding_window=sliding_window, logit_softcap=logit_softcap, sm_scale=sm_scale, upcast=False)


def _mesh_specs(q, k):
  """shard_map specs for (B, T, N, D) and (B, T) under the context mesh: batch over (data, fsdp), heads
  over tensor, each only where it divides; None when there is no mesh to map over."""
  found = mesh_lib.context_row_axes(q.shape[0])
  if found is None:
    return None
  batch, mesh = found
  tensor = mesh.shape.get("tensor", 1) if "tensor" in mesh.axis_names else 1
  heads = "tensor" if tensor > 1 and q.shape[2] % tensor == 0 and k.shape[2] % tensor == 0 else None
  return P(batch or None, None, heads, None), P(batch or None, None)


def pallas_attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal=True, sliding_window=None,
                     logit_softcap=None, sm_scale=None):
  """The jaxpost flash-attention kernel (Mosaic TPU / Pallas GPU; interpret mode on CPU), run per shard
  inside shard_map when a mesh is set (attention is independent across batch rows and heads)."""
  from jaxpost.kernels.attention import flash_attention
  fn = functools.partial(flash_attention, causal=causal, sliding_window=sliding_window,
                         logit_softcap=logit_softcap, sm_scale=sm_scale,
                         interpret=jax.default_backend() == "cpu")
  specs = _mesh_specs(q, k)
  if specs is None:
    return fn(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
  heads_spec, rows_spec = specs
  mapped = jax.shard_map(lambda q, k, v, qs, ks: fn(q, k, v, q_segment_ids=qs, kv_segment_ids=ks),
                         in_specs=(heads_spec, heads_spec, heads_spec, rows_spec, rows_spec),
                         out_specs=heads_spec, check_vma=False)
  return mapped(q, k, v, q_segment_ids, kv_segment_ids)


def dot_product_attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal=True, sliding_window=None,
                          logit_softcap=None, sm_scale=None, cudnn_max_segments=0):
  """`jax.nn.dot_product_attention`: cuDNN's fused kernel on GPU, XLA elsewhere. Segment ids become
  an explicit (B, 1, T, S) mask, unless `cudnn_max_segments` > 0: then self-attention rows with at most
  that many runs of equal segment ids go through cuDNN's packed layout, no mask (packed_attention.py)."""
  if logit_softcap is not None:
    raise ValueError("config.model.attention: 'cudnn' does not support logit soft-capping; use 'pallas'")

  def dense():
    mask = attention_mask(q_segment_ids, kv_segment_ids, causal=False)[:, None]  # (B, 1, T, S)
    window = None if sliding_window is None else (sliding_window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=sm_scale, is_causal=causal,
                                        local_window_size=window,
                                        implementation="cudnn" if jax.default_backend() == "gpu" else None)

  if cudnn_max_segments <= 0 or q_segment_ids is not kv_segment_ids:
    return dense()
  try:
    return packed_attention.packed_attention(q, k, v, q_segment_ids, max_runs=cudnn_max_segments, dense=dense,
                                             causal=causal, sliding_window=sliding_window, sm_scale=sm_scale)
  except (NotImplementedError, TypeError) as e:  # cuDNN's checks (or a changed jax binding) fail while tracing.
    raise ValueError(f"config.model.cudnn_max_segments: cuDNN's packed layout is unavailable here ({e}); "
                     "set it to 0") from None


def auto_attention(q, k, v, cudnn_max_segments=0, **kwargs):
  """Pallas on TPU; on GPU cuDNN unless soft-capping needs Pallas; XLA on CPU (interpret mode is slow)."""
  backend = jax.default_backend()
  if backend == "tpu" or (backend == "gpu" and kwargs.get("logit_softcap") is not None):
    return pallas_attention(q, k, v, **kwargs)
  if backend == "gpu":
    return dot_product_attention(q, k, v, cudnn_max_segments=cudnn_max_segments, **kwargs)
  return xla_attention(q, k, v, **kwargs)


IMPLEMENTATIONS = {"xla": xla_attention, "pallas": pallas_attention, "cudnn": dot_product_attention,
                   "auto": auto_attention}


def attend(impl: str, q, k, v, *, cudnn_max_segments: int = 0, **kwargs):
  """Dispatches to the named implementation (see IMPLEMENTATIONS); only cuDNN reads `cudnn_max_segments`."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"config.model.attention: {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
  if impl in ("cudnn", "auto"):
    kwargs["cudnn_max_segments"] = cudnn_max_segments
  return IMPLEMENTATIONS[impl](q, k, v, **kwargs)
