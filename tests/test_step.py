"""The generic train step: SFT loss by hand, gradient accumulation, and sharded == single-device."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpost import config as config_lib
from jaxpost import mesh as mesh_lib
from jaxpost import optim, state as state_lib, step as step_lib
from jaxpost.algorithms import sft
from jaxpost.models import ModelConfig

MODEL = ModelConfig(vocab_size=29, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)


def _batch(rows=8, seq=16, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 29, (rows, seq + 1)).astype(np.int32)
  mask = (rng.random((rows, seq)) < 0.6).astype(np.int32)
  seg = np.ones((rows, seq), np.int32)
  seg[:, seq // 2:] = 2  # Two packed examples per row.
  pos = np.concatenate([np.arange(seq // 2), np.arange(seq - seq // 2)])[None].repeat(rows, 0).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask, "positions": pos, "segment_ids": seg}


@functools.lru_cache(maxsize=None)
def _host_params():
  """MODEL's params as host values (std 0.2): the model's random init compiles for seconds on every mesh."""
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype) * 0.2, state_lib.abstract_model(MODEL)[1])


# Cheaper XLA:CPU codegen for the steps (as kernels/test_attention.py): their compiles are most of this file's
# time. Every step compared here is compiled with the same options.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _setup(mesh, grad_accum=1, steps=3):
  """(graphdef, state, step): the step compiled for `_batch()`'s shapes."""
  cfg = config_lib.base_config()
  tx, schedule = optim.make_optimizer(cfg.optim, steps)
  graphdef, shapes, _ = state_lib.abstract_model(MODEL)
  ps = state_lib.param_shardings(MODEL, mesh)
  ss = state_lib.state_shardings(shapes, ps, tx, mesh)
  state = state_lib.create_state(jax.device_put(_host_params(), ps), tx, ss)
  fn = step_lib.make_train_step(*sft.make_loss_fn(graphdef), tx, schedule, grad_accum=grad_accum)
  step = jax.jit(fn, in_shardings=(ss, mesh_lib.batch_sharding(mesh), None),
                 out_shardings=(ss, mesh_lib.replicated(mesh)))
  return graphdef, state, step.lower(state, _batch(), None).compile(compiler_options=FAST_COMPILE)


def _mesh(data, fsdp, tensor, n):
  return jax.make_mesh((data, fsdp, tensor), ("data", "fsdp", "tensor"), devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def test_sft_loss_is_token_mean_of_masked_nll():
  """Random params (numpy N(0, 0.5), seed 0: per-token NLL spans about 1.2 .. 8.3, so the means below
  differ): loss_sum = -sum_{b,t} m_bt log p_bt, and loss_sum / normaliser = that / sum_{b,t} m_bt = 4.2203,
  with log p_bt recomputed here in float64 numpy from the model's logits (log_softmax, then the target's
  entry); the normaliser is the number of mask ones (8+4+9+12+9+10+6+11 = 69 for this batch). The check
  can tell the token mean from the others: the mean of the 8 per-row means (4.2575), of the 16 per-example
  (row, segment) means (4.2841) and the unmasked mean (4.2540) each differ from it by more than 100x the
  1e-5 tolerance. An all-zero mask gives loss sum 0 and normaliser max(0, 1) = 1: loss 0, not 0/0."""
  from flax import nnx
  graphdef, shapes, _ = state_lib.abstract_model(MODEL)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes)
  loss_fn = jax.jit(sft.make_loss_fn(graphdef)[0])
  batch = _batch()
  loss_sum, _ = loss_fn(params, batch)
  weight = sft.normalizer(batch)
  mask = batch["loss_mask"].astype(np.float64)
  assert float(weight) == mask.sum() == 69

  forward = jax.jit(lambda p, b: nnx.merge(graphdef, p)(b["inputs"], b["positions"], b["segment_ids"]))
  logits = np.asarray(forward(params, batch), np.float64)  # (B, T, V): the model's f32 logits, widened.
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]  # (B, T)
  token_mean = (nll * mask).sum() / mask.sum()
  np.testing.assert_allclose(float(loss_sum), (nll * mask).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(loss_sum / weight), token_mean, rtol=1e-5)

  row_mean = np.mean((nll * mask).sum(1) / mask.sum(1))
  in_example = [mask * (batch["segment_ids"] == s) for s in (1, 2)]
  example_means = [(nll * m).sum(1)[m.sum(1) > 0] / m.sum(1)[m.sum(1) > 0] for m in in_example]
  example_mean = np.concatenate(example_means).mean()  # Over the (row, segment) pairs with a loss token.
  for other in (row_mean, example_mean, nll.mean()):
    assert abs(other - token_mean) > 100 * 1e-5 * token_mean

  empty = {**batch, "loss_mask": np.zeros_like(batch["loss_mask"])}
  assert float(loss_fn(params, empty)[0]) == 0.0 and float(sft.normalizer(empty)) == 1.0


