"""The Llama-family transformer: causality, packing, scan and remat invariances."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.models import ModelConfig, Transformer
from jaxpost.models.attention import attention_mask

CFG = dict(vocab_size=37, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)


def _model(**kw):
  return Transformer(ModelConfig(**{**CFG, **kw}), rngs=nnx.Rngs(0))


def test_attention_mask_layout():
  seg = jnp.array([[1, 1, 2, 2, 0]])
  expected = np.array([[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [0, 0, 1, 0, 0],
                       [0, 0, 1, 1, 0],
                       [0, 0, 0, 0, 1]], bool)  # causal AND same segment (padding only sees padding)
  np.testing.assert_array_equal(np.asarray(attention_mask(seg, seg))[0], expected)


def test_later_tokens_never_change_earlier_logits():
  model = _model()
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 37)
  changed = tokens.at[:, 7:].set((tokens[:, 7:] + 5) % 37)
  a, b = model(tokens), model(changed)
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
  assert not np.allclose(a[:, 7:], b[:, 7:])  # ... while the changed positions do change.


def test_packed_row_equals_separate_sequences():
  model = _model()
  x = jax.random.randint(jax.random.PRNGKey(2), (1, 5), 0, 37)
  y = jax.random.randint(jax.random.PRNGKey(3), (1, 7), 0, 37)
  packed = jnp.concatenate([x, y], axis=1)  # (1, 12)
  positions = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])
  segments = jnp.array([[1] * 5 + [2] * 7])
  out = model(packed, positions, segments)
  np.testing.assert_allclose(out[:, :5], model(x), atol=1e-5)
  np.testing.assert_allclose(out[:, 5:], model(y), atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "dots", "offload"])
def test_scan_and_remat_match_the_plain_loop(remat):
  plain = _model()
  # The scanned model's structure only (no eager init of its stacked params: seconds of op-by-op compiles);
  # its params are the plain model's per-layer params copied into the stacked (L, ...) layout.
  graphdef, state = nnx.split(nnx.eval_shape(lambda: _model(scan_layers=True, remat=remat)), nnx.Param)
  _, plain_state = nnx.split(plain, nnx.Param)
  plain_params = nnx.to_pure_dict(plain_state)
  params = nnx.to_pure_dict(state)
  assert sorted(params) == ["blocks", "embed", "final_norm"]  # Every leaf is replaced below.
  params["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[plain_params["blocks"][i] for i in range(2)])
  for key in ("embed", "final_norm"):
    params[key] = plain_params[key]
  tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 9), 0, 37)
  forward = jax.jit(lambda p, g: nnx.merge(g, p)(tokens), static_argnums=1)  # One compile, not op by op.
  plain_graphdef = nnx.split(plain, nnx.Param)[0]
  np.testing.assert_allclose(forward(params, graphdef), forward(plain_params, plain_graphdef), atol=1e-5)
  grad = jax.jit(jax.grad(lambda p, g: nnx.merge(g, p)(tokens).sum()), static_argnums=1)
  g_scan = grad(params, graphdef)
  g_plain = grad(plain_params, plain_graphdef)
  np.testing.assert_allclose(g_scan["blocks"]["mlp"]["up"][1], g_plain["blocks"][1]["mlp"]["up"], rtol=1e-4, atol=1e-5)


def test_gqa_equals_repeated_kv_heads():
  """With K < H, attention equals full multi-head attention whose K/V heads are repeated G times."""
  from jaxpost.models.attention import xla_attention
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
  q = jax.random.normal(k1, (2, 6, 4, 8))
  k = jax.random.normal(k2, (2, 6, 2, 8))
  v = jax.random.normal(k3, (2, 6, 2, 8))
  seg = jnp.ones((2, 6), jnp.int32)
  out = xla_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)
  full = xla_attention(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), q_segment_ids=seg, kv_segment_ids=seg)
  np.testing.assert_allclose(out, full, atol=1e-6)


def test_param_count_matches_config_formula():
  cfg = ModelConfig(**CFG)
  _, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
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
