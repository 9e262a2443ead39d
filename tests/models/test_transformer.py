"""The Llama-family transformer: causality, packing, scan and remat invariances."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.models import ModelConfig, Transformer
from jaxpost.models.attention import attention_mask

CFG = dict(vocab_size=37, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
# Cheaper XLA:CPU codegen for the programs compiled here (as kernels/test_attention.py): eagerly, each param's
# truncated normal compiles for seconds and each forward op by op.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _model(**kw):
  return Transformer(ModelConfig(**{**CFG, **kw}), rngs=nnx.Rngs(0))


def _params(**kw):
  """(graphdef, params) of `_model(**kw)`: its own init (nnx.Rngs(0)), in one jitted program."""
  graphdef = nnx.split(nnx.eval_shape(lambda: _model(**kw)), nnx.Param)[0]
  init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(_model(**kw), nnx.Param)))
  return graphdef, init.lower().compile(compiler_options=FAST_COMPILE)()


def _jit(fn, *args):
  """fn(*args) as one compiled program (not op by op)."""
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def _forward(graphdef, params, *args):
  return _jit(lambda p, *a: nnx.merge(graphdef, p)(*a), params, *args)


def test_attention_mask_layout():
  seg = jnp.array([[1, 1, 2, 2, 0]])
  expected = np.array([[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [0, 0, 1, 0, 0],
                       [0, 0, 1, 1, 0],
                       [0, 0, 0, 0, 1]], bool)  # causal AND same segment (padding only sees padding)
  np.testing.assert_array_equal(np.asarray(attention_mask(seg, seg))[0], expected)


def test_later_tokens_never_change_earlier_logits():
  graphdef, params = _params()
  tokens = np.random.RandomState(1).randint(0, 37, (2, 12)).astype(np.int32)
  changed = tokens.copy()
  changed[:, 7:] = (tokens[:, 7:] + 5) % 37
  a, b = _forward(graphdef, params, tokens), _forward(graphdef, params, changed)
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
  assert not np.allclose(a[:, 7:], b[:, 7:])  # ... while the changed positions do change.


def test_packed_row_equals_separate_sequences():
  graphdef, params = _params()
  x = np.random.RandomState(2).randint(0, 37, (1, 5)).astype(np.int32)
  y = np.random.RandomState(3).randint(0, 37, (1, 7)).astype(np.int32)
  packed = np.concatenate([x, y], axis=1)  # (1, 12)
  positions = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]], np.int32)
  segments = np.array([[1] * 5 + [2] * 7], np.int32)
  out = _forward(graphdef, params, packed, positions, segments)
  np.testing.assert_allclose(out[:, :5], _forward(graphdef, params, x), atol=1e-5)
  np.testing.assert_allclose(out[:, 5:], _forward(graphdef, params, y), atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "dots", "offload"])
def test_scan_and_remat_match_the_plain_loop(remat):
  plain_graphdef, plain_params = _params()
  # The scanned model's structure only (no eager init of its stacked params: seconds of op-by-op compiles);
  # its params are the plain model's per-layer params copied into the stacked (L, ...) layout.
  graphdef, state = nnx.split(nnx.eval_shape(lambda: _model(scan_layers=True, remat=remat)), nnx.Param)
  params = nnx.to_pure_dict(state)
  assert sorted(params) == ["blocks", "embed", "final_norm"]  # Every leaf is replaced below.
  params["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[plain_params["blocks"][i] for i in range(2)])
  for key in ("embed", "final_norm"):
    params[key] = plain_params[key]
  tokens = np.random.RandomState(4).randint(0, 37, (2, 9)).astype(np.int32)
  np.testing.assert_allclose(_forward(graphdef, params, tokens), _forward(plain_graphdef, plain_params, tokens),
                             atol=1e-5)
  grad = lambda g: jax.grad(lambda p: nnx.merge(g, p)(tokens).sum())
  g_scan = _jit(grad(graphdef), params)
  g_plain = _jit(grad(plain_graphdef), plain_params)
  np.testing.assert_allclose(g_scan["blocks"]["mlp"]["up"][1], g_plain["blocks"][1]["mlp"]["up"], rtol=1e-4, atol=1e-5)


def test_gqa_equals_repeated_kv_heads():
  """With K < H, attention equals full multi-head attention whose K/V heads are repeated G times."""
  from jaxpost.models.attention import xla_attention
  rng = np.random.RandomState(5)  # Host values: jax.random.normal compiles for seconds on CPU.
  q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in ((2, 6, 4, 8), (2, 6, 2, 8),
                                                                             (2, 6, 2, 8)))
  seg = jnp.ones((2, 6), jnp.int32)
  out = xla_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)
  full = xla_attention(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), q_segment_ids=seg, kv_segment_ids=seg)
  np.testing.assert_allclose(out, full, atol=1e-6)


def test_param_count_matches_config_formula():
  cfg = ModelConfig(**CFG)
  _, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)  # Shapes only.
  assert sum(x.size for x in jax.tree.leaves(state)) == cfg.num_params()


def test_fsdp_keeps_the_residual_stream_split_by_rows_not_by_width():
  """Under an FSDP mesh (fsdp=8) the (B, T, D) residual stream is split by rows, D whole, so FSDP gathers
  weights. Left to sharding propagation it was split on D like the weights (P(None, None, 'fsdp'): an
  all-reduce of activations per projection instead of an all-gather of weights)."""
  from jaxpost import state as state_lib
  cfg = ModelConfig(**{**CFG, "vocab_size": 64})
  mesh = jax.make_mesh((1, 8, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh):
    graphdef, shapes, _ = state_lib.abstract_model(cfg)  # Zeros in the trainer's layout (values do not matter).
    params = jax.device_put(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes),
                            state_lib.param_shardings(cfg, mesh))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    tokens = jax.device_put(np.zeros((8, 16), np.int32), rows)
    hidden = jax.jit(lambda p, t: nnx.merge(graphdef, p).hidden(t))(params, tokens)
  spec = tuple(hidden.sharding.spec) + (None,) * 3
  row_axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  assert "fsdp" in row_axes and spec[2] is None, hidden.sharding.spec
