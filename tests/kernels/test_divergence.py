"""Chunked teacher-student divergence vs the full-logits reference, hand-computed values and a direct f64 KL.

Tolerances and why (all f32): chunked and reference differ by summation order (online log-sum-exp over
vocab blocks vs one logsumexp) and, for beta in {0, 1}, by the one-pass form E_p[z_x - z_y] - lse_x + lse_y,
in which lse ~ 10 cancels to a KL ~ 1-10: ~1e-6 absolute. Values and gradients are checked to 1e-5
relative to the largest reference entry.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from jaxpost.kernels.divergence import (token_divergence, token_divergence_reference,
                                        token_divergence_sharded)

TOL = 1e-5
# Cheaper XLA:CPU codegen for the programs compiled here (compile time dominates). Numerics unchanged.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# name: (N, D_s, D_t, V, block_v, kwargs). V = 50 is 3 chunks of 16 plus one clamped to start 34 (V = 37: 2
# plus one at 21); the student's soft-cap runs through the backward, the teacher's only through the forward.
CASES = {
    "forward_kl": (16, 16, 24, 50, 16, dict(beta=0.0, temperature=0.7, student_softcap=4.0)),
    "jsd": (16, 16, 24, 50, 16, dict(beta=0.5, temperature=0.7, student_softcap=4.0)),
    "reverse_kl": (16, 16, 24, 50, 16, dict(beta=1.0, temperature=0.7, student_softcap=4.0)),
    "jsd_teacher_cap": (12, 24, 16, 37, 16, dict(beta=0.3, temperature=1.3, teacher_softcap=5.0)),
}


def _inputs(n, d_s, d_t, v, seed=0):
  # Host values (seeded numpy): jax.random compiles for every new shape on CPU. Logit std ~3: softmax
  # neither uniform nor one-hot, and a soft-cap of 4-5 is active.
  rng = np.random.default_rng(seed)
  h_s, h_t = (jnp.asarray(rng.standard_normal((n, d)), jnp.float32) for d in (d_s, d_t))
  w_s, w_t = (jnp.asarray(3.0 / np.sqrt(d) * rng.standard_normal((d, v)), jnp.float32) for d in (d_s, d_t))
  return h_s, w_s, h_t, w_t


def _run(fn, *inputs):
  """((loss, argmax_s, argmax_t), grads of sum(ramp * loss) w.r.t. (h_s, w_s, h_t, w_t)): one compile."""
  def objective(*xs):
    loss, argmax_s, argmax_t = fn(*xs)
    ramp = jnp.linspace(1.0, 2.0, loss.shape[0])  # row-varying cotangents; [1.0] for a single row
    return jnp.sum(ramp * loss), (loss, argmax_s, argmax_t)
  grads, outs = jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3), has_aux=True)).lower(*inputs).compile(
      compiler_options=FAST_COMPILE)(*inputs)
  return jax.tree.map(np.asarray, (outs, grads))


@functools.lru_cache(maxsize=None)
def _case(name):
  """(inputs, chunked (outs, grads), reference (outs, grads)) of CASES[name], computed once per session."""
  n, d_s, d_t, v, block_v, kw = CASES[name]
  inputs = _inputs(n, d_s, d_t, v)
  chunked = _run(functools.partial(token_divergence, impl="chunked", block_v=block_v, return_argmax=True, **kw),
                 *inputs)
  reference = _run(functools.partial(token_divergence_reference, return_argmax=True, **kw), *inputs)
  return inputs, chunked, reference


def _assert_close(x, ref, what, tol=TOL):
  err = float(np.max(np.abs(np.asarray(x, np.float64) - ref)) / max(float(np.max(np.abs(ref))), 1e-30))
  assert err <= tol, f"{what}: max |diff| / max |ref| = {err:.3g} > {tol:.3g}"


def test_hand_computed_values_and_grads():
  # D = 1, h = 1, T = 1, V = 2: z_s = W_s = [0, 0] so p_s = [1/2, 1/2]; z_t = W_t = log [1, 3] so
  # p_t = [1/4, 3/4]; block_v = 1 makes each column its own chunk.
  #   beta = 0: KL(p_t || p_s) = 1/4 log(1/2) + 3/4 log(3/2) = 3/4 log 3 - log 2            = 0.130812
  #             dL/dz_s = p_s - p_t = [1/4, -1/4]
  #   beta = 1: KL(p_s || p_t) = 1/2 log 2 + 1/2 log(2/3) = log 2 - 1/2 log 3               = 0.143841
  #             dL/dz_s = p_s (log p_s - log p_t - L) = 1/2 [log 2 - L, log(2/3) - L] = [1, -1] log(3) / 4
  #   beta = 1/2: m = [3/8, 5/8]; KL(p_t || m) = 1/4 log(2/3) + 3/4 log(6/5) = 0.035374,
  #             KL(p_s || m) = 1/2 log(4/3) + 1/2 log(4/5) = 1/2 log(16/15) = 0.032269, L = their mean;
  #             r = log p_s - log m = [log(4/3), log(4/5)], dL/dz_s = 1/2 p_s (r - 1/2 log(16/15))
  #             = 1/8 [2 log(4/3) - log(16/15), 2 log(4/5) - log(16/15)] = [1, -1] log(5/3) / 8
  # With h = 1, dL/dW_s = dL/dz_s.
  h = jnp.ones((1, 1), jnp.float32)
  w_s = jnp.zeros((1, 2), jnp.float32)
  w_t = jnp.log(jnp.array([[1.0, 3.0]], jnp.float32))
  expected = {
      0.0: (0.75 * np.log(3) - np.log(2), 0.25),
      1.0: (np.log(2) - 0.5 * np.log(3), np.log(3) / 4),
      0.5: (0.5 * (0.25 * np.log(2 / 3) + 0.75 * np.log(6 / 5)) + 0.25 * np.log(16 / 15), np.log(5 / 3) / 8),
  }
  for beta, (loss, dz0) in expected.items():
    fn = functools.partial(token_divergence, beta=beta, block_v=1, return_argmax=True)
    (value, argmax_s, argmax_t), (_, dw_s, _, dw_t) = _run(fn, h, w_s, h, w_t)
    np.testing.assert_allclose(value, [loss], rtol=1e-6, err_msg=f"beta={beta}")
    np.testing.assert_allclose(dw_s, [[dz0, -dz0]], rtol=1e-5, atol=1e-7, err_msg=f"beta={beta}")
    np.testing.assert_array_equal(dw_t, 0.0)  # the teacher is frozen
    assert (argmax_s[0], argmax_t[0]) == (0, 1)  # the student's tie goes to the first column


@pytest.mark.parametrize("name", CASES)
def test_chunked_matches_reference(name):
  """Values, dh_s and dW_s; zero teacher gradients; both argmax outputs equal the reference logits' argmax."""
  _, ((loss, argmax_s, argmax_t), grads), ((ref_loss, ref_argmax_s, ref_argmax_t), ref_grads) = _case(name)
  assert loss.shape == (CASES[name][0],) and loss.dtype == np.float32 and argmax_s.dtype == np.int32
  _assert_close(loss, ref_loss, "loss")
  for what, g, ref_g in zip(("dh_s", "dw_s"), grads[:2], ref_grads[:2]):
    _assert_close(g, ref_g, what)
  for what, g in zip(("dh_t", "dw_t"), grads[2:]):
    np.testing.assert_array_equal(g, 0.0, err_msg=what)
  np.testing.assert_array_equal(argmax_s, ref_argmax_s)
  np.testing.assert_array_equal(argmax_t, ref_argmax_t)
  assert len(set(argmax_s.tolist())) > 1 and not np.array_equal(argmax_s, argmax_t)  # a non-trivial check


