"""Flash attention forward, dQ and dK/dV kernels for Mosaic TPU (also run in interpret mode on CPU).

Layout: kernels see heads-major `[B, N, T, D]` (the wrapper transposes) so a tile's last two dims are
(block, D), which Mosaic tiles natively. Grids put the reduction axis last ("arbitrary") and keep
running statistics in VMEM scratch. GQA: query head h reads key/value head h // G through the
index map; K/V are never repeated. dK/dV loop over the G query heads of a KV head inside the grid,
so each dK/dV tile is owned by one program: no atomics, deterministic.

Block skipping: a `BlockPlan` (scalar-prefetched into SMEM) gives each query block its visited key
block range; index maps clamp into that range, so a skipped step re-uses the resident tile (no DMA),
and `pl.when` skips the compute.

Forward (FlashAttention-2, per query block, over key blocks j):
  s_j = softcap(scale * q k_j^T), m' = max(m, rowmax s_j), p = exp(s_j - m'),
  l' = exp(m - m') l + rowsum p,  acc' = exp(m - m') acc + p v_j,
  out = acc / l,  lse = m + log l  (fully masked rows: out = 0, lse = +big).
Backward, with delta = rowsum(dO * O):
  p = exp(s - lse), dP = dO v^T, dS = p (dP - delta) * softcap'(s), dQ = scale dS k,
  dK = scale dS^T q, dV = p^T dO,  with softcap'(s) = 1 - (s_capped / c)^2.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxpost.kernels.attention.reference import MASK_VALUE, BlockPlan, attention_mask

_NT = (((1,), (1,)), ((), ()))  # contract the last dims: a @ b.T


def _clamp(x, lo, hi):
  """Clamp a grid index into the visited range [lo, hi) (hi <= lo: empty range, use lo)."""
  return jnp.minimum(jnp.maximum(x, lo), jnp.maximum(hi - 1, lo))


def _overlap(plan_refs, b, i, j):
  """True when the segment-id ranges of query block i and key block j intersect."""
  _, _, _, _, q_min, q_max, kv_min, kv_max = plan_refs
  return (q_min[b, i] <= kv_max[b, j]) & (kv_min[b, j] <= q_max[b, i])


def _scores(q, k, q_seg, kv_seg, i, j, *, block_q, block_kv, sm_scale, logit_softcap, causal,
            sliding_window, offset, kv_len):
  """Capped logits `[bq, bkv]` f32 of one tile and its mask (None when nothing is masked)."""
  s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * sm_scale  # (bq, bkv)
  if logit_softcap is not None:
    s = logit_softcap * jnp.tanh(s / logit_softcap)
  shape = (block_q, block_kv)
  q_pos = offset + i * block_q + lax.broadcasted_iota(jnp.int32, shape, 0)  # (bq, bkv)
  kv_pos = j * block_kv + lax.broadcasted_iota(jnp.int32, shape, 1)  # (bq, bkv)
  mask = attention_mask(q_pos, kv_pos, q_seg, kv_seg, causal=causal, sliding_window=sliding_window,
                        kv_len=kv_len)
  return s, mask


def _split(refs, n_in, has_segments):
  """Split the kernel's positional refs into (ins, q_seg, kv_seg, rest)."""
  ins, rest = refs[:n_in], refs[n_in:]
  if has_segments:
    return ins, rest[0], rest[1], rest[2:]
  return ins, None, None, rest