def test_gradient_accumulation_equals_full_batch():
  mesh = _mesh(1, 1, 1, 1)
  batch = _batch()
  _, s1, step1 = _setup(mesh, grad_accum=1)
  _, s4, step4 = _setup(mesh, grad_accum=4)
  s1, m1 = step1(s1, batch, None)
  s4, m4 = step4(s4, batch, None)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s4["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sharded_step_equals_single_device():
  """data=2, fsdp=2, tensor=2 on 8 simulated devices vs 1 device: same loss and params after 3 steps.
  Tolerance 1e-5: only the order of the sharded reductions differs (f32)."""
  assert jax.device_count() == 8
  results = []
  for mesh in (_mesh(1, 1, 1, 1), _mesh(2, 2, 2, 8)):
    _, state, step = _setup(mesh)
    losses = []
    for i in range(3):
      state, metrics = step(state, _batch(seed=i), None)
      losses.append(float(metrics["loss"]))
    results.append((losses, jax.device_get(state["params"])))
  (l1, p1), (l8, p8) = results
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_sharded_params_are_really_sharded():
  mesh = _mesh(2, 2, 2, 8)
  params = state_lib.init_params(MODEL, mesh, 0)
  up = params["blocks"][0]["mlp"]["up"]  # (D=32, F=64), logical (embed, mlp) -> (fsdp, tensor)
  assert up.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert up.addressable_shards[0].data.shape == (16, 32)


def test_decay_mask_skips_vectors():
  params = {"w": jnp.ones((2, 2)), "norm": jnp.ones((2,))}
  assert optim.decay_mask(params) == {"w": True, "norm": False}


_SHARDED_REFERENCE = {}


def _sharded_one_step(attention: str, logprob_impl: str):
  """(loss, grad_norm, params) after one 8-device (2, 2, 2) step with these implementations."""
  import dataclasses
  global MODEL
  base = MODEL
  mesh = _mesh(2, 2, 2, 8)
  try:
    MODEL = dataclasses.replace(base, attention=attention, logprob_impl=logprob_impl)
    with jax.set_mesh(mesh):
      _, state, step = _setup(mesh)
      state, metrics = step(state, _batch(), None)
      return float(metrics["loss"]), float(metrics["grad_norm"]), jax.device_get(state["params"])
  finally:
    MODEL = base


@pytest.mark.parametrize("attention,logprob_impl", [("pallas", "naive"), ("xla", "pallas"), ("xla", "chunked")])
def test_kernel_implementations_match_xla_in_a_sharded_step(attention, logprob_impl):
  """The 8-device (2, 2, 2) step with the Pallas attention kernel (interpret mode, under shard_map) or a
  fused log-prob kernel gives the xla/naive step's loss and parameters (f32; tolerance 1e-5)."""
  if "ref" not in _SHARDED_REFERENCE:  # The xla/naive step, computed once per process.
    _SHARDED_REFERENCE["ref"] = _sharded_one_step("xla", "naive")
  l0, g0, p0 = _SHARDED_REFERENCE["ref"]
  l1, g1, p1 = _sharded_one_step(attention, logprob_impl)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  np.testing.assert_allclose(g1, g0, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