@pytest.mark.parametrize("name", CASES)
def test_chunked_equals_direct_divergence_in_f64(name):
  """beta = 0 / 1 are KL(p_t || p_s) / KL(p_s || p_t) written out in numpy f64; 0 < beta < 1 is TRL's
  generalized_jsd_loss (mixture log-probs by logsumexp of the log-probs shifted by log beta, log(1 - beta))."""
  inputs, ((loss, _, _), _), _ = _case(name)
  _, _, _, _, _, kw = CASES[name]
  h_s, w_s, h_t, w_t = (np.asarray(x, np.float64) for x in inputs)

  def log_softmax(raw, cap):
    z = (raw if cap is None else cap * np.tanh(raw / cap)) / kw["temperature"]  # (N, V)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), -1, keepdims=True))

  logp_s = log_softmax(h_s @ w_s, kw.get("student_softcap"))
  logp_t = log_softmax(h_t @ w_t, kw.get("teacher_softcap"))
  kl = lambda logp, logq: np.sum(np.exp(logp) * (logp - logq), axis=-1)
  beta = kw["beta"]
  if beta == 0.0:
    expected = kl(logp_t, logp_s)
  elif beta == 1.0:
    expected = kl(logp_s, logp_t)
  else:
    log_m = np.logaddexp(logp_s + np.log(1 - beta), logp_t + np.log(beta))
    expected = beta * kl(logp_t, log_m) + (1 - beta) * kl(logp_s, log_m)
  assert np.all(expected > 0.1)  # distinct models: a real divergence, not ~0
  _assert_close(loss, expected, "loss")


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_identical_models_give_zero_loss_and_grad(beta):
  h, w, _, _ = _inputs(8, 16, 16, 37, seed=1)
  fn = functools.partial(token_divergence, beta=beta, temperature=0.7, student_softcap=4.0,
                         teacher_softcap=4.0, block_v=16, return_argmax=True)
  (loss, argmax_s, argmax_t), grads = _run(fn, h, w, h, w)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)
  for what, g in zip(("dh_s", "dw_s", "dh_t", "dw_t"), grads):
    np.testing.assert_allclose(g, 0.0, atol=1e-6, err_msg=what)
  np.testing.assert_array_equal(argmax_s, argmax_t)


