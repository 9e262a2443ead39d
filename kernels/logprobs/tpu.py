"""Mosaic TPU Pallas kernels for token log-probs (forward stats, dh, dW); never builds [N, V].

Grid anatomy (vocab is always the innermost, sequential "arbitrary" axis of a reduction):
  forward  grid (N / bn, V / bv): online (m, l, t, s) over vocab blocks, see chunked.py.
  dh       grid (N / bn, V / bv): dh_i  = sum_j dL/dr_ij @ W_j^T   (f32 VMEM accumulator [bn, D])
  dW       grid (V / bv, N / bn): dW_j  = sum_i h_i^T @ dL/dr_ij   (f32 VMEM accumulator [D, bv])
Both backward kernels recompute r_ij = h_i @ W_j from the saved lse, so the backward costs two
extra matmuls (4 in all, vs 2 for a backward that keeps [N, V] probabilities) and O(N * bv) memory.

Layout choices: per-row values (targets, and lse / a / b / g in the backward) travel lane-replicated
as [N, 128] arrays, and the running stats live in [bn, 128] scratch: the (8, 128) tiling Mosaic
wants, the same trick as the reference flash attention kernel. The forward packs (m, l, t, s) into
lanes 0..3 of one [N, 128] f32 output. The last vocab block may be partial: its out-of-range
columns are masked in the logits and zeroed in W before any matmul (Mosaic reads garbage there).
N is padded up to a multiple of block_n (padded rows have h = 0 and zero cotangents).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxpost.kernels.logprobs.chunked import (BlockSizes, logit_grads, masked_logits,
                                              stats_finalize, stats_init, stats_update)

LANES = 128
VMEM_LIMIT_BYTES = 48 * 1024 * 1024  # under v7x's 64 MiB; tiles at the defaults need ~32 MiB for D=4096


def _lane(x, k):
  """Lane k of a [n, 128] tile as [n, 1] (a masked lane-sum lowers everywhere, a lane slice may not)."""
  lane = lax.broadcasted_iota(jnp.int32, x.shape, 1)
  return jnp.sum(jnp.where(lane == k, x, jnp.zeros_like(x)), axis=1, keepdims=True)


def _replicate(x, n_pad):
  """[N] -> [N + n_pad, 128] lane-replicated."""
  return jnp.broadcast_to(jnp.pad(x, (0, n_pad))[:, None], (x.shape[0] + n_pad, LANES))


def _tile(y_ref, h, w, j, *, block_v, vocab, temperature, logit_softcap):
  """Logits of tile (i, j): (w with out-of-vocab columns zeroed, z, valid, is_target), z: [bn, bv]."""
  col_w = j * block_v + lax.broadcasted_iota(jnp.int32, (1, block_v), 1)  # (1, bv)
  w = jnp.where(col_w < vocab, w, jnp.zeros_like(w))  # (D, bv)
  raw = jnp.dot(h, w, preferred_element_type=jnp.float32)  # (bn, bv)
  cols = j * block_v + lax.broadcasted_iota(jnp.int32, raw.shape, 1)  # (bn, bv)
  valid = cols < vocab
  # Targets are reduced as f32 (exact below 2^24 > any vocab): f32 lane reductions are the safe path.
  y = _lane(y_ref[...].astype(jnp.float32), 0).astype(jnp.int32)  # (bn, 1)
  is_target = valid & (cols == y)
  z = masked_logits(raw, valid, temperature=temperature, logit_softcap=logit_softcap)
  return w, z, valid, is_target


def _fwd_kernel(y_ref, h_ref, w_ref, out_ref, m_sc, l_sc, t_sc, s_sc, *, tile):
  j = pl.program_id(1)
  scratch = (m_sc, l_sc, t_sc, s_sc)

  @pl.when(j == 0)
  def _init():
    for ref, x in zip(scratch, stats_init(m_sc.shape[0])):
      ref[...] = jnp.broadcast_to(x, ref.shape)

  _, z, valid, is_target = tile(y_ref, h_ref[...], w_ref[...], j)
  stats = stats_update(tuple(_lane(ref[...], 0) for ref in scratch), z, valid, is_target)
  for ref, x in zip(scratch, stats):
    ref[...] = jnp.broadcast_to(x, ref.shape)

  @pl.when(j == pl.num_programs(1) - 1)
  def _store():
    lane = lax.broadcasted_iota(jnp.int32, out_ref.shape, 1)
    m, l, t, s = stats
    out_ref[...] = jnp.where(lane == 0, m, jnp.where(lane == 1, l, jnp.where(lane == 2, t, s)))


def _tile_grads(y_ref, rows_ref, h, w, j, *, tile, temperature, logit_softcap):
  """(w masked, dL/dr [bn, bv] f32) for one tile; rows lanes 0..3 = (lse, a, b, g)."""
  w, z, valid, is_target = tile(y_ref, h, w, j)
  rows = rows_ref[...]
  lse, a, b, g = (_lane(rows, k) for k in range(4))
  return w, logit_grads(z, valid, is_target, lse, a, b, g, temperature=temperature,
                        logit_softcap=logit_softcap)


def _dh_kernel(y_ref, rows_ref, h_ref, w_ref, dh_ref, acc_sc, *, tile_grads):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  w, dr = tile_grads(y_ref, rows_ref, h_ref[...], w_ref[...], j)
  acc_sc[...] += lax.dot_general(dr.astype(w.dtype), w, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32)  # (bn, D)

  @pl.when(j == pl.num_programs(1) - 1)
  def _store():
    dh_ref[...] = acc_sc[...].astype(dh_ref.dtype)


def _dw_kernel(y_ref, rows_ref, h_ref, w_ref, dw_ref, acc_sc, *, tile_grads):
  j, i = pl.program_id(0), pl.program_id(1)

  @pl.when(i == 0)
  def _init():
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  h = h_ref[...]
  _, dr = tile_grads(y_ref, rows_ref, h, w_ref[...], j)
  acc_sc[...] += lax.dot_general(h, dr.astype(h.dtype), (((0,), (0,)), ((), ())),
                                 preferred_element_type=jnp.float32)  # (D, bv)

  @pl.when(i == pl.num_programs(1) - 1)
  def _store():
    dw_ref[...] = acc_sc[...].astype(dw_ref.dtype)


def _plan(h, w, block_sizes):
  n, d = h.shape
  vocab = w.shape[1]
  block_n = min(block_sizes.block_n, pl.cdiv(n, 8) * 8)
  block_v = min(block_sizes.block_v, pl.cdiv(vocab, LANES) * LANES)
  if block_n % 8 or block_v % LANES:
    raise ValueError(f"TPU blocks must be multiples of (8, 128); got {block_n=}, {block_v=}")
  n_pad = pl.cdiv(n, block_n) * block_n - n
  return block_n, block_v, n_pad, pl.cdiv(n + n_pad, block_n), pl.cdiv(vocab, block_v)


def _params(semantics):
  return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=VMEM_LIMIT_BYTES)


def tpu_forward_stats(h, w, targets, *, temperature, logit_softcap, block_sizes: BlockSizes,
                      interpret=False):
  """(logps, entropy, lse), each [N] f32. h: [N, D], w: [D, V] (same dtype), targets: [N] int32."""
  n, d = h.shape
  vocab = w.shape[1]
  block_n, block_v, n_pad, grid_n, grid_v = _plan(h, w, block_sizes)
  tile = functools.partial(_tile, block_v=block_v, vocab=vocab, temperature=temperature,
                           logit_softcap=logit_softcap)
  row_spec = pl.BlockSpec((block_n, LANES), lambda i, j: (i, 0))
  out = pl.pallas_call(
      functools.partial(_fwd_kernel, tile=tile),
      grid=(grid_n, grid_v),
      in_specs=[row_spec,
                pl.BlockSpec((block_n, d), lambda i, j: (i, 0)),
                pl.BlockSpec((d, block_v), lambda i, j: (0, j))],
      out_specs=row_spec,
      out_shape=jax.ShapeDtypeStruct((n + n_pad, LANES), jnp.float32),
      scratch_shapes=[pltpu.VMEM((block_n, LANES), jnp.float32)] * 4,
      compiler_params=_params(("parallel", "arbitrary")),
      cost_estimate=pl.CostEstimate(
          flops=2 * n * d * vocab, transcendentals=n * vocab,
          bytes_accessed=grid_n * w.size * w.dtype.itemsize + h.size * h.dtype.itemsize),
      interpret=interpret,
      name="token_logprobs_fwd",
  )(_replicate(targets, n_pad), jnp.pad(h, ((0, n_pad), (0, 0))), w)
  return stats_finalize(*(out[:n, k] for k in range(4)))


def tpu_grads(h, w, targets, lse, a, b, g, *, temperature, logit_softcap,
              block_sizes: BlockSizes, interpret=False):
  """(dh [N, D], dw [D, V]) in the input dtypes; lse, a, b, g: [N] f32 (see chunked.py)."""
  n, d = h.shape
  vocab = w.shape[1]
  block_n, block_v, n_pad, grid_n, grid_v = _plan(h, w, block_sizes)
  tile = functools.partial(_tile, block_v=block_v, vocab=vocab, temperature=temperature,
                           logit_softcap=logit_softcap)
  tile_grads = functools.partial(_tile_grads, tile=tile, temperature=temperature,
                                 logit_softcap=logit_softcap)
  lane = jnp.arange(LANES)
  rows = jnp.stack([lse, a, b, g], axis=1)  # (N, 4)
  rows = jnp.where(lane < 4, jnp.pad(rows, ((0, n_pad), (0, LANES - 4))), 0.0)  # (N + pad, 128)
  inputs = (_replicate(targets, n_pad), rows, jnp.pad(h, ((0, n_pad), (0, 0))), w)
  cost = pl.CostEstimate(flops=4 * n * d * vocab, transcendentals=n * vocab,
                         bytes_accessed=grid_n * w.size * w.dtype.itemsize)

  row_spec = pl.BlockSpec((block_n, LANES), lambda i, j: (i, 0))
  dh = pl.pallas_call(
      functools.partial(_dh_kernel, tile_grads=tile_grads),
      grid=(grid_n, grid_v),
      in_specs=[row_spec, row_spec,
                pl.BlockSpec((block_n, d), lambda i, j: (i, 0)),
                pl.BlockSpec((d, block_v), lambda i, j: (0, j))],
      out_specs=pl.BlockSpec((block_n, d), lambda i, j: (i, 0)),
      out_shape=jax.ShapeDtypeStruct((n + n_pad, d), h.dtype),
      scratch_shapes=[pltpu.VMEM((block_n, d), jnp.float32)],
      compiler_params=_params(("parallel", "arbitrary")),
      cost_estimate=cost,
      interpret=interpret,
      name="token_logprobs_dh",
  )(*inputs)

  row_spec_t = pl.BlockSpec((block_n, LANES), lambda j, i: (i, 0))
  dw = pl.pallas_call(
      functools.partial(_dw_kernel, tile_grads=tile_grads),
      grid=(grid_v, grid_n),
      in_specs=[row_spec_t, row_spec_t,
                pl.BlockSpec((block_n, d), lambda j, i: (i, 0)),
                pl.BlockSpec((d, block_v), lambda j, i: (0, j))],
      out_specs=pl.BlockSpec((d, block_v), lambda j, i: (0, j)),
      out_shape=jax.ShapeDtypeStruct(w.shape, w.dtype),
      scratch_shapes=[pltpu.VMEM((d, block_v), jnp.float32)],
      compiler_params=_params(("parallel", "arbitrary")),
      cost_estimate=cost,
      interpret=interpret,
      name="token_logprobs_dw",
  )(*inputs)
  return dh[:n], dw
