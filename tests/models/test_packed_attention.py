"""Packed rows through cuDNN's packed layout (runs of segment ids) == the segment-mask attention.

On CPU the packed kernel is `packed_reference`, an independent jnp reading of cuDNN's documented layout,
so these tests check the runs, the fall-back and the wiring; cuDNN itself is checked by
`scripts/bench_attention.py` on a GPU (its err and grad err columns)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import config as config_lib
from jaxpost.models import ModelConfig, Transformer
from jaxpost.models import attention, packed_attention
from jaxpost.models.packed_attention import segment_runs

# Cheaper XLA:CPU codegen for the programs compiled here with it (as kernels/test_attention.py).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def test_segment_runs_by_hand():
  seg = jnp.array([[1, 1, 2, 0, 0, 0],     # two examples, then padding: runs at 0, 2, 3 of lengths 2, 1, 3
                   [0, 0, 1, 1, 1, 1],     # left padding: runs at 0, 2 of lengths 2, 4
                   [1, 1, 1, 1, 1, 1]])    # one full row
  seqlens, offsets, fits = segment_runs(seg, 3)
  np.testing.assert_array_equal(seqlens, [[2, 1, 3], [2, 4, -1], [6, -1, -1]])
  np.testing.assert_array_equal(offsets, [[0, 2, 3, -1], [0, 2, -1, -1], [0, -1, -1, -1]])
  assert bool(fits)
  assert not bool(segment_runs(seg, 2)[2])  # row 0 has 3 runs


def _qkv(b=3, t=16, h=4, kvh=2, d=8, seed=0):
  """Standard-normal q, k, v as host values (jax.random.normal compiles for seconds a shape on CPU)."""
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((b, t, h, d), (b, t, kvh, d),
                                                                                  (b, t, kvh, d)))


SEGMENTS = jnp.array([[1] * 5 + [2] * 7 + [3] * 2 + [0] * 2,  # packed examples + right padding
                      [0] * 6 + [1] * 10,                     # left padding (a prompt in the sampler's prefill)
                      [1] * 16])                              # one full row


@pytest.mark.parametrize("window", [None, 3])
def test_reference_on_runs_equals_segment_mask_attention(window):
  q, k, v = _qkv()
  seqlens, offsets, _ = segment_runs(SEGMENTS, 4)
  got = jax.jit(lambda *a: packed_attention.packed_reference(*a, sliding_window=window))(q, k, v, seqlens, offsets)
  want = jax.jit(lambda q, k, v: attention.xla_attention(q, k, v, q_segment_ids=SEGMENTS, kv_segment_ids=SEGMENTS,
                                                          sliding_window=window))(q, k, v)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("max_segments", [4, 2])  # 4: the packed path; 2: row 0 has 4 runs -> dense mask
def test_cudnn_impl_values_and_grads_equal_the_mask(max_segments):
  q, k, v = _qkv(seed=1)

  def loss(fn, q, k, v):
    out = fn(q, k, v, q_segment_ids=SEGMENTS, kv_segment_ids=SEGMENTS)
    return jnp.sum(out * jnp.cos(out)), out

  packed = lambda q, k, v, **kw: attention.dot_product_attention(q, k, v, cudnn_max_segments=max_segments, **kw)
  grad = lambda fn: jax.jit(jax.value_and_grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2), has_aux=True))
  (_, got), grads = grad(packed)(q, k, v)
  (_, want), want_grads = grad(attention.xla_attention)(q, k, v)
  np.testing.assert_allclose(got, want, atol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, atol=1e-4)


def test_the_packed_branch_is_the_one_taken_when_rows_fit():
  q, k, v = _qkv(seed=2)
  calls = []

  def kernel(*args, **kw):
    calls.append("packed")
    return packed_attention.packed_reference(*args, **kw)

  dense = lambda: jnp.zeros_like(q)  # a wrong answer, so taking this branch would show
  out = jax.jit(lambda q, k, v: packed_attention.packed_attention(q, k, v, SEGMENTS, max_runs=4, dense=dense,
                                                                  kernel=kernel))(q, k, v)
  assert calls == ["packed"]
  assert float(jnp.max(jnp.abs(out))) > 0.1
  out = packed_attention.packed_attention(q, k, v, SEGMENTS, max_runs=3, dense=dense, kernel=kernel)
  np.testing.assert_array_equal(out, 0.0)  # 4 runs in row 0 > 3: the dense branch ran


def test_transformer_with_packed_cudnn_equals_xla_attention():
  cfg = dict(vocab_size=37, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
  xla_cfg = ModelConfig(**cfg, attention="xla")
  packed_cfg = ModelConfig(**cfg, attention="cudnn", cudnn_max_segments=4)
  # Both models' params are the xla model's own init (nnx.Rngs(0), as each had), jitted once; cheaper codegen
  # for it and both forwards (eagerly, each param's truncated normal compiles for seconds).
  init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Transformer(xla_cfg, rngs=nnx.Rngs(0)), nnx.Param)))
  params = init.lower().compile(compiler_options=FAST_COMPILE)()
  tokens = np.random.default_rng(3).integers(0, 37, SEGMENTS.shape).astype(np.int32)
  positions = jnp.array([list(range(5)) + list(range(7)) + [0, 1, 0, 1], list(range(16)), list(range(16))])

  def run(cfg):
    graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)[0]
    args = (params, tokens, positions, SEGMENTS)
    return jax.jit(lambda p, *a: nnx.merge(graphdef, p)(*a)).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)
  np.testing.assert_allclose(run(packed_cfg), run(xla_cfg), atol=1e-5)


def test_negative_max_segments_is_a_config_error():
  c = config_lib.base_config()
  c.model.cudnn_max_segments = -1
  with pytest.raises(config_lib.ConfigError, match="config.model.cudnn_max_segments"):
    config_lib.validate(c)


def test_sharded_rows_equal_one_device():
  """Rows split over 4 devices (the runs are per row, the fall-back predicate is a reduction over all
  rows) give the single-device result, on both branches."""
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:4])
  q, k, v = _qkv(b=4, seed=4)
  seg = jnp.concatenate([SEGMENTS, SEGMENTS[:1]])  # (4, 16)
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  for max_segments in (4, 2):  # packed branch, dense fall-back
    fn = jax.jit(lambda q, k, v, s: attention.dot_product_attention(q, k, v, q_segment_ids=s, kv_segment_ids=s,
                                                                    cudnn_max_segments=max_segments))
    want = fn(q, k, v, seg)
    got = fn(*(jax.device_put(x, rows) for x in (q, k, v, seg)))
    assert len(got.sharding.device_set) == 4
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_cudnn_binding_takes_the_arguments_we_pass():
  """cuDNN itself needs a GPU; this checks that jax's internal binding (not a public API, so it may drift
  between jax versions) still has every keyword `cudnn_packed_kernel` passes, and the mask types."""
  import inspect
  from jax._src.cudnn import fused_attention_stablehlo as cudnn
  q, k, v = _qkv()
  seqlens, offsets, _ = segment_runs(SEGMENTS, 4)
  inspect.signature(cudnn.dot_product_attention).bind(
      q, k, v, q_seqlen=seqlens, kv_seqlen=seqlens, q_offsets=offsets, kv_offsets=offsets, scale=1.0,
      mask_type=cudnn.MaskType.PADDING_CAUSAL, sliding_window_length=None)
  assert cudnn.MaskType.PADDING.name == "PADDING"
