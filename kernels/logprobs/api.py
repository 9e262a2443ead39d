"""Public token log-prob op: shape checks, backend dispatch and the Pallas custom_vjp.

    logps, entropy = token_logprobs(hidden, w_unembed, targets, return_entropy=True)

impl='pallas'  : Mosaic TPU kernels on TPU (tpu.py); on GPU the Triton forward kernel (gpu.py) with
                 the chunked XLA backward; on CPU only with interpret=True (runs the TPU kernels in
                 the Pallas interpreter).
impl='chunked' : XLA over vocab chunks (chunked.py), any backend.
impl='naive'   : the reference's formula, full [N, V] f32 logits (reference.py), at default matmul
                 precision like the kernels (the oracle itself runs HIGHEST).
IMPLEMENTATIONS below is the one table of these; jaxpost.logprobs adds 'auto' and meshes.
The backward passes recompute logits block by block from the saved lse; see chunked.py for the
derivation of dL/dz for logp, entropy and lse cotangents.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxpost.kernels.logprobs import gpu, tpu
from jaxpost.kernels.logprobs.chunked import (BlockSizes, chunked_grads, grad_coefficients,
                                              token_logprob_stats_chunked)
from jaxpost.kernels.logprobs.reference import token_logprob_stats_reference


@dataclasses.dataclass(frozen=True, kw_only=True)
class _KernelConfig:
  backend: str  # "tpu" or "gpu": which kernel family
  temperature: float
  logit_softcap: float | None
  block_sizes: BlockSizes
  interpret: bool


def _forward_stats(cfg: _KernelConfig, h, w, targets):
  kw = dict(temperature=cfg.temperature, logit_softcap=cfg.logit_softcap,
            block_sizes=cfg.block_sizes, interpret=cfg.interpret)
  if cfg.backend == "tpu":
    return tpu.tpu_forward_stats(h, w, targets, **kw)
  return gpu.gpu_forward_stats(h, w, targets, **kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _stats_pallas(cfg: _KernelConfig, h, w, targets):
  return _forward_stats(cfg, h, w, targets)


def _stats_pallas_fwd(cfg, h, w, targets):
  out = _forward_stats(cfg, h, w, targets)
  _, entropy, lse = out
  return out, (h, w, targets, entropy, lse)


def _stats_pallas_bwd(cfg, res, cotangents):
  h, w, targets, entropy, lse = res
  a, b = grad_coefficients(entropy, lse, *cotangents)
  g_logp = cotangents[0]
  kw = dict(temperature=cfg.temperature, logit_softcap=cfg.logit_softcap)
  if cfg.backend == "tpu":
    dh, dw = tpu.tpu_grads(h, w, targets, lse, a, b, g_logp, block_sizes=cfg.block_sizes,
                           interpret=cfg.interpret, **kw)
  else:  # GPU: XLA chunked backward, see gpu.py
    dh, dw = chunked_grads(h, w, targets, lse, a, b, g_logp,
                           block_v=BlockSizes.get_default("chunked").block_v, **kw)
  return dh, dw, None


_stats_pallas.defvjp(_stats_pallas_fwd, _stats_pallas_bwd)


def _pallas_backend(interpret: bool) -> str:
  backend = jax.default_backend()
  if backend in ("tpu", "gpu"):
    return backend
  if interpret:
    return "tpu"
  raise ValueError(f"impl='pallas' on backend {backend!r} needs interpret=True "
                   "(or use impl='chunked')")


def _naive(hidden, w_unembed, targets, *, temperature, logit_softcap, block_sizes, interpret):
  """The reference at default precision: HIGHEST would run f32 dots (and the backward's f32
  cotangent dots, even for bf16 inputs) as several bf16 passes on TPU and without TF32 on GPU."""
  del block_sizes, interpret
  return token_logprob_stats_reference(hidden, w_unembed, targets, temperature=temperature,
                                       logit_softcap=logit_softcap, precision=None)


def _chunked(hidden, w_unembed, targets, *, temperature, logit_softcap, block_sizes, interpret):
  """XLA over vocab chunks of block_v (chunked.py)."""
  del interpret
  block_v = (block_sizes or BlockSizes.get_default("chunked")).block_v
  return token_logprob_stats_chunked(hidden, w_unembed, targets, temperature=temperature,
                                     logit_softcap=logit_softcap, block_v=block_v)


def _pallas(hidden, w_unembed, targets, *, temperature, logit_softcap, block_sizes, interpret):
  """The Pallas kernels of the backend (tpu.py / gpu.py) under one custom_vjp."""
  backend = _pallas_backend(interpret)
  # Kernels take one matmul dtype; mixed inputs are promoted (this copies the lower-precision one).
  dtype = jnp.result_type(hidden.dtype, w_unembed.dtype)
  cfg = _KernelConfig(backend=backend, temperature=temperature, logit_softcap=logit_softcap,
                      block_sizes=block_sizes or BlockSizes.get_default("pallas", backend),
                      interpret=interpret)
  return _stats_pallas(cfg, hidden.astype(dtype), w_unembed.astype(dtype), targets)


# The one table of log-prob implementations: impl -> fn(hidden [N, D], w_unembed [D, V],
# targets [N] int32, *, temperature, logit_softcap, block_sizes, interpret) -> (logps, entropy,
# lse) [N] f32 each.
IMPLEMENTATIONS = {"pallas": _pallas, "chunked": _chunked, "naive": _naive}
IMPLS = tuple(IMPLEMENTATIONS)


def token_logprob_stats(
    hidden: jax.Array,
    w_unembed: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
    impl: str = "pallas",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(logps, entropy, lse), each [N] f32; differentiable in hidden and w_unembed for all three.

  The lse output exists for vocab-parallel sharding (sharded.py), which combines per-shard lse.
  """
  if hidden.ndim != 2 or w_unembed.ndim != 2 or targets.shape != hidden.shape[:1]:
    raise ValueError(f"expected hidden [N, D], w_unembed [D, V], targets [N]; got "
                     f"{hidden.shape=}, {w_unembed.shape=}, {targets.shape=}")
  if hidden.shape[1] != w_unembed.shape[0]:
    raise ValueError(f"hidden D={hidden.shape[1]} != w_unembed D={w_unembed.shape[0]}")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be integer token ids, got {targets.dtype}")
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if not isinstance(temperature, (int, float)) or temperature <= 0:
    raise ValueError(f"temperature must be a positive Python float, got {temperature!r}")
  temperature = float(temperature)
  logit_softcap = None if logit_softcap is None else float(logit_softcap)
  return IMPLEMENTATIONS[impl](hidden, w_unembed, targets.astype(jnp.int32),
                               temperature=temperature, logit_softcap=logit_softcap,
                               block_sizes=block_sizes, interpret=bool(interpret))


