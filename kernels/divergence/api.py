"""Public teacher-student divergence op: shape checks and the one table of implementations.

    loss = token_divergence(h_s, w_s, h_t, w_t, beta=0.5)                 # (N,) generalised JSD per token
    loss, argmax_s, argmax_t = token_divergence(..., return_argmax=True)  # + both models' argmax tokens

impl='chunked' : XLA over vocab chunks (chunked.py), any backend; O(N * block_v) logits in the forward
                 and the backward, which recomputes them from per-token stats.
impl='naive'   : the reference's formula, full [N, V] f32 logits of both models (reference.py), at
                 default matmul precision (the oracle itself runs HIGHEST).
No Pallas kernel yet: one is owed (a fused tile holding both models' logits, as kernels/logprobs has for
one model) once a GPU / TPU can measure whether it beats the chunked path, whose dots already run on
the MXU / tensor cores and whose extra cost is re-reading h and both W per pass.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpost.kernels.divergence.chunked import DEFAULT_BLOCK_V, token_divergence_chunked
from jaxpost.kernels.divergence.reference import token_divergence_reference


def _naive(h_s, w_s, h_t, w_t, *, block_v, **kw):
  """The reference at default precision (HIGHEST would run f32 dots as several bf16 passes on TPU)."""
  del block_v
  return token_divergence_reference(h_s, w_s, h_t, w_t, return_argmax=True, precision=None, **kw)


def _chunked(h_s, w_s, h_t, w_t, *, block_v, **kw):
  """XLA over vocab chunks of block_v (chunked.py)."""
  return token_divergence_chunked(h_s, w_s, h_t, w_t, block_v=block_v or DEFAULT_BLOCK_V, **kw)


# The one table of divergence implementations: impl -> fn(h_s [N, D_s], w_s [D_s, V], h_t [N, D_t],
# w_t [D_t, V], *, beta, temperature, student_softcap, teacher_softcap, block_v) -> (loss [N] f32,
# argmax_s [N] int32, argmax_t [N] int32).
IMPLEMENTATIONS = {"chunked": _chunked, "naive": _naive}
IMPLS = tuple(IMPLEMENTATIONS)


def _check_args(h_s, w_s, h_t, w_t, *, beta, temperature, student_softcap, teacher_softcap, impl, block_v):
  if any(x.ndim != 2 for x in (h_s, w_s, h_t, w_t)):
    raise ValueError(f"expected h_s [N, D_s], w_s [D_s, V], h_t [N, D_t], w_t [D_t, V]; got "
                     f"{h_s.shape=}, {w_s.shape=}, {h_t.shape=}, {w_t.shape=}")
  if h_s.shape[1] != w_s.shape[0]:
    raise ValueError(f"student: h_s D={h_s.shape[1]} != w_s D={w_s.shape[0]} ({h_s.shape=}, {w_s.shape=})")
  if h_t.shape[1] != w_t.shape[0]:
    raise ValueError(f"teacher: h_t D={h_t.shape[1]} != w_t D={w_t.shape[0]} ({h_t.shape=}, {w_t.shape=})")
  if h_s.shape[0] != h_t.shape[0]:
    raise ValueError(f"student has N={h_s.shape[0]} tokens, teacher N={h_t.shape[0]} ({h_s.shape=}, {h_t.shape=})")
  if w_s.shape[1] != w_t.shape[1]:
    raise ValueError(f"student vocab V={w_s.shape[1]} != teacher vocab V={w_t.shape[1]} "
                     f"({w_s.shape=}, {w_t.shape=})")
  for name, x in (("h_s", h_s), ("w_s", w_s), ("h_t", h_t), ("w_t", w_t)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{name} must be floating point, got {x.dtype}")
  if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
    raise ValueError(f"beta must be a Python float in [0, 1], got {beta!r}")
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
    raise ValueError(f"temperature must be a positive Python float, got {temperature!r}")
  for name, cap in (("student_softcap", student_softcap), ("teacher_softcap", teacher_softcap)):
    if cap is not None and (not isinstance(cap, (int, float)) or cap <= 0):
      raise ValueError(f"{name} must be None or a positive Python float, got {cap!r}")
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if block_v is not None and (not isinstance(block_v, int) or block_v <= 0):
    raise ValueError(f"block_v must be None or a positive int, got {block_v!r}")


def token_divergence(
    h_s: jax.Array,
    w_s: jax.Array,
    h_t: jax.Array,
    w_t: jax.Array,
    *,
    beta: float,
    temperature: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    impl: str = "chunked",
    block_v: int | None = None,
    return_argmax: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Per-token generalised JSD between a student and a frozen teacher, without [N, V] logits.

  z = softcap(h @ W) / temperature per model, p = softmax(z);
  beta = 0: KL(p_t || p_s);  beta = 1: KL(p_s || p_t);
  else: beta KL(p_t || m) + (1 - beta) KL(p_s || m),  m = beta p_t + (1 - beta) p_s  (GKD; TRL's convention).

  Args:
    h_s: [N, D_s] student hidden states, f32 or bf16.
    w_s: [D_s, V] student unembedding.
    h_t: [N, D_t] teacher hidden states (D_t may differ from D_s).
    w_t: [D_t, V] teacher unembedding; same V as w_s.
    beta: Python float in [0, 1] (static: picks the formula).
    temperature: positive Python float shared by both models, divides the soft-capped logits.
    student_softcap, teacher_softcap: c of c tanh(x / c) for each model, or None.
    impl: 'chunked' or 'naive'.
    block_v: vocab columns per chunk (impl='chunked'); DEFAULT_BLOCK_V when None.
    return_argmax: also return both models' argmax tokens.
  Returns:
    loss [N] f32, differentiable in h_s and w_s (the teacher gets no gradient); with return_argmax also
    argmax_s, argmax_t [N] int32 (argmax of z; not differentiable).
  """
  _check_args(h_s, w_s, h_t, w_t, beta=beta, temperature=temperature, student_softcap=student_softcap,
              teacher_softcap=teacher_softcap, impl=impl, block_v=block_v)
  loss, argmax_s, argmax_t = IMPLEMENTATIONS[impl](
      h_s, w_s, h_t, w_t, beta=float(beta), temperature=float(temperature),
      student_softcap=None if student_softcap is None else float(student_softcap),
      teacher_softcap=None if teacher_softcap is None else float(teacher_softcap), block_v=block_v)
  return (loss, argmax_s, argmax_t) if return_argmax else loss
