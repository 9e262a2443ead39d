"""TPU lowering without a TPU: the sharded train step, the GRPO update and the sampler, with the Pallas
kernels on (attention='pallas', logprob_impl='pallas'), export for platform 'tpu' through Mosaic.

What this shows is lowering, not running: jax.export traces and lowers each program for TPU on the 8
simulated CPU devices, and each Pallas kernel must pass the Mosaic TPU lowering (block shapes, layouts,
the ops it uses) to appear as a `tpu_custom_call`. Numerics are checked elsewhere (interpret mode). Two
things are mocked: `jax.default_backend()` says 'tpu' (so the model picks the compiled kernels, not the
interpreter), and Mosaic's device query says 'TPU v5 lite' (it reads the chip generation from the default
device, a CPU here).
"""
import re

import jax
import jax.numpy as jnp
import pytest

from jaxpost import config as config_lib
from jaxpost import mesh as mesh_lib
from jaxpost import optim, sampling, state as state_lib, step as step_lib
from jaxpost.algorithms import grpo, sft
from jaxpost.models import ModelConfig

# Mosaic's (8, 128) tiling: head_dim and the vocab a multiple of 128, sequences of whole blocks.
MODEL = ModelConfig(vocab_size=512, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=128,
                    mlp_dim=256, attention="pallas", logprob_impl="pallas", scan_layers=True, remat="full")
ROWS, SEQ = 8, 256
FLASH = {"jaxpost_flash_fwd", "jaxpost_flash_dq", "jaxpost_flash_dkv"}
LOGPROBS = {"token_logprobs_fwd", "token_logprobs_dh", "token_logprobs_dw"}


@pytest.fixture
def tpu_platform(monkeypatch):
  try:
    from jax._src.pallas.mosaic import tpu_info
  except ImportError as e:
    pytest.fail(f"jax moved Mosaic's tpu_info ({e}): update this mock")
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  monkeypatch.setattr(tpu_info, "get_device_kind", lambda: "TPU v5 lite")
  monkeypatch.setattr(tpu_info, "get_num_device_cores", lambda: 1)


def _mesh(shape):
  return jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _mosaic_kernels(exported) -> list[str]:
  """Names of the Mosaic kernels in an exported program, one entry per tpu_custom_call."""
  text = exported.mlir_module()
  names = re.findall(r'kernel_name = "([^"]+)"', text)
  assert len(names) == text.count("stablehlo.custom_call @tpu_custom_call")
  return names


def _train_step(mesh, loss_fn, normalizer, batch_keys, *, grad_accum):
  tx, schedule = optim.make_optimizer(config_lib.base_config().optim, 10)
  _, shapes, _ = state_lib.abstract_model(MODEL)
  shardings = state_lib.state_shardings(shapes, state_lib.param_shardings(MODEL, mesh), tx, mesh)
  rows = mesh_lib.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((ROWS, SEQ), dtype, sharding=rows) for k, dtype in batch_keys.items()}
  step = jax.jit(step_lib.make_train_step(loss_fn, normalizer, tx, schedule, grad_accum=grad_accum),
                 in_shardings=(shardings, rows, None), out_shardings=(shardings, mesh_lib.replicated(mesh)))
  with jax.set_mesh(mesh):
    return jax.export.export(step, platforms=["tpu"])(state_lib.abstract_state(shardings, shapes, tx), batch, None)


TOKENS = {k: jnp.int32 for k in ("inputs", "targets", "loss_mask", "positions", "segment_ids")}


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 8, 1)], ids=["data2_fsdp2_tensor2", "fsdp8"])
def test_sft_train_step_lowers_for_tpu(tpu_platform, mesh_shape):
  """Scan over layers + full remat + 2 microbatches; with remat the forward kernel runs twice per layer."""
  graphdef = state_lib.abstract_model(MODEL)[0]
  exported = _train_step(_mesh(mesh_shape), *sft.make_loss_fn(graphdef, "pallas"), TOKENS,
                         grad_accum=2)
  names = _mosaic_kernels(exported)
  assert FLASH | LOGPROBS <= set(names), names
  assert exported.nr_devices == 8 and exported.platforms == ("tpu",)


def test_grpo_update_lowers_for_tpu(tpu_platform):
  graphdef = state_lib.abstract_model(MODEL)[0]
  loss_fn, normalizer = grpo.make_loss_fn(graphdef, beta=0.04, logprob_impl="pallas")
  keys = {**TOKENS, "old_logps": jnp.float32, "ref_logps": jnp.float32, "advantages": jnp.float32}
  exported = _train_step(_mesh((2, 2, 2)), loss_fn, normalizer, keys, grad_accum=1)
  assert FLASH | LOGPROBS <= set(_mosaic_kernels(exported))


def test_sampler_lowers_for_tpu(tpu_platform):
  """Prefill runs the flash kernel; the per-token decode step attends to the cache with XLA."""
  mesh = _mesh((2, 2, 2))
  graphdef, shapes, _ = state_lib.abstract_model(MODEL)
  params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                        state_lib.param_shardings(MODEL, mesh))
  cfg = sampling.SamplingConfig(max_new_tokens=8, num_samples=2, stop_token_ids=(1,))
  tokens = jax.ShapeDtypeStruct((4, 128), jnp.int32)
  traced = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), sampling._traced(cfg))  # noqa: SLF001
  generate = jax.jit(sampling._generate, static_argnames=("graphdef", "sampling", "pad_id"))  # noqa: SLF001
  with jax.set_mesh(mesh):
    exported = jax.export.export(generate, platforms=["tpu"])(
        graphdef, params, tokens, tokens, traced, sampling=sampling._static(cfg), pad_id=0)  # noqa: SLF001
  assert "jaxpost_flash_fwd" in _mosaic_kernels(exported)
