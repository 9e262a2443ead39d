"""Flash attention kernels vs the jnp oracle, in Pallas interpret mode on CPU.

Both kernel families run here: backend='tpu' (Mosaic TPU kernels) and backend='gpu' (Pallas Triton
kernels), each through the generic Pallas interpreter.

Tolerances: f32 inputs differ from the oracle only by summation order (blockwise online softmax vs
one softmax; the interpreter's CPU dots are full f32), so 1e-4 relative to the largest value. bf16
inputs: the kernel rounds p to bf16 before p @ v and dS before dS @ k (as FlashAttention does) and
outputs bf16, i.e. a few bf16 ulps (2^-8 = 0.4%) of error per element; 3e-2 relative to the largest
value.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.kernels.attention import BlockSizes, attention_mask, attention_reference, flash_attention
from jaxpost.kernels.attention.reference import block_plan

TOL = {jnp.float32: 1e-4, jnp.bfloat16: 3e-2}
# Compile time of the interpreted kernels dominates (run time is ~50 ms); cheaper XLA:CPU codegen
# halves it. Test-only: numerics are unchanged.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _inputs(B, T, S, Nq, Nkv, D, dtype, seed=0):
  """Standard-normal q, k, v, dout as host values (seeded numpy): jax.random.normal compiles for seconds for
  every new shape on CPU."""
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(dtype)
               for shape in ((B, T, Nq, D), (B, S, Nkv, D), (B, S, Nkv, D), (B, T, Nq, D)))


def _out_and_grads(fn, q, k, v, do):
  """(out, (dq, dk, dv)) from one jitted forward + VJP."""
  def f(q, k, v):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(do)
  return jax.jit(f).lower(q, k, v).compile(compiler_options=FAST_COMPILE)(q, k, v)


def _assert_close(actual, expected, tol, what):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
  err = np.max(np.abs(actual - expected)) / (np.max(np.abs(expected)) + 1e-6)
  assert err <= tol, f"{what}: max error {err:.2e} (relative to max |expected|) > {tol}"


def _segments(lengths_per_row):
  """[[3, 5], [8]] -> [[0, 0, 0, 1, 1, 1, 1, 1], [0] * 8] as int32 segment ids."""
  return jnp.array([np.repeat(np.arange(len(r)), r) for r in lengths_per_row], jnp.int32)


# name: (B, T, S, Nq, Nkv, D, dtype, block_sizes, kwargs)
CASES = {
    "causal_mha_b64": (2, 128, 128, 2, 2, 32, jnp.float32, BlockSizes(64, 64), {}),
    "full_gqa2_T_ne_S_b128": (1, 128, 256, 4, 2, 64, jnp.float32, BlockSizes(128, 128),
                              dict(causal=False)),
    "causal_gqa4_T_lt_S_mixed": (1, 128, 256, 4, 1, 32, jnp.float32,
                                 BlockSizes(32, 64, block_q_dkv=64, block_kv_dkv=32), {}),
    "segments_gqa2": (2, 128, 128, 4, 2, 32, jnp.float32, BlockSizes(32, 32),
                      dict(q_segment_ids=_segments([[40, 50, 38], [10, 100, 18]]))),
    "window_softcap": (1, 256, 256, 2, 1, 32, jnp.float32, BlockSizes(64, 64),
                       dict(sliding_window=50, logit_softcap=3.0, sm_scale=0.5)),
    "padded_odd_shapes": (1, 100, 150, 2, 1, 48, jnp.float32, BlockSizes(64, 64),
                          dict(q_segment_ids=_segments([[60, 40]]),
                               kv_segment_ids=_segments([[110, 40]]))),
    "bf16_causal_gqa2": (2, 128, 128, 4, 2, 64, jnp.bfloat16, BlockSizes(64, 64), {}),
}


# Every case runs the TPU kernels; the GPU (Triton) kernels skip the two plainest cases to save
# compile time (their masks are covered by the harder cases).
BACKEND_CASES = [(c, "tpu") for c in CASES] + [
    (c, "gpu") for c in CASES if c not in ("causal_mha_b64", "full_gqa2_T_ne_S_b128")]


@pytest.mark.parametrize("case,backend", BACKEND_CASES)
def test_forward_and_grad_match_reference(case, backend):
  B, T, S, Nq, Nkv, D, dtype, blocks, kwargs = CASES[case]
  q, k, v, do = _inputs(B, T, S, Nq, Nkv, D, dtype)
  out, grads = _out_and_grads(
      lambda q, k, v: flash_attention(q, k, v, block_sizes=blocks, interpret=True, backend=backend,
                                      **kwargs), q, k, v, do)
  ref_out, ref_grads = _out_and_grads(lambda q, k, v: attention_reference(q, k, v, **kwargs),
                                      q, k, v, do)
  assert out.shape == (B, T, Nq, D) and out.dtype == dtype
  _assert_close(out, ref_out, TOL[dtype], "out")
  for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
    assert g.shape == rg.shape and g.dtype == dtype
    _assert_close(g, rg, TOL[dtype], name)


def test_mask_semantics_by_hand():
  # T=3 queries over S=5 keys: queries sit at positions 2, 3, 4 (aligned to the end of the keys).
  # causal + window W=2: position p sees keys p-1 and p.
  q_pos = (5 - 3 + jnp.arange(3))[:, None]
  kv_pos = jnp.arange(5)[None, :]
  mask = attention_mask(q_pos, kv_pos, causal=True, sliding_window=2)
  expected = [[0, 1, 1, 0, 0],
              [0, 0, 1, 1, 0],
              [0, 0, 0, 1, 1]]
  np.testing.assert_array_equal(np.asarray(mask, np.int32), expected)


@pytest.mark.parametrize("kwargs", [dict(causal=True), dict(causal=False),
                                    dict(causal=True, sliding_window=40)])
@pytest.mark.parametrize("sorted_segments", [True, False])
def test_block_plan_covers_token_mask(kwargs, sorted_segments):
  # Every tile that holds a visible pair must be visited; with sorted ids and causal/window masks
  # the plan is exact (nothing extra visited).
  T, S, bq, bkv = 96, 160, 16, 32
  q_seg = _segments([[30, 30, 36]])
  kv_seg = _segments([[64, 40, 56]])
  if not sorted_segments:
    q_seg, kv_seg = q_seg % 2, kv_seg % 2  # ids 0, 1, 0: a segment id reappears
  plan = block_plan(q_seg, kv_seg, batch=1, T=T, S=S, Tp=T, Sp=S, block_q=bq, block_kv=bkv, **kwargs)
  mask = attention_mask((S - T + jnp.arange(T))[:, None], jnp.arange(S)[None, :], q_seg[0][:, None],
                        kv_seg[0][None, :], **kwargs)
  needed = np.asarray(mask).reshape(T // bq, bq, S // bkv, bkv).any(axis=(1, 3))  # (nq, nk)
  i, j = np.arange(T // bq)[:, None], np.arange(S // bkv)[None, :]
  p = jax.tree.map(lambda x: np.asarray(x)[0], plan)
  in_range = (p.kv_lo[:, None] <= j) & (j < p.kv_hi[:, None])
  overlap = (p.q_seg_min[:, None] <= p.kv_seg_max[None, :]) & (p.kv_seg_min[None, :] <= p.q_seg_max[:, None])
  visited = in_range & overlap
  visited_dkv = (p.q_lo[None, :] <= i) & (i < p.q_hi[None, :]) & overlap  # dK/dV kernel's view
  assert np.all(visited[needed]) and np.all(visited_dkv[needed])
  if sorted_segments:
    np.testing.assert_array_equal(visited, needed)
    np.testing.assert_array_equal(visited_dkv, needed)
    assert visited.sum() < visited.size  # something is actually skipped


def test_packed_rows_equal_separate_sequences():
  # A row packing sequences of lengths 48 and 80 (segment ids 0, 1) gives, for each sequence, the
  # same output and gradients as attending over that sequence alone.
  q, k, v, do = _inputs(1, 128, 128, 4, 2, 32, jnp.float32, seed=1)
  blocks = BlockSizes(32, 32)
  seg = _segments([[48, 80]])
  out, grads = _out_and_grads(
      lambda q, k, v: flash_attention(q, k, v, q_segment_ids=seg, block_sizes=blocks, interpret=True),
      q, k, v, do)
  for sl in (slice(0, 48), slice(48, 128)):
    part = lambda x: x[:, sl]
    sep_out, sep_grads = _out_and_grads(
        lambda q, k, v: flash_attention(q, k, v, block_sizes=blocks, interpret=True),
        part(q), part(k), part(v), part(do))
    _assert_close(part(out), sep_out, 1e-5, "packed out")
    for g, sg in zip(grads, sep_grads):
      _assert_close(part(g), sg, 1e-5, "packed grad")


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_fully_masked_rows_give_zeros(backend):
  # Causal with T > S: queries 0..63 sit at negative positions and see no key. Segment 7 of the
  # queries appears in no key. Both kinds of rows must output exactly 0 with zero, finite grads.
  T, S = 192, 128
  q, k, v, do = _inputs(1, T, S, 2, 1, 32, jnp.float32, seed=2)
  q_seg = jnp.concatenate([jnp.zeros((1, 160), jnp.int32), jnp.full((1, 32), 7, jnp.int32)], 1)
  kv_seg = jnp.zeros((1, S), jnp.int32)
  fn = lambda q, k, v: flash_attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                                       block_sizes=BlockSizes(32, 32), interpret=True, backend=backend)
  out, (dq, dk, dv) = _out_and_grads(fn, q, k, v, do)
  masked = np.zeros(T, bool)
  masked[:64] = masked[160:] = True
  assert np.all(np.asarray(out)[:, masked] == 0.0)
  assert np.all(np.asarray(dq)[:, masked] == 0.0)
  ref_out, ref_grads = _out_and_grads(
      lambda q, k, v: attention_reference(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg),
      q, k, v, do)
  _assert_close(out, ref_out, 1e-4, "out")
  for g, rg in zip((dq, dk, dv), ref_grads):
    _assert_close(g, rg, 1e-4, "grad")


@pytest.mark.parametrize("bad", [
    dict(k_shape=(1, 128, 3, 32)),  # Nq=4 not a multiple of Nkv=3
    dict(k_shape=(1, 128, 2, 16)),  # head dims differ
    dict(kwargs=dict(sliding_window=8, causal=False)),
    dict(kwargs=dict(q_segment_ids=jnp.zeros((1, 64), jnp.int32))),
    dict(kwargs=dict(backend="cuda")),
])
def test_bad_arguments_raise(bad):
  q = jnp.zeros((1, 128, 4, 32))
  k = jnp.zeros(bad.get("k_shape", (1, 128, 2, 32)))
  with pytest.raises(ValueError):
    flash_attention(q, k, k, interpret=True, **bad.get("kwargs", {}))


def test_cpu_without_interpret_raises():
  q = jnp.zeros((1, 128, 2, 32))
  with pytest.raises(ValueError, match="interpret=True"):
    flash_attention(q, q, q)


def test_gpu_kernels_lower_to_triton_ir():
  # No GPU here: lowering for the 'cuda' platform still runs the Pallas -> Triton IR lowering of all
  # three kernels (fwd, dQ, dK/dV), which catches ops the Triton backend cannot express.
  q = jax.ShapeDtypeStruct((1, 256, 4, 128), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((1, 256), jnp.int32)

  def f(q, k, v, seg):
    attn = lambda q, k, v: flash_attention(q, k, v, q_segment_ids=seg, sliding_window=100,
                                           logit_softcap=30.0, backend="gpu")
    out, vjp = jax.vjp(attn, q, k, v)
    return out, vjp(out)

  hlo = jax.jit(f).trace(q, kv, kv, seg).lower(lowering_platforms=("cuda",)).as_text()
  assert hlo.count("jaxpost_flash_") >= 3
