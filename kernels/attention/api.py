"""Public flash attention: shape checks, padding, backend dispatch and the custom_vjp.

Deviations from FlashAttention-2 (Dao, 2023): delta = rowsum(dO * O) is computed by XLA outside the
kernels; dQ and dK/dV are two kernels (no atomics, deterministic); fully masked rows give zeros.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost.kernels.attention import gpu, reference, tpu


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes. Backward sizes left None fall back to (block_q, block_kv).

  Blocks are capped at the next power of two of the sequence length (>= 16), and sequences are
  zero-padded (and masked) up to a multiple of every block. Mosaic TPU needs block_kv a multiple of
  128 (or the whole padded length); Triton needs powers of two. num_warps / num_stages are Triton
  only (None: 4 warps for D <= 64 else 8; 2 stages).
  """
  block_q: int = 128
  block_kv: int = 128
  block_q_dq: int | None = None
  block_kv_dq: int | None = None
  block_q_dkv: int | None = None
  block_kv_dkv: int | None = None
  num_warps: int | None = None
  num_stages: int | None = None

  @classmethod
  def get_default(cls, backend: str | None = None) -> "BlockSizes":
    if backend == "gpu":  # fits H100 shared memory at D = 128 for fwd and both bwd kernels
      return cls(block_q=128, block_kv=64, block_q_dq=64, block_kv_dq=64, block_q_dkv=64,
                 block_kv_dkv=64)
    return cls()

  def resolved(self, T: int, S: int) -> dict:
    """Effective block sizes for query length T and key length S."""
    cap = lambda b, L: min(b, max(16, _next_pow2(L)))
    bq, bkv = self.block_q, self.block_kv
    return dict(
        block_q=cap(bq, T), block_kv=cap(bkv, S),
        block_q_dq=cap(self.block_q_dq or bq, T), block_kv_dq=cap(self.block_kv_dq or bkv, S),
        block_q_dkv=cap(self.block_q_dkv or bq, T), block_kv_dkv=cap(self.block_kv_dkv or bkv, S))