def _fwd_kernel(*refs, has_segments, mask_kw):
  plan_refs, refs = refs[:8], refs[8:]
  (q_ref, k_ref, v_ref), q_seg_ref, kv_seg_ref, (o_ref, lse_ref, m_sc, l_sc, acc_sc) = _split(
      refs, 3, has_segments)
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  kv_lo, kv_hi = plan_refs[0], plan_refs[1]

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  visit = (kv_lo[b, i] <= j) & (j < kv_hi[b, i]) & _overlap(plan_refs, b, i, j)

  @pl.when(visit)
  def _compute():
    q_seg = None if q_seg_ref is None else q_seg_ref[...]  # (bq, 1)
    kv_seg = None if kv_seg_ref is None else kv_seg_ref[...]  # (1, bkv)
    s, mask = _scores(q_ref[...], k_ref[...], q_seg, kv_seg, i, j, **mask_kw)
    if mask is not None:
      s = jnp.where(mask, s, MASK_VALUE)
    m_prev = m_sc[...]  # (bq, 1)
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m_prev - m_next)
    p = jnp.exp(s - m_next)  # (bq, bkv)
    if mask is not None:
      p = jnp.where(mask, p, 0.0)  # a fully masked row has s == m_next: exp gives 1, not 0
    l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
    v = v_ref[...]
    acc_sc[...] = alpha * acc_sc[...] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    m_sc[...] = m_next

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    l = l_sc[...]
    empty = l == 0.0
    o_ref[...] = (acc_sc[...] / jnp.where(empty, 1.0, l)).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, -MASK_VALUE, m_sc[...] + jnp.log(jnp.where(empty, 1.0, l)))


def _probs_and_dscores(q, k, v, do, lse, delta, q_seg, kv_seg, i, j, mask_kw):
  """p = exp(s - lse) and dS (before the sm_scale factor) of one tile, both `[bq, bkv]` f32."""
  s, mask = _scores(q, k, q_seg, kv_seg, i, j, **mask_kw)
  logit_softcap = mask_kw["logit_softcap"]
  p = jnp.exp(s - lse)
  if mask is not None:
    p = jnp.where(mask, p, 0.0)
  dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)  # (bq, bkv)
  ds = p * (dp - delta)
  if logit_softcap is not None:
    ds = ds * (1.0 - jnp.square(s / logit_softcap))
  return p, ds


def _dq_kernel(*refs, has_segments, mask_kw):
  plan_refs, refs = refs[:8], refs[8:]
  ins, q_seg_ref, kv_seg_ref, (dq_ref, dq_sc) = _split(refs, 6, has_segments)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  kv_lo, kv_hi = plan_refs[0], plan_refs[1]

  @pl.when(j == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  @pl.when((kv_lo[b, i] <= j) & (j < kv_hi[b, i]) & _overlap(plan_refs, b, i, j))
  def _compute():
    q_seg = None if q_seg_ref is None else q_seg_ref[...]
    kv_seg = None if kv_seg_ref is None else kv_seg_ref[...]
    k = k_ref[...]
    _, ds = _probs_and_dscores(q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
                               q_seg, kv_seg, i, j, mask_kw)
    dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = (dq_sc[...] * mask_kw["sm_scale"]).astype(dq_ref.dtype)


def _dkv_kernel(*refs, has_segments, mask_kw):
  plan_refs, refs = refs[:8], refs[8:]
  ins, q_seg_ref, kv_seg_ref, (dk_ref, dv_ref, dk_sc, dv_sc) = _split(refs, 6, has_segments)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
  b, j, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  q_lo, q_hi = plan_refs[2], plan_refs[3]

  @pl.when((g == 0) & (i == 0))
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  @pl.when((q_lo[b, j] <= i) & (i < q_hi[b, j]) & _overlap(plan_refs, b, i, j))
  def _compute():
    q_seg = None if q_seg_ref is None else q_seg_ref[...]
    kv_seg = None if kv_seg_ref is None else kv_seg_ref[...]
    q, do = q_ref[...], do_ref[...]
    p, ds = _probs_and_dscores(q, k_ref[...], v_ref[...], do, lse_ref[...], delta_ref[...],
                               q_seg, kv_seg, i, j, mask_kw)
    dv_sc[...] += jnp.dot(p.astype(do.dtype).T, do, preferred_element_type=jnp.float32)
    dk_sc[...] += jnp.dot(ds.astype(q.dtype).T, q, preferred_element_type=jnp.float32)

  @pl.when((g == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
  def _finish():
    dk_ref[...] = (dk_sc[...] * mask_kw["sm_scale"]).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _seg_inputs(q_seg, kv_seg, block_q, block_kv, q_map, kv_map):
  """Segment ids as `[B, Tp, 1]` / `[B, 1, Sp]` so tiles are (bq, 1) columns and (1, bkv) rows."""
  if q_seg is None:
    return [], []
  specs = [pl.BlockSpec((None, block_q, 1), q_map), pl.BlockSpec((None, 1, block_kv), kv_map)]
  return [q_seg[:, :, None], kv_seg[:, None, :]], specs


def _mask_kw(block_q, block_kv, cfg):
  return dict(block_q=block_q, block_kv=block_kv, sm_scale=cfg.sm_scale,
              logit_softcap=cfg.logit_softcap, causal=cfg.causal,
              sliding_window=cfg.sliding_window, offset=cfg.offset, kv_len=cfg.kv_len)


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch, semantics, cfg, name):
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=8, grid=grid, in_specs=in_specs,
                                             out_specs=out_specs, scratch_shapes=scratch),
      out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
      interpret=cfg.interpret,
      name=name,
  )


