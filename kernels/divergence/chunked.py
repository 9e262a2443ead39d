"""Teacher-student divergence over vocab chunks: XLA, never more than [N, block_v] logits of either model.

Per chunk of block_v columns both models' logits are recomputed (z = softcap(h @ W_b) / T, see
reference.py) and folded into per-token statistics; lse = m + log l as in kernels/logprobs/chunked.py.

  pass 1, online over vocab blocks b, for each model x in {s, t} with the other model y:
    m_x' = max(m_x, max_b z_x)            l_x' = l_x e^{m_x - m_x'} + sum_b e^{z_x - m_x'}
    a_x' = a_x e^{m_x - m_x'} + sum_b e^{z_x - m_x'} (z_x - z_y)              argmax_x from max_b z_x
  which gives both KLs at once (log p_x = z_x - lse_x):
    KL(p_t || p_s) = a_t / l_t - lse_t + lse_s          KL(p_s || p_t) = a_s / l_s - lse_s + lse_t
  so beta = 0 and beta = 1 take one pass. 0 < beta < 1 needs log m = log(beta p_t + (1 - beta) p_s),
  hence both final lse, hence a second pass:
    pass 2: KL(p_t || m) = sum_v p_t (log p_t - log m),   KL(p_s || m) = sum_v p_s (log p_s - log m)

  backward (teacher frozen: no cotangent for h_t, W_t), recomputing each block from the saved
  per-token (lse_s, lse_t, E_{p_s}[r]) and the loss cotangent g:
    beta = 0:  dL/dz_s = p_s - p_t
    beta = 1:  dL/dz_s = p_s (r - E_{p_s}[r]),             r = log p_s - log p_t,  E_{p_s}[r] = L
    else:      dL/dz_s = (1 - beta) p_s (r - E_{p_s}[r]),  r = log p_s - log m,    E_{p_s}[r] = KL(p_s || m)
  (d/dp_s of L at fixed p_t is (1 - beta) r for 0 < beta < 1: the p_t / m and p_s / m terms sum to 1 and
  drop out against the softmax Jacobian, as does the + 1 of d(p log p)). Then, as in logprobs,
  dz/dr = (1 - (z T / c)^2) / T through the student's soft-cap, dh_s = sum_b dr_b @ W_b^T and
  dW_s[:, b] = h_s^T @ dr_b: backward memory is O(N * block_v) plus dW_s itself.

Deviations: beta is a static Python float (it picks the pass count and the backward formula); the last,
partial chunk is read at the clamped start V - block_v with its columns already seen masked out (no
padded copy of either W), and chunk 0 is peeled out of the scans, both as in kernels/logprobs/chunked.py.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxpost.kernels.logprobs.chunked import masked_logits

# Half of logprobs' chunk width: every chunk holds the logits of two models. Not tuned on hardware.
DEFAULT_BLOCK_V = 4096


@dataclasses.dataclass(frozen=True, kw_only=True)
class DivergenceConfig:
  """Static settings of one divergence (hashable: the custom_vjp's nondiff argument)."""
  beta: float  # in [0, 1]: 0 = KL(p_t || p_s), 1 = KL(p_s || p_t), else the generalised JSD
  temperature: float = 1.0  # shared by both models, divides the soft-capped logits
  student_softcap: float | None = None  # c of c tanh(x / c) on the student's logits, None = no cap
  teacher_softcap: float | None = None  # the same for the teacher
  block_v: int = DEFAULT_BLOCK_V  # vocab columns per chunk (clamped to V)


# ----------------------------------------------------------------------------- block math
def side_init(n):
  """(m, l, a, argmax) of one model: [n, 1] f32 running max, sum e^{z-m}, sum e^{z-m} (z - z_other); int32."""
  zeros = jnp.zeros((n, 1), jnp.float32)
  return jnp.full((n, 1), -jnp.inf, jnp.float32), zeros, zeros, jnp.zeros((n, 1), jnp.int32)


def side_update(side, z, z_other, valid, start):
  """One online step of pass 1 for one model over a block; z, z_other, valid: [n, bv]."""
  m, l, a, argmax = side
  block_max = jnp.max(z, axis=1, keepdims=True)  # (n, 1); finite: the block has a valid column
  m_new = jnp.maximum(m, block_max)  # (n, 1)
  alpha = jnp.exp(m - m_new)  # (n, 1); 0 on the first block (m = -inf)
  e = jnp.exp(z - m_new)  # (n, bv); 0 on masked columns
  diff = jnp.where(valid, z - z_other, 0.0)  # (n, bv); avoids -inf - -inf
  l = l * alpha + jnp.sum(e, axis=1, keepdims=True)
  a = a * alpha + jnp.sum(e * diff, axis=1, keepdims=True)
  # Strict >: on ties the earlier block keeps its index, so this is jnp.argmax's first maximum.
  block_arg = start + jnp.argmax(z, axis=1, keepdims=True).astype(jnp.int32)  # (n, 1)
  argmax = jnp.where(block_max > m, block_arg, argmax)
  return m_new, l, a, argmax


def side_finalize(m, l, a):
  """(lse, E_p[z - z_other]) of one model; any matching shapes."""
  return m + jnp.log(l), a / l


def mixture_terms(z_s, z_t, valid, lse_s, lse_t, beta):
  """(p_s, log p_s, p_t, log p_t, log m) on a block, log-probs 0 on masked columns; [n, bv] each."""
  logp_s = jnp.where(valid, z_s - lse_s, 0.0)  # (n, bv)
  logp_t = jnp.where(valid, z_t - lse_t, 0.0)  # (n, bv)
  p_s = jnp.where(valid, jnp.exp(logp_s), 0.0)  # (n, bv)
  p_t = jnp.where(valid, jnp.exp(logp_t), 0.0)  # (n, bv)
  log_m = jnp.logaddexp(math.log(beta) + logp_t, math.log1p(-beta) + logp_s)  # (n, bv)
  return p_s, logp_s, p_t, logp_t, log_m


def student_logit_grads(z_s, z_t, valid, lse_s, lse_t, r_mean, g, cfg):
  """dL/dr_s for one block, r_s = h_s @ W_s[:, b]. z_s, z_t, valid: [n, bv]; lse_*, r_mean, g: [n, 1]."""
  beta = cfg.beta
  if beta == 0.0:
    dz = jnp.exp(z_s - lse_s) - jnp.exp(z_t - lse_t)  # (n, bv); 0 on masked columns
  elif beta == 1.0:
    r = jnp.where(valid, (z_s - lse_s) - (z_t - lse_t), 0.0)  # (n, bv) log p_s - log p_t
    dz = jnp.exp(z_s - lse_s) * (r - r_mean)
  else:
    p_s, logp_s, _, _, log_m = mixture_terms(z_s, z_t, valid, lse_s, lse_t, beta)
    dz = (1.0 - beta) * p_s * (logp_s - log_m - r_mean)  # (n, bv)
  dz = g * dz
  if cfg.student_softcap is not None:  # d softcap(r)/dr = 1 - tanh(r/c)^2, tanh(r/c) = z T / c.
    z0 = jnp.where(valid, z_s, 0.0)
    dz = dz * (1.0 - jnp.square(z0 * cfg.temperature / cfg.student_softcap))
  return jnp.where(valid, dz / cfg.temperature, 0.0)


# ----------------------------------------------------------------------------- XLA chunks
def _chunk(h_s, w_s, h_t, w_t, j, *, cfg):
  """Both models' logits on vocab chunk j: (w_s_c [D_s, bv], z_s, z_t, valid [N, bv], start)."""
  vocab = w_s.shape[1]
  block_v = min(cfg.block_v, vocab)
  lo = j * block_v
  start = jnp.minimum(lo, vocab - block_v)  # clamp the last chunk instead of padding W
  w_s_c = lax.dynamic_slice_in_dim(w_s, start, block_v, axis=1)  # (D_s, bv)
  w_t_c = lax.dynamic_slice_in_dim(w_t, start, block_v, axis=1)  # (D_t, bv)
  raw_s = jnp.dot(h_s, w_s_c, preferred_element_type=jnp.float32)  # (N, bv)
  raw_t = jnp.dot(h_t, w_t_c, preferred_element_type=jnp.float32)  # (N, bv)
  cols = start + lax.broadcasted_iota(jnp.int32, raw_s.shape, 1)  # (N, bv)
  valid = cols >= lo  # columns below lo were covered by the previous chunk
  z_s = masked_logits(raw_s, valid, temperature=cfg.temperature, logit_softcap=cfg.student_softcap)
  z_t = masked_logits(raw_t, valid, temperature=cfg.temperature, logit_softcap=cfg.teacher_softcap)
  return w_s_c, z_s, z_t, valid, start


def _scan_chunks(body, init, vocab, block_v):
  """lax.scan of body over the chunks, chunk 0 peeled so the carry takes the inputs' shard_map
  varying-axes type (a constant init would not match the loop output inside shard_map)."""
  num_chunks = -(-vocab // min(block_v, vocab))
  carry, _ = body(init, 0)
  carry, _ = lax.scan(body, carry, jnp.arange(1, num_chunks))
  return carry


def chunked_forward(cfg, h_s, w_s, h_t, w_t):
  """(loss, argmax_s, argmax_t, (lse_s, lse_t, r_mean)): [N] f32, [N] int32 x 2, residuals [N] f32.

  r_mean = E_{p_s}[r] of the backward (L for beta = 1, KL(p_s || m) for 0 < beta < 1, unused for 0).
  """
  chunk = functools.partial(_chunk, h_s, w_s, h_t, w_t, cfg=cfg)
  vocab, n = w_s.shape[1], h_s.shape[0]

  def pass1(carry, j):
    side_s, side_t = carry
    _, z_s, z_t, valid, start = chunk(j)
    return (side_update(side_s, z_s, z_t, valid, start), side_update(side_t, z_t, z_s, valid, start)), None

  (m_s, l_s, a_s, argmax_s), (m_t, l_t, a_t, argmax_t) = _scan_chunks(
      pass1, (side_init(n), side_init(n)), vocab, cfg.block_v)
  lse_s, mean_st = side_finalize(m_s, l_s, a_s)  # (N, 1) each; mean_st = E_{p_s}[z_s - z_t]
  lse_t, mean_ts = side_finalize(m_t, l_t, a_t)  # (N, 1) each; mean_ts = E_{p_t}[z_t - z_s]
  argmax_s, argmax_t = argmax_s[:, 0], argmax_t[:, 0]
  if cfg.beta == 0.0:
    loss = mean_ts - lse_t + lse_s  # (N, 1) KL(p_t || p_s)
    return loss[:, 0], argmax_s, argmax_t, (lse_s[:, 0], lse_t[:, 0], jnp.zeros_like(loss[:, 0]))
  if cfg.beta == 1.0:
    loss = mean_st - lse_s + lse_t  # (N, 1) KL(p_s || p_t)
    return loss[:, 0], argmax_s, argmax_t, (lse_s[:, 0], lse_t[:, 0], loss[:, 0])

  def pass2(carry, j):
    kl_tm, kl_sm = carry
    _, z_s, z_t, valid, _ = chunk(j)
    p_s, logp_s, p_t, logp_t, log_m = mixture_terms(z_s, z_t, valid, lse_s, lse_t, cfg.beta)
    kl_tm = kl_tm + jnp.sum(p_t * (logp_t - log_m), axis=1, keepdims=True)  # (N, 1)
    kl_sm = kl_sm + jnp.sum(p_s * (logp_s - log_m), axis=1, keepdims=True)  # (N, 1)
    return (kl_tm, kl_sm), None

  zeros = jnp.zeros((n, 1), jnp.float32)
  kl_tm, kl_sm = _scan_chunks(pass2, (zeros, zeros), vocab, cfg.block_v)
  loss = cfg.beta * kl_tm + (1.0 - cfg.beta) * kl_sm  # (N, 1)
  return loss[:, 0], argmax_s, argmax_t, (lse_s[:, 0], lse_t[:, 0], kl_sm[:, 0])


def chunked_student_grads(cfg, h_s, w_s, h_t, w_t, lse_s, lse_t, r_mean, g):
  """(dh_s [N, D_s], dw_s [D_s, V]) in the input dtypes; lse_*, r_mean, g: [N] f32."""
  chunk = functools.partial(_chunk, h_s, w_s, h_t, w_t, cfg=cfg)
  rows = [x[:, None] for x in (lse_s, lse_t, r_mean, g)]  # each (N, 1)
  mm_dtype = jnp.result_type(h_s.dtype, w_s.dtype)
  block_v = min(cfg.block_v, w_s.shape[1])

  def body(carry, j):
    dh, dw = carry
    w_c, z_s, z_t, valid, start = chunk(j)
    dr = student_logit_grads(z_s, z_t, valid, *rows, cfg).astype(mm_dtype)  # (N, bv)
    dh = dh + jnp.dot(dr, w_c.T, preferred_element_type=jnp.float32)  # (N, D_s)
    dw_c = jnp.einsum("nd,nv->dv", h_s, dr, preferred_element_type=jnp.float32)  # (D_s, bv)
    # Re-seen columns of the clamped last chunk have dr = 0, so adding keeps their values.
    old = lax.dynamic_slice_in_dim(dw, start, block_v, axis=1).astype(jnp.float32)
    dw = lax.dynamic_update_slice_in_dim(dw, (old + dw_c).astype(dw.dtype), start, axis=1)
    return (dh, dw), None

  init = (jnp.zeros(h_s.shape, jnp.float32), jnp.zeros(w_s.shape, w_s.dtype))
  dh, dw = _scan_chunks(body, init, w_s.shape[1], cfg.block_v)
  return dh.astype(h_s.dtype), dw


# ----------------------------------------------------------------------------- custom_vjp
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _divergence_chunked(cfg, h_s, w_s, h_t, w_t):
  return chunked_forward(cfg, h_s, w_s, h_t, w_t)[:3]


def _divergence_chunked_fwd(cfg, h_s, w_s, h_t, w_t):
  loss, argmax_s, argmax_t, stats = chunked_forward(cfg, h_s, w_s, h_t, w_t)
  return (loss, argmax_s, argmax_t), (h_s, w_s, h_t, w_t, *stats)


def _divergence_chunked_bwd(cfg, res, cotangents):
  h_s, w_s, h_t, w_t, lse_s, lse_t, r_mean = res
  g = cotangents[0]  # the argmax outputs are integers: float0 cotangents, ignored
  dh_s, dw_s = chunked_student_grads(cfg, h_s, w_s, h_t, w_t, lse_s, lse_t, r_mean, g)
  return dh_s, dw_s, None, None  # the teacher is frozen


_divergence_chunked.defvjp(_divergence_chunked_fwd, _divergence_chunked_bwd)


def token_divergence_chunked(h_s, w_s, h_t, w_t, *, beta, temperature=1.0, student_softcap=None,
                             teacher_softcap=None, block_v=DEFAULT_BLOCK_V):
  """(loss [N] f32, argmax_s [N] int32, argmax_t [N] int32); loss differentiable in h_s and w_s only.

  h_s: [N, D_s], w_s: [D_s, V], h_t: [N, D_t], w_t: [D_t, V]. No shape checks: see api.py. The backward
  recomputes each chunk's logits of both models from the saved per-token stats (O(N * block_v) memory).
  """
  cfg = DivergenceConfig(beta=float(beta), temperature=float(temperature),
                         student_softcap=None if student_softcap is None else float(student_softcap),
                         teacher_softcap=None if teacher_softcap is None else float(teacher_softcap),
                         block_v=int(block_v))
  return _divergence_chunked(cfg, h_s, w_s, h_t, w_t)
