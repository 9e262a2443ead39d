"""GPU forward kernel for token log-probs: Pallas with the Triton lowering.

Why Triton and not Mosaic GPU: this kernel was written without a GPU to test on, and Pallas-Triton
(register tiles, masked loads, `fori_loop`s) is the far smaller surface to get right blind than
Mosaic GPU's warpgroup/TMA/SMEM-transform model. Triton is deprecated in jax 0.11 but still lowers
when `compiler_params` is a `pallas.triton.CompilerParams`, which is passed explicitly here so the
backend choice does not depend on `jax_pallas_use_mosaic_gpu`.

Forward only: each program owns `block_n` token rows and loops over vocab blocks (outer) and
`block_d` slices of D (inner), keeping the [block_n, block_v] f32 logit tile in registers and the
online (m, l, t, s) stats of chunked.py. The backward on GPU is the XLA chunked backward
(`chunked_grads`): cuBLAS matmuls per vocab chunk, same O(N * block_v) memory, no Triton atomics.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxpost.kernels.logprobs.chunked import (BlockSizes, masked_logits, stats_finalize,
                                              stats_init, stats_update)


def _fwd_kernel(y_ref, h_ref, w_ref, m_ref, l_ref, t_ref, s_ref, *, block_n, block_v, block_d,
                vocab, temperature, logit_softcap):
  d_model = h_ref.shape[1]
  rows = pl.ds(pl.program_id(0) * block_n, block_n)
  y = pltriton.load(y_ref.at[rows, :])  # (bn, 1)

  def vocab_block(j, stats):
    cols = j * block_v + lax.broadcasted_iota(jnp.int32, (1, block_v), 1)  # (1, bv)
    w_mask = jnp.broadcast_to(cols < vocab, (block_d, block_v))

    def d_slice(k, acc):
      ks = pl.ds(k * block_d, block_d)
      h = pltriton.load(h_ref.at[rows, ks])  # (bn, bd)
      w = pltriton.load(w_ref.at[ks, pl.ds(j * block_v, block_v)], mask=w_mask, other=0.0)  # (bd, bv)
      return acc + jnp.dot(h, w, preferred_element_type=jnp.float32)

    raw = lax.fori_loop(0, d_model // block_d, d_slice,
                        jnp.zeros((block_n, block_v), jnp.float32))  # (bn, bv)
    valid = jnp.broadcast_to(cols < vocab, raw.shape)
    is_target = valid & (jnp.broadcast_to(cols, raw.shape) == y)
    z = masked_logits(raw, valid, temperature=temperature, logit_softcap=logit_softcap)
    return stats_update(stats, z, valid, is_target)

  stats = lax.fori_loop(0, pl.cdiv(vocab, block_v), vocab_block, stats_init(block_n))
  for ref, x in zip((m_ref, l_ref, t_ref, s_ref), stats):
    pltriton.store(ref.at[rows, :], x)


def _block_d(d_model, block_d):
  for bd in (block_d, 64, 32, 16):
    if bd and d_model % bd == 0:
      return bd
  raise ValueError(f"GPU kernel needs D % 16 == 0; got D={d_model}")


def gpu_forward_stats(h, w, targets, *, temperature, logit_softcap, block_sizes: BlockSizes,
                      interpret=False, num_warps=4, num_stages=2):
  """(logps, entropy, lse), each [N] f32. h: [N, D], w: [D, V] (same dtype), targets: [N] int32."""
  n, d = h.shape
  vocab = w.shape[1]
  block_n, block_v = block_sizes.block_n, block_sizes.block_v
  for name, b in (("block_n", block_n), ("block_v", block_v)):
    if b & (b - 1):
      raise ValueError(f"Triton tiles must be powers of two; got {name}={b}")
  block_d = _block_d(d, block_sizes.block_d)
  n_pad = pl.cdiv(n, block_n) * block_n - n
  row = jax.ShapeDtypeStruct((n + n_pad, 1), jnp.float32)
  kernel = functools.partial(_fwd_kernel, block_n=block_n, block_v=block_v, block_d=block_d,
                             vocab=vocab, temperature=temperature, logit_softcap=logit_softcap)
  stats = pl.pallas_call(
      kernel,
      grid=(pl.cdiv(n + n_pad, block_n),),
      out_shape=[row] * 4,
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
      name="token_logprobs_fwd_triton",
  )(jnp.pad(targets, (0, n_pad))[:, None], jnp.pad(h, ((0, n_pad), (0, 0))), w)
  return stats_finalize(*(x[:n, 0] for x in stats))