def _next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static (hashable) settings shared by the kernels."""
  backend: str
  interpret: bool
  causal: bool
  sliding_window: int | None
  logit_softcap: float | None
  sm_scale: float
  block_sizes: BlockSizes
  blocks: tuple  # resolved (name, size) pairs
  B: int
  T: int
  S: int
  Tp: int
  Sp: int

  @property
  def offset(self) -> int:  # query i sits at key position S - T + i
    return self.S - self.T

  @property
  def kv_len(self) -> int | None:  # keys at positions >= S are padding
    return self.S if self.Sp > self.S else None


def _pick_backend(backend, interpret):
  if backend is not None:
    if backend not in ("tpu", "gpu"):
      raise ValueError(f"backend must be None, 'tpu' or 'gpu', got {backend!r}.")
    return backend
  platform = jax.default_backend()
  if platform == "tpu":
    return "tpu"
  if platform in ("gpu", "cuda", "rocm"):
    return "gpu"
  if interpret:
    return "tpu"
  raise ValueError(f"flash_attention has no compiled kernel for platform {platform!r}: pass "
                   "interpret=True (slow, for tests) or use attention_reference.")


def _validate(q, k, v, q_seg, kv_seg, causal, sliding_window, logit_softcap):
  if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
    raise ValueError(f"expected q [B, T, Nq, D] and k, v [B, S, Nkv, D]; got q {q.shape}, "
                     f"k {k.shape}, v {v.shape}.")
  B, T, Nq, D = q.shape
  if k.shape[0] != B or k.shape[3] != D or Nq % k.shape[2]:
    raise ValueError(f"k/v {k.shape} do not match q {q.shape}: need equal B and D and Nq a "
                     "multiple of Nkv.")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}.")
  if q_seg is None and kv_seg is not None:
    raise ValueError("kv_segment_ids given without q_segment_ids.")
  if q_seg is not None:
    S = k.shape[1]
    if kv_seg is None and T != S:
      raise ValueError(f"q_segment_ids alone needs T == S (got T={T}, S={S}); pass kv_segment_ids.")
    kv_seg_shape = (B, S) if kv_seg is None else kv_seg.shape
    if q_seg.shape != (B, T) or kv_seg_shape != (B, S):
      raise ValueError(f"segment ids must be [B, T] = {(B, T)} and [B, S] = {(B, S)}; got "
                       f"{q_seg.shape} and {kv_seg_shape}.")
  if sliding_window is not None and (not causal or sliding_window < 1):
    raise ValueError(f"sliding_window={sliding_window} needs causal=True and W >= 1 (query at "
                     "position p sees keys p-W+1..p).")
  if logit_softcap is not None and logit_softcap <= 0:
    raise ValueError(f"logit_softcap must be > 0, got {logit_softcap}.")


def flash_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, causal=True,
                    sliding_window=None, logit_softcap=None, sm_scale=None, block_sizes=None,
                    interpret=False, backend=None):
  """Memory-efficient attention (FlashAttention-2) as Pallas kernels, with a custom VJP.

  out[b, t, h] = sum_s softmax_s(logits) v[b, s, h // G],  G = Nq // Nkv (GQA: K/V are not repeated),
  logits = c * tanh(sm_scale * q.k / c) with soft-cap c (plain sm_scale * q.k without), masked by:
    * causal: query i of T sits at position S - T + i, i.e. queries are aligned to the END of the
      keys (T < S: the last T positions of a KV cache), and sees keys at positions <= its own.
    * sliding_window=W (needs causal): a query at position p sees keys p-W+1..p (W keys incl. itself).
    * q_segment_ids / kv_segment_ids: tokens attend only within an equal segment id (0 is an
      ordinary id). kv_segment_ids defaults to q_segment_ids when T == S (packed self-attention).
  Rows that see no key output zeros (and get zero gradients), never NaN.

  Args:
    q: `[B, T, Nq, D]`; k, v: `[B, S, Nkv, D]`, same dtype.
    q_segment_ids: int32 `[B, T]`; kv_segment_ids: int32 `[B, S]`.
    sm_scale: defaults to 1 / sqrt(D).
    block_sizes: `BlockSizes`, default `BlockSizes.get_default(backend)`.
    interpret: run the kernels in the Pallas interpreter (needed on CPU).
    backend: 'tpu' (Mosaic TPU) or 'gpu' (Pallas Triton); None picks from `jax.default_backend()`,
      and on CPU with interpret=True runs the TPU kernels.
  Returns:
    `[B, T, Nq, D]` in q's dtype. The forward saves the output and the f32 log-sum-exp; the backward
    runs a dQ kernel and a dK/dV kernel.
  """
  _validate(q, k, v, q_segment_ids, kv_segment_ids, causal, sliding_window, logit_softcap)
  backend = _pick_backend(backend, interpret)
  B, T, Nq, D = q.shape
  S = k.shape[1]
  block_sizes = block_sizes or BlockSizes.get_default(backend)
  blocks = block_sizes.resolved(T, S)
  bad = {n: b for n, b in blocks.items() if b <= 0 or (backend == "gpu" and b & (b - 1))}
  if bad:
    raise ValueError(f"block sizes {bad} must be positive{' powers of two' if backend == 'gpu' else ''}.")
  Tp = _round_up(T, math.lcm(*(b for n, b in blocks.items() if n.startswith("block_q"))))
  Sp = _round_up(S, math.lcm(*(b for n, b in blocks.items() if n.startswith("block_kv"))))
  if backend == "tpu" and not interpret:
    for n, b in blocks.items():
      L = Tp if n.startswith("block_q") else Sp
      if (n.startswith("block_kv") and b % 128 and b != L) or b % 8:
        raise ValueError(f"Mosaic TPU cannot tile {n}={b} for q {q.shape}, k {k.shape}: block_kv "
                         "must be a multiple of 128 (or the padded length) and block_q of 8.")
  if q_segment_ids is not None:
    q_segment_ids = q_segment_ids.astype(jnp.int32)
    kv_segment_ids = q_segment_ids if kv_segment_ids is None else kv_segment_ids.astype(jnp.int32)
  cfg = _Config(backend=backend, interpret=bool(interpret), causal=bool(causal),
                sliding_window=None if sliding_window is None else int(sliding_window),
                logit_softcap=None if logit_softcap is None else float(logit_softcap),
                sm_scale=float(1.0 / math.sqrt(D) if sm_scale is None else sm_scale),
                block_sizes=block_sizes, blocks=tuple(sorted(blocks.items())), B=B, T=T, S=S, Tp=Tp, Sp=Sp)
  return _flash(q, k, v, q_segment_ids, kv_segment_ids, cfg)


def _round_up(x, m):
  return -(-x // m) * m


def _pad(x, axis, length, mode="constant"):
  if x is None or x.shape[axis] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths, mode=mode)


def _plan(q_seg, kv_seg, cfg, block_q, block_kv):
  return reference.block_plan(q_seg, kv_seg, batch=cfg.B, T=cfg.T, S=cfg.S,
                              Tp=cfg.Tp, Sp=cfg.Sp, block_q=block_q, block_kv=block_kv,
                              causal=cfg.causal, sliding_window=cfg.sliding_window)


def _kernels(cfg):
  return tpu if cfg.backend == "tpu" else gpu


def _padded_inputs(q, k, v, q_seg, kv_seg, cfg):
  q, k, v = _pad(q, 1, cfg.Tp), _pad(k, 1, cfg.Sp), _pad(v, 1, cfg.Sp)
  # Padded query rows copy the last segment id so block id ranges stay tight; padded keys are
  # masked by position (kv_len) anyway.
  return q, k, v, _pad(q_seg, 1, cfg.Tp, "edge"), _pad(kv_seg, 1, cfg.Sp, "edge")


def _forward(q, k, v, q_seg, kv_seg, cfg):
  b = dict(cfg.blocks)
  qp, kp, vp, q_seg_p, kv_seg_p = _padded_inputs(q, k, v, q_seg, kv_seg, cfg)
  plan = _plan(q_seg_p, kv_seg_p, cfg, b["block_q"], b["block_kv"])
  out, lse = _kernels(cfg).forward(qp, kp, vp, q_seg_p, kv_seg_p, plan, cfg, block_q=b["block_q"],
                                   block_kv=b["block_kv"])  # (B, Tp, Nq, D), (B, Nq, Tp)
  return out[:, :cfg.T], lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_seg, kv_seg, cfg):
  return _forward(q, k, v, q_seg, kv_seg, cfg)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, cfg):
  out, lse = _forward(q, k, v, q_seg, kv_seg, cfg)
  return out, (q, k, v, q_seg, kv_seg, out, lse)


def _flash_bwd(cfg, residuals, do):
  q, k, v, q_seg, kv_seg, out, lse = residuals
  b = dict(cfg.blocks)
  delta = jnp.einsum("btnd,btnd->bnt", out.astype(jnp.float32), do.astype(jnp.float32))  # (B, Nq, T)
  qp, kp, vp, q_seg_p, kv_seg_p = _padded_inputs(q, k, v, q_seg, kv_seg, cfg)
  dop = _pad(do.astype(q.dtype), 1, cfg.Tp)  # zero cotangent on padded rows: they add nothing
  delta = _pad(delta, 2, cfg.Tp)
  plan_dq = _plan(q_seg_p, kv_seg_p, cfg, b["block_q_dq"], b["block_kv_dq"])
  plan_dkv = _plan(q_seg_p, kv_seg_p, cfg, b["block_q_dkv"], b["block_kv_dkv"])
  dq, dk, dv = _kernels(cfg).backward(
      qp, kp, vp, q_seg_p, kv_seg_p, dop, lse, delta, plan_dq, plan_dkv, cfg,
      block_q_dq=b["block_q_dq"], block_kv_dq=b["block_kv_dq"], block_q_dkv=b["block_q_dkv"],
      block_kv_dkv=b["block_kv_dkv"])
  seg_ct = lambda s: None if s is None else np.zeros(s.shape, jax.dtypes.float0)
  return dq[:, :cfg.T], dk[:, :cfg.S], dv[:, :cfg.S], seg_ct(q_seg), seg_ct(kv_seg)


_flash.defvjp(_flash_fwd, _flash_bwd)