def token_logprobs(
    hidden: jax.Array,
    w_unembed: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    return_entropy: bool = False,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
    impl: str = "pallas",
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """log p(targets | hidden) without materialising [N, V] logits.

  z = softcap(hidden @ w_unembed) / temperature, softcap(x) = c tanh(x / c);
  logps = z[y] - logsumexp(z);  entropy = logsumexp(z) - sum softmax(z) z.

  Args:
    hidden: [N, D] f32 or bf16.
    w_unembed: [D, V].
    targets: [N] int token ids (not differentiable).
    temperature: positive Python float, divides the soft-capped logits (HF order).
    logit_softcap: c, or None for no soft-cap.
    return_entropy: also return the entropy of softmax(z).
    block_sizes: tile sizes; BlockSizes.get_default(impl, backend) when None.
    interpret: run the Pallas kernels in the interpreter (CPU tests).
    impl: 'pallas', 'chunked' or 'naive'.
  Returns:
    logps [N] f32, or (logps, entropy) [N] f32 each when return_entropy.
  """
  logps, entropy, _ = token_logprob_stats(
      hidden, w_unembed, targets, temperature=temperature, logit_softcap=logit_softcap,
      block_sizes=block_sizes, interpret=interpret, impl=impl)
  return (logps, entropy) if return_entropy else logps
