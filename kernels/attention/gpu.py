"""Flash attention forward, dQ and dK/dV kernels for GPU, on the Pallas Triton backend.

Why Triton and not Mosaic GPU: the kernels were written without a GPU to test on. Pallas-Triton
lowers plain `jnp` tile code (no warpgroup layouts, barriers or SMEM transforms to get right) and
runs in jax 0.10 and 0.11 (deprecated in 0.11, still present). `pltriton.CompilerParams` is passed
explicitly so the Triton lowering is picked even where Mosaic GPU is the default.

Layout: `[B, L, N, D]` as given (tiles are strided loads, no transposes); D is zero-padded to a
power of two >= 16 (Triton tile rule; zero columns change neither q.k nor the kept output columns).
Each program owns one output tile and loops over the other sequence axis with `fori_loop` bounds
taken from the `BlockPlan`, so skipped blocks are neither loaded nor computed. dK/dV programs loop
over the G query heads of their KV head too: no atomics, deterministic. Equations: see tpu.py.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

try:  # deprecated in jax 0.11 and due to be removed; fail at call time, not at package import
  from jax.experimental.pallas import triton as pltriton
except ImportError:  # pragma: no cover
  pltriton = None

from jaxpost.kernels.attention.reference import MASK_VALUE, BlockPlan, attention_mask

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def _scores(q, k, q_seg, kv_seg, q_start, kv_start, *, block_q, block_kv, sm_scale, logit_softcap,
            causal, sliding_window, offset, kv_len):
  """Capped logits `[bq, bkv]` f32 of one tile and its mask (None when nothing is masked)."""
  s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * sm_scale  # (bq, bkv)
  if logit_softcap is not None:
    s = logit_softcap * jnp.tanh(s / logit_softcap)
  q_pos = (offset + q_start + jnp.arange(block_q, dtype=jnp.int32))[:, None]  # (bq, 1)
  kv_pos = (kv_start + jnp.arange(block_kv, dtype=jnp.int32))[None, :]  # (1, bkv)
  q_seg = None if q_seg is None else q_seg[:, None]
  kv_seg = None if kv_seg is None else kv_seg[None, :]
  mask = attention_mask(q_pos, kv_pos, q_seg, kv_seg, causal=causal, sliding_window=sliding_window,
                        kv_len=kv_len)
  return s, mask


def _probs_and_dscores(q, k, v, do, lse, delta, q_seg, kv_seg, q_start, kv_start, mask_kw):
  """p = exp(s - lse) and dS (before the sm_scale factor), both `[bq, bkv]` f32."""
  s, mask = _scores(q, k, q_seg, kv_seg, q_start, kv_start, **mask_kw)
  p = jnp.exp(s - lse[:, None])
  if mask is not None:
    p = jnp.where(mask, p, 0.0)
  dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
  ds = p * (dp - delta[:, None])
  if mask_kw["logit_softcap"] is not None:
    ds = ds * (1.0 - jnp.square(s / mask_kw["logit_softcap"]))
  return p, ds


def _fwd_kernel(q_ref, k_ref, v_ref, lo_ref, hi_ref, *refs, has_segments, mask_kw):
  if has_segments:
    q_seg_ref, kv_seg_ref, o_ref, lse_ref = refs
  else:
    (o_ref, lse_ref), q_seg_ref, kv_seg_ref = refs, None, None
  bq, bkv = mask_kw["block_q"], mask_kw["block_kv"]
  q_start = pl.program_id(0) * bq
  q = q_ref[...]  # (bq, D)
  q_seg = None if q_seg_ref is None else q_seg_ref[...]  # (bq,)

  def body(j, carry):
    acc, m, l = carry
    kv_start = pl.multiple_of(j * bkv, bkv)
    kv = pl.ds(kv_start, bkv)
    kv_seg = None if kv_seg_ref is None else kv_seg_ref[kv]
    s, mask = _scores(q, k_ref[kv, :], q_seg, kv_seg, q_start, kv_start, **mask_kw)
    if mask is not None:
      s = jnp.where(mask, s, MASK_VALUE)
    m_next = jnp.maximum(m, jnp.max(s, axis=1))  # (bq,)
    alpha = jnp.exp(m - m_next)
    p = jnp.exp(s - m_next[:, None])
    if mask is not None:
      p = jnp.where(mask, p, 0.0)
    v = v_ref[kv, :]
    acc = alpha[:, None] * acc + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return acc, m_next, alpha * l + jnp.sum(p, axis=1)

  init = (jnp.zeros(q.shape, jnp.float32), jnp.full((bq,), MASK_VALUE, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  acc, m, l = lax.fori_loop(lo_ref[...], hi_ref[...], body, init)
  empty = l == 0.0
  o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, -MASK_VALUE, m + jnp.log(jnp.where(empty, 1.0, l)))


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lo_ref, hi_ref, *refs, has_segments,
               mask_kw):
  if has_segments:
    q_seg_ref, kv_seg_ref, dq_ref = refs
  else:
    (dq_ref,), q_seg_ref, kv_seg_ref = refs, None, None
  bkv = mask_kw["block_kv"]
  q_start = pl.program_id(0) * mask_kw["block_q"]
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  q_seg = None if q_seg_ref is None else q_seg_ref[...]

  def body(j, dq):
    kv_start = pl.multiple_of(j * bkv, bkv)
    kv = pl.ds(kv_start, bkv)
    kv_seg = None if kv_seg_ref is None else kv_seg_ref[kv]
    k = k_ref[kv, :]
    _, ds = _probs_and_dscores(q, k, v_ref[kv, :], do, lse, delta, q_seg, kv_seg, q_start, kv_start,
                               mask_kw)
    return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  dq = lax.fori_loop(lo_ref[...], hi_ref[...], body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * mask_kw["sm_scale"]).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lo_ref, hi_ref, *refs, has_segments,
                num_groups, mask_kw):
  if has_segments:
    q_seg_ref, kv_seg_ref, dk_ref, dv_ref = refs
  else:
    (dk_ref, dv_ref), q_seg_ref, kv_seg_ref = refs, None, None
  bq = mask_kw["block_q"]
  kv_start = pl.program_id(0) * mask_kw["block_kv"]
  k, v = k_ref[...], v_ref[...]  # (bkv, D)
  kv_seg = None if kv_seg_ref is None else kv_seg_ref[...]
  lo, hi = lo_ref[...], hi_ref[...]

  def head(g, carry):
    def body(i, carry):
      dk, dv = carry
      q_start = pl.multiple_of(i * bq, bq)
      rows = pl.ds(q_start, bq)
      q_seg = None if q_seg_ref is None else q_seg_ref[rows]
      q, do = q_ref[rows, g, :], do_ref[rows, g, :]  # (bq, D)
      p, ds = _probs_and_dscores(q, k, v, do, lse_ref[g, rows], delta_ref[g, rows], q_seg, kv_seg,
                                 q_start, kv_start, mask_kw)
      dv = dv + lax.dot_general(p.astype(do.dtype), do, _TN, preferred_element_type=jnp.float32)
      dk = dk + lax.dot_general(ds.astype(q.dtype), q, _TN, preferred_element_type=jnp.float32)
      return dk, dv
    return lax.fori_loop(lo, hi, body, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, num_groups, head, (zeros, zeros))
  dk_ref[...] = (dk * mask_kw["sm_scale"]).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _mask_kw(block_q, block_kv, cfg):
  return dict(block_q=block_q, block_kv=block_kv, sm_scale=cfg.sm_scale,
              logit_softcap=cfg.logit_softcap, causal=cfg.causal,
              sliding_window=cfg.sliding_window, offset=cfg.offset, kv_len=cfg.kv_len)


def _pad_head_dim(*xs):
  D = xs[0].shape[-1]
  Dp = max(16, pl.next_power_of_2(D))
  return [x if Dp == D else jnp.pad(x, ((0, 0),) * 3 + ((0, Dp - D),)) for x in xs], D


def _params(cfg, head_dim):
  if pltriton is None:
    raise ImportError("jax.experimental.pallas.triton is missing in this jax: the GPU flash attention "
                      "kernels need the Pallas Triton backend.")
  warps = cfg.block_sizes.num_warps or (4 if head_dim <= 64 else 8)
  return pltriton.CompilerParams(num_warps=warps, num_stages=cfg.block_sizes.num_stages or 2)


def forward(q, k, v, q_seg, kv_seg, plan: BlockPlan, cfg, *, block_q, block_kv):
  """q `[B, Tp, Nq, D]`, k/v `[B, Sp, Nkv, D]` (padded) -> out `[B, Tp, Nq, D]`, lse `[B, Nq, Tp]` f32."""
  B, Tp, Nq, _ = q.shape
  Sp, Nkv = k.shape[1], k.shape[2]
  G = Nq // Nkv
  (q, k, v), D = _pad_head_dim(q, k, v)
  Dp = q.shape[-1]
  has_segments = q_seg is not None
  in_specs = [
      pl.BlockSpec((None, block_q, None, Dp), lambda i, b, h: (b, i, h, 0)),
      pl.BlockSpec((None, Sp, None, Dp), lambda i, b, h: (b, 0, h // G, 0)),
      pl.BlockSpec((None, Sp, None, Dp), lambda i, b, h: (b, 0, h // G, 0)),
      pl.BlockSpec((None, None), lambda i, b, h: (b, i)),
      pl.BlockSpec((None, None), lambda i, b, h: (b, i)),
  ]
  args = [q, k, v, plan.kv_lo, plan.kv_hi]
  if has_segments:
    in_specs += [pl.BlockSpec((None, block_q), lambda i, b, h: (b, i)),
                 pl.BlockSpec((None, Sp), lambda i, b, h: (b, 0))]
    args += [q_seg, kv_seg]
  out, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, has_segments=has_segments, mask_kw=_mask_kw(block_q, block_kv, cfg)),
      grid=(Tp // block_q, B, Nq),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, block_q, None, Dp), lambda i, b, h: (b, i, h, 0)),
                 pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, Nq, Tp), jnp.float32)],
      compiler_params=_params(cfg, Dp),
      interpret=cfg.interpret,
      name="jaxpost_flash_fwd",
  )(*args)
  return out[..., :D], lse


def backward(q, k, v, q_seg, kv_seg, do, lse, delta, plan_dq: BlockPlan, plan_dkv: BlockPlan, cfg, *,
             block_q_dq, block_kv_dq, block_q_dkv, block_kv_dkv):
  """Padded inputs as in `forward`, do `[B, Tp, Nq, D]`, lse/delta `[B, Nq, Tp]` f32 -> dq, dk, dv."""
  B, Tp, Nq, _ = q.shape
  Sp, Nkv = k.shape[1], k.shape[2]
  G = Nq // Nkv
  (q, k, v, do), D = _pad_head_dim(q, k, v, do)
  Dp = q.shape[-1]
  has_segments = q_seg is not None

  # dQ: one program per (query block, batch, query head), looping over its key blocks.
  bq, bkv = block_q_dq, block_kv_dq
  tile_q = pl.BlockSpec((None, bq, None, Dp), lambda i, b, h: (b, i, h, 0))
  full_kv = pl.BlockSpec((None, Sp, None, Dp), lambda i, b, h: (b, 0, h // G, 0))
  row = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
  scalar = pl.BlockSpec((None, None), lambda i, b, h: (b, i))
  in_specs = [tile_q, full_kv, full_kv, tile_q, row, row, scalar, scalar]
  args = [q, k, v, do, lse, delta, plan_dq.kv_lo, plan_dq.kv_hi]
  if has_segments:
    in_specs += [pl.BlockSpec((None, bq), lambda i, b, h: (b, i)),
                 pl.BlockSpec((None, Sp), lambda i, b, h: (b, 0))]
    args += [q_seg, kv_seg]
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, has_segments=has_segments, mask_kw=_mask_kw(bq, bkv, cfg)),
      grid=(Tp // bq, B, Nq), in_specs=in_specs, out_specs=tile_q,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), compiler_params=_params(cfg, Dp),
      interpret=cfg.interpret, name="jaxpost_flash_dq",
  )(*args)

  # dK/dV: one program per (key block, batch, KV head), looping over its G query heads and their
  # query blocks; the G query heads of KV head h are the contiguous head block h of size G.
  bq, bkv = block_q_dkv, block_kv_dkv
  tile_kv = pl.BlockSpec((None, bkv, None, Dp), lambda j, b, h: (b, j, h, 0))
  group_q = pl.BlockSpec((None, Tp, G, Dp), lambda j, b, h: (b, 0, h, 0))
  group_row = pl.BlockSpec((None, G, Tp), lambda j, b, h: (b, h, 0))
  scalar = pl.BlockSpec((None, None), lambda j, b, h: (b, j))
  in_specs = [group_q, tile_kv, tile_kv, group_q, group_row, group_row, scalar, scalar]
  args = [q, k, v, do, lse, delta, plan_dkv.q_lo, plan_dkv.q_hi]
  if has_segments:
    in_specs += [pl.BlockSpec((None, Tp), lambda j, b, h: (b, 0)),
                 pl.BlockSpec((None, bkv), lambda j, b, h: (b, j))]
    args += [q_seg, kv_seg]
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, has_segments=has_segments, num_groups=G,
                        mask_kw=_mask_kw(bq, bkv, cfg)),
      grid=(Sp // bkv, B, Nkv), in_specs=in_specs, out_specs=[tile_kv, tile_kv],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=_params(cfg, Dp), interpret=cfg.interpret, name="jaxpost_flash_dkv",
  )(*args)
  return dq[..., :D], dk[..., :D], dv[..., :D]