def test_naive_is_reference_at_default_precision():
  inputs = _inputs(8, 16, 24, 37)
  kw = dict(beta=0.5, temperature=0.7, student_softcap=4.0)
  fns = (functools.partial(token_divergence, impl="naive", **kw),
         functools.partial(token_divergence_reference, precision=None, **kw))
  naive, reference = (jax.jit(fn).lower(*inputs).compile(compiler_options=FAST_COMPILE)(*inputs) for fn in fns)
  np.testing.assert_array_equal(naive, reference)


def _fwd_bwd_temp_bytes(impl, n, d, v, block_v):
  """Compiled temp bytes of value_and_grad (h_s, w_s) of sum(loss): memory analysis only, nothing runs."""
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  loss = lambda *xs: jnp.sum(token_divergence(*xs, beta=0.5, impl=impl, block_v=block_v))
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  compiled = fn.lower(spec(n, d), spec(d, v), spec(n, d), spec(d, v)).compile(compiler_options=FAST_COMPILE)
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_temp_memory_does_not_grow_with_vocab_times_tokens():
  # beta = 0.5 (two forward passes) at N = 512, D = 16: one [N, V] f32 buffer is 4 MiB at V = 2048 and
  # 16 MiB at V = 8192. The naive path holds several (logits, probs, log m of both models); the chunked
  # one only [N, block_v] tiles and per-token stats, plus dW_s [D, V] (256 KiB more at the larger V).
  n, d, v1, v2, block_v = 512, 16, 2048, 8192, 256
  one_buffer_growth = n * (v2 - v1) * 4
  naive = [_fwd_bwd_temp_bytes("naive", n, d, v, block_v) for v in (v1, v2)]
  chunked = [_fwd_bwd_temp_bytes("chunked", n, d, v, block_v) for v in (v1, v2)]
  assert naive[1] - naive[0] >= one_buffer_growth, (naive, one_buffer_growth)
  assert chunked[1] - chunked[0] < one_buffer_growth / 4, (chunked, one_buffer_growth)
  assert chunked[1] < naive[1] / 4, (chunked, naive)


def test_sharded_matches_one_device():
  """8 devices as (data 2, fsdp 2, tensor 2): tokens over (data, fsdp), both W replicated."""
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Explicit,) * 3)
  n, d_s, d_t, v, block_v, kw = CASES["jsd"]
  inputs, ((loss, argmax_s, argmax_t), grads), _ = _case("jsd")
  sharded = functools.partial(token_divergence_sharded, mesh=mesh, block_v=block_v, return_argmax=True, **kw)
  (sh_loss, sh_argmax_s, sh_argmax_t), sh_grads = _run(sharded, *inputs)
  _assert_close(sh_loss, loss, "loss")
  for what, g, ref_g in zip(("dh_s", "dw_s"), sh_grads[:2], grads[:2]):
    _assert_close(g, ref_g, what)
  for what, g in zip(("dh_t", "dw_t"), sh_grads[2:]):
    np.testing.assert_array_equal(g, 0.0, err_msg=what)
  np.testing.assert_array_equal(sh_argmax_s, argmax_s)
  np.testing.assert_array_equal(sh_argmax_t, argmax_t)


def test_shape_errors_are_loud():
  h_s, w_s, h_t, w_t = _inputs(8, 16, 24, 37)
  with pytest.raises(ValueError, match=r"student vocab V=36 != teacher vocab V=37"):
    token_divergence(h_s, w_s[:, :36], h_t, w_t, beta=0.0)
  with pytest.raises(ValueError, match=r"teacher: h_t D=24 != w_t D=16"):
    token_divergence(h_s, w_s, h_t, w_t[:16], beta=0.0)
  with pytest.raises(ValueError, match=r"student has N=8 tokens, teacher N=4"):
    token_divergence(h_s, w_s, h_t[:4], w_t, beta=0.0)
  with pytest.raises(ValueError, match=r"expected h_s \[N, D_s\]"):
    token_divergence(h_s[0], w_s, h_t, w_t, beta=0.0)
  with pytest.raises(ValueError, match="beta"):
    token_divergence(h_s, w_s, h_t, w_t, beta=1.5)
  with pytest.raises(ValueError, match="impl"):
    token_divergence(h_s, w_s, h_t, w_t, beta=0.0, impl="pallas")