def forward(q, k, v, q_seg, kv_seg, plan: BlockPlan, cfg, *, block_q, block_kv):
  """q `[B, Tp, Nq, D]`, k/v `[B, Sp, Nkv, D]` (padded) -> out `[B, Tp, Nq, D]`, lse `[B, Nq, Tp]` f32."""
  B, Tp, Nq, D = q.shape
  Sp, Nkv = k.shape[1], k.shape[2]
  G = Nq // Nkv
  qh, kh, vh = (x.swapaxes(1, 2) for x in (q, k, v))  # (B, N, L, D)

  def kv_map(b, h, i, j, kv_lo, kv_hi, *_):
    return b, h // G, _clamp(j, kv_lo[b, i], kv_hi[b, i]), 0

  q_map = lambda b, h, i, j, *_: (b, h, i, 0)
  seg_args, seg_specs = _seg_inputs(
      q_seg, kv_seg, block_q, block_kv, lambda b, h, i, j, *_: (b, i, 0),
      lambda b, h, i, j, kv_lo, kv_hi, *_: (b, 0, _clamp(j, kv_lo[b, i], kv_hi[b, i])))
  kernel = functools.partial(_fwd_kernel, has_segments=q_seg is not None,
                             mask_kw=_mask_kw(block_q, block_kv, cfg))
  tile_q = pl.BlockSpec((None, None, block_q, D), q_map)
  tile_kv = pl.BlockSpec((None, None, block_kv, D), kv_map)
  out, lse = _call(
      kernel, (B, Nq, Tp // block_q, Sp // block_kv), [tile_q, tile_kv, tile_kv] + seg_specs,
      [tile_q, pl.BlockSpec((None, None, block_q, 1), q_map)],
      [jax.ShapeDtypeStruct((B, Nq, Tp, D), q.dtype), jax.ShapeDtypeStruct((B, Nq, Tp, 1), jnp.float32)],
      [pltpu.VMEM((block_q, 1), jnp.float32), pltpu.VMEM((block_q, 1), jnp.float32),
       pltpu.VMEM((block_q, D), jnp.float32)],
      ("parallel", "parallel", "parallel", "arbitrary"), cfg, "jaxpost_flash_fwd",
  )(*plan, qh, kh, vh, *seg_args)
  return out.swapaxes(1, 2), lse[..., 0]


def backward(q, k, v, q_seg, kv_seg, do, lse, delta, plan_dq: BlockPlan, plan_dkv: BlockPlan, cfg, *,
             block_q_dq, block_kv_dq, block_q_dkv, block_kv_dkv):
  """Padded inputs as in `forward`, do `[B, Tp, Nq, D]`, lse/delta `[B, Nq, Tp]` f32 -> dq, dk, dv."""
  B, Tp, Nq, D = q.shape
  Sp, Nkv = k.shape[1], k.shape[2]
  G = Nq // Nkv
  qh, kh, vh, doh = (x.swapaxes(1, 2) for x in (q, k, v, do))  # (B, N, L, D)
  lse4, delta4 = lse[..., None], delta[..., None]  # (B, Nq, Tp, 1)
  has_segments = q_seg is not None

  # dQ: grid (B, Nq, nq, nk), reduce over key blocks.
  bq, bkv = block_q_dq, block_kv_dq

  def kv_map(b, h, i, j, kv_lo, kv_hi, *_):
    return b, h // G, _clamp(j, kv_lo[b, i], kv_hi[b, i]), 0

  q_map = lambda b, h, i, j, *_: (b, h, i, 0)
  seg_args, seg_specs = _seg_inputs(
      q_seg, kv_seg, bq, bkv, lambda b, h, i, j, *_: (b, i, 0),
      lambda b, h, i, j, kv_lo, kv_hi, *_: (b, 0, _clamp(j, kv_lo[b, i], kv_hi[b, i])))
  tile_q = pl.BlockSpec((None, None, bq, D), q_map)
  tile_kv = pl.BlockSpec((None, None, bkv, D), kv_map)
  row = pl.BlockSpec((None, None, bq, 1), q_map)
  dq = _call(
      functools.partial(_dq_kernel, has_segments=has_segments, mask_kw=_mask_kw(bq, bkv, cfg)),
      (B, Nq, Tp // bq, Sp // bkv), [tile_q, tile_kv, tile_kv, tile_q, row, row] + seg_specs, tile_q,
      jax.ShapeDtypeStruct((B, Nq, Tp, D), q.dtype), [pltpu.VMEM((bq, D), jnp.float32)],
      ("parallel", "parallel", "parallel", "arbitrary"), cfg, "jaxpost_flash_dq",
  )(*plan_dq, qh, kh, vh, doh, lse4, delta4, *seg_args)

  # dK/dV: grid (B, Nkv, nk, G, nq), reduce over the G query heads and the query blocks.
  bq, bkv = block_q_dkv, block_kv_dkv

  def qrow_map(b, h, j, g, i, _kv_lo, _kv_hi, q_lo, q_hi, *_):
    return b, h * G + g, _clamp(i, q_lo[b, j], q_hi[b, j]), 0

  kv_map2 = lambda b, h, j, g, i, *_: (b, h, j, 0)
  seg_args, seg_specs = _seg_inputs(
      q_seg, kv_seg, bq, bkv,
      lambda b, h, j, g, i, _a, _b, q_lo, q_hi, *_: (b, _clamp(i, q_lo[b, j], q_hi[b, j]), 0),
      lambda b, h, j, g, i, *_: (b, 0, j))
  tile_q = pl.BlockSpec((None, None, bq, D), qrow_map)
  tile_kv = pl.BlockSpec((None, None, bkv, D), kv_map2)
  row = pl.BlockSpec((None, None, bq, 1), qrow_map)
  dk, dv = _call(
      functools.partial(_dkv_kernel, has_segments=has_segments, mask_kw=_mask_kw(bq, bkv, cfg)),
      (B, Nkv, Sp // bkv, G, Tp // bq), [tile_q, tile_kv, tile_kv, tile_q, row, row] + seg_specs,
      [tile_kv, tile_kv],
      [jax.ShapeDtypeStruct((B, Nkv, Sp, D), k.dtype), jax.ShapeDtypeStruct((B, Nkv, Sp, D), v.dtype)],
      [pltpu.VMEM((bkv, D), jnp.float32), pltpu.VMEM((bkv, D), jnp.float32)],
      ("parallel", "parallel", "parallel", "arbitrary", "arbitrary"), cfg, "jaxpost_flash_dkv",
  )(*plan_dkv, qh, kh, vh, doh, lse4, delta4, *seg_args)
  return dq.swapaxes(1, 2), dk.swapaxes(1, 2), dv.swapaxes(1, 2)
