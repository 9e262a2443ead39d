"""Portable log-prob path: XLA over vocab chunks, never holding more than [N, block_v] logits.

Also home of the block math that every backend shares (the Pallas kernels call the same
functions on their VMEM / register tiles), so the equations live in one place:

  forward, online over vocab blocks b (Milakov & Gimelshein 2018, "Online normalizer"):
    m' = max(m, max_b z)          l' = l e^{m-m'} + sum_b e^{z-m'}
    s' = s e^{m-m'} + sum_b e^{z-m'} z          t' = t + sum_b [v = y] z
    lse = m + log l,   logp = t - lse,   H = lse - s / l        (s / l = E_p[z])

  backward, recomputing each block from the saved lse (p = e^{z - lse}):
    d logp / dz = [v = y] - p
    d H / dz    = -p (z - E_p[z]) = -p (z - lse + H)            (from H = lse - sum p z)
    d lse / dz  = p
  so with cotangents (g, g_H, g_lse):
    dL/dz = g [v = y] - p (a + b z),   a = g - g_lse + g_H (H - lse),   b = g_H
  and through z = c tanh(r / (T c)), r = h @ W:   dz/dr = (1 - (z / c)^2) / T.
  dh = sum_b dL/dr_b @ W_b^T,  dW_b = h^T @ dL/dr_b: backward memory is O(N * block_v).

Deviation from a textbook chunked loss: the last, partial chunk is read at the clamped start
V - block_v (no copy of W into a padded buffer) and its columns already seen are masked out.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxpost.kernels.logprobs.reference import apply_softcap


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockSizes:
  """Tile sizes. block_n: token rows per kernel program (Pallas only). block_v: vocab columns
  per block (the chunk width for impl='chunked'). block_d: contraction tile (GPU kernel only)."""
  block_n: int = 512
  block_v: int = 512
  block_d: int | None = None

  @classmethod
  def get_default(cls, impl: str = "pallas", backend: str | None = None) -> "BlockSizes":
    backend = backend or jax.default_backend()
    if impl == "chunked":
      return cls(block_n=0, block_v=8192)
    if backend == "gpu":
      # Triton: the [block_n, block_v] f32 accumulator lives in registers.
      return cls(block_n=64, block_v=128, block_d=64)
    # TPU: h tile (512, D) and W tile (D, 512) bf16, double-buffered, fit VMEM for D <= 4096.
    return cls(block_n=512, block_v=512)


# ----------------------------------------------------------------------------- block math
def masked_logits(raw, valid, *, temperature, logit_softcap):
  """z = softcap(raw) / T on valid columns, -inf elsewhere. raw, valid: [n, bv]."""
  z = apply_softcap(raw, logit_softcap) / temperature
  return jnp.where(valid, z, -jnp.inf)


def stats_init(n):
  """(m, l, t, s), each [n, 1] f32: running max, sum e^{z-m}, target logit, sum e^{z-m} z."""
  zeros = jnp.zeros((n, 1), jnp.float32)
  return (jnp.full((n, 1), -jnp.inf, jnp.float32), zeros, zeros, zeros)


def stats_update(stats, z, valid, is_target):
  """One online step over a vocab block; z, valid, is_target: [n, bv]. See module docstring."""
  m, l, t, s = stats
  m_new = jnp.maximum(m, jnp.max(z, axis=1, keepdims=True))  # (n, 1); finite: block has a valid column
  alpha = jnp.exp(m - m_new)  # (n, 1); 0 on the first block (m = -inf)
  e = jnp.exp(z - m_new)  # (n, bv); 0 on masked columns
  z0 = jnp.where(valid, z, 0.0)  # avoids 0 * -inf
  l = l * alpha + jnp.sum(e, axis=1, keepdims=True)
  s = s * alpha + jnp.sum(e * z0, axis=1, keepdims=True)
  t = t + jnp.sum(jnp.where(is_target, z0, 0.0), axis=1, keepdims=True)
  return m_new, l, t, s


def stats_finalize(m, l, t, s):
  """(logps, entropy, lse) from the accumulated stats (any matching shapes)."""
  lse = m + jnp.log(l)
  return t - lse, lse - s / l, lse


def grad_coefficients(entropy, lse, g_logp, g_entropy, g_lse):
  """Per-row (a, b) of dL/dz = g [v = y] - p (a + b z); all [N] f32."""
  a = g_logp - g_lse + g_entropy * (entropy - lse)
  return a, g_entropy


def logit_grads(z, valid, is_target, lse, a, b, g, *, temperature, logit_softcap):
  """dL/dr for one block, r = h @ W_b. z, valid, is_target: [n, bv]; lse, a, b, g: [n, 1]."""
  z0 = jnp.where(valid, z, 0.0)
  p = jnp.exp(z - lse)  # (n, bv); 0 on masked columns
  dz = jnp.where(is_target, g, 0.0) - p * (a + b * z0)
  if logit_softcap is not None:  # d softcap(r)/dr = 1 - tanh(r/c)^2, tanh(r/c) = z T / c.
    dz = dz * (1.0 - jnp.square(z0 * temperature / logit_softcap))
  return jnp.where(valid, dz / temperature, 0.0)


# ----------------------------------------------------------------------------- XLA chunks
def _chunk_plan(vocab, block_v):
  block_v = min(block_v, vocab)
  return block_v, -(-vocab // block_v)


def _chunk(h, w, targets, j, *, block_v, temperature, logit_softcap):
  """Logits of vocab chunk j: (w_c [D, bv], z [N, bv], valid, is_target, start)."""
  vocab = w.shape[1]
  lo = j * block_v
  start = jnp.minimum(lo, vocab - block_v)  # clamp the last chunk instead of padding W
  w_c = lax.dynamic_slice_in_dim(w, start, block_v, axis=1)  # (D, bv)
  raw = jnp.dot(h, w_c, preferred_element_type=jnp.float32)  # (N, bv)
  cols = start + lax.broadcasted_iota(jnp.int32, raw.shape, 1)  # (N, bv)
  valid = cols >= lo  # columns below lo were covered by the previous chunk
  is_target = valid & (cols == targets[:, None])
  z = masked_logits(raw, valid, temperature=temperature, logit_softcap=logit_softcap)
  return w_c, z, valid, is_target, start


def chunked_forward_stats(h, w, targets, *, temperature, logit_softcap, block_v):
  """(logps, entropy, lse), each [N] f32. h: [N, D], w: [D, V], targets: [N] int32."""
  block_v, num_chunks = _chunk_plan(w.shape[1], block_v)
  chunk = functools.partial(_chunk, h, w, targets, block_v=block_v, temperature=temperature,
                            logit_softcap=logit_softcap)

  def body(stats, j):
    _, z, valid, is_target, _ = chunk(j)
    return stats_update(stats, z, valid, is_target), None

  # Chunk 0 is peeled so the carry takes the inputs' shard_map varying-axes type (a constant init
  # would not match the loop output inside shard_map).
  stats, _ = body(stats_init(h.shape[0]), 0)
  stats, _ = lax.scan(body, stats, jnp.arange(1, num_chunks))
  return tuple(x[:, 0] for x in stats_finalize(*stats))


def chunked_grads(h, w, targets, lse, a, b, g, *, temperature, logit_softcap, block_v):
  """(dh [N, D], dw [D, V]) in the input dtypes; lse, a, b, g: [N] f32 (see grad_coefficients)."""
  block_v, num_chunks = _chunk_plan(w.shape[1], block_v)
  chunk = functools.partial(_chunk, h, w, targets, block_v=block_v, temperature=temperature,
                            logit_softcap=logit_softcap)
  rows = [x[:, None] for x in (lse, a, b, g)]  # each (N, 1)
  mm_dtype = jnp.result_type(h.dtype, w.dtype)

  def body(carry, j):
    dh, dw = carry
    w_c, z, valid, is_target, start = chunk(j)
    dr = logit_grads(z, valid, is_target, *rows, temperature=temperature,
                     logit_softcap=logit_softcap).astype(mm_dtype)  # (N, bv)
    dh = dh + jnp.dot(dr, w_c.T, preferred_element_type=jnp.float32)  # (N, D)
    dw_c = jnp.einsum("nd,nv->dv", h, dr, preferred_element_type=jnp.float32)  # (D, bv)
    # Re-seen columns of the clamped last chunk have dr = 0, so adding keeps their values.
    old = lax.dynamic_slice_in_dim(dw, start, block_v, axis=1).astype(jnp.float32)
    dw = lax.dynamic_update_slice_in_dim(dw, (old + dw_c).astype(dw.dtype), start, axis=1)
    return (dh, dw), None

  init = (jnp.zeros(h.shape, jnp.float32), jnp.zeros(w.shape, w.dtype))
  carry, _ = body(init, 0)  # peeled, see chunked_forward_stats
  (dh, dw), _ = lax.scan(body, carry, jnp.arange(1, num_chunks))
  return dh.astype(h.dtype), dw


# ----------------------------------------------------------------------------- custom_vjp
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _stats_chunked(h, w, targets, temperature, logit_softcap, block_v):
  return chunked_forward_stats(h, w, targets, temperature=temperature,
                               logit_softcap=logit_softcap, block_v=block_v)


def _stats_chunked_fwd(h, w, targets, temperature, logit_softcap, block_v):
  out = _stats_chunked(h, w, targets, temperature, logit_softcap, block_v)
  _, entropy, lse = out
  return out, (h, w, targets, entropy, lse)


def _stats_chunked_bwd(temperature, logit_softcap, block_v, res, cotangents):
  h, w, targets, entropy, lse = res
  g_logp, g_entropy, g_lse = cotangents
  a, b = grad_coefficients(entropy, lse, g_logp, g_entropy, g_lse)
  dh, dw = chunked_grads(h, w, targets, lse, a, b, g_logp, temperature=temperature,
                         logit_softcap=logit_softcap, block_v=block_v)
  return dh, dw, None


_stats_chunked.defvjp(_stats_chunked_fwd, _stats_chunked_bwd)


def token_logprob_stats_chunked(hidden, w_unembed, targets, *, temperature=1.0,
                                logit_softcap=None, block_v=8192):
  """(logps, entropy, lse), each [N] f32, differentiable in hidden [N, D] and w_unembed [D, V].

  The backward pass recomputes each chunk's logits from the saved lse (O(N * block_v) memory).
  """
  return _stats_chunked(hidden, w_unembed, targets.astype(jnp.int32), float(temperature),
                        None if logit_softcap is None else float(logit_softcap), int(block_v))
