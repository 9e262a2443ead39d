"""LoRA adapters and the quantised base: a fresh adapter is the identity, disabled adapters give the
base exactly, merged weights equal the adapter model, the PEFT export loads in `peft` with the same
logits, and int8 / int4 / nf4 bases stay close to the f32 model."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.models import ModelConfig, Transformer, hf, lora

CFG = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
LORA = dataclasses.replace(CFG, lora_rank=4, lora_alpha=8.0)
TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 61, (2, 9)), jnp.int32)


# Cheaper XLA:CPU codegen for the init (as kernels/test_attention.py): eagerly, each param's truncated normal
# compiles for seconds.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.lru_cache(maxsize=None)
def _params(cfg, seed=0):
  """(graphdef, params): the model's own init (LoRA's B = 0 included), in one jitted program; one per
  config (the tests only read the dicts)."""
  graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed))), nnx.Param)[0]
  init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param)))
  return graphdef, init.lower().compile(compiler_options=FAST_COMPILE)()


def _trained_adapters(adapters, seed=1):
  """Random non-zero A and B, as after some training (host values: jax.random.normal compiles for seconds)."""
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), jnp.float32), adapters)


def test_fresh_adapters_are_the_identity_and_disabled_adapters_give_the_base():
  graphdef, base = _params(CFG)
  lora_graphdef, full = _params(LORA)
  _, adapters = lora.split(full)
  # q/k/v/o/gate/up/down adapters on each of 2 layers: A (in, 4), B (4, out); B starts at 0.
  assert sorted(adapters["blocks"][0]["attn"]) == ["k_lora_a", "k_lora_b", "o_lora_a", "o_lora_b", "q_lora_a",
                                                   "q_lora_b", "v_lora_a", "v_lora_b"]
  assert adapters["blocks"][0]["attn"]["o_lora_a"].shape == (32, 4)  # in = H * hd = 32
  ref = nnx.merge(graphdef, base)(TOKENS)
  np.testing.assert_array_equal(nnx.merge(lora_graphdef, lora.join(base, adapters))(TOKENS), ref)
  trained = _trained_adapters(adapters)
  assert np.abs(nnx.merge(lora_graphdef, lora.join(base, trained))(TOKENS) - ref).max() > 1e-3
  np.testing.assert_array_equal(nnx.merge(lora_graphdef, lora.join(base, lora.disabled(trained)))(TOKENS), ref)


def test_merged_weights_equal_the_adapter_model():
  lora_graphdef, full = _params(LORA)
  base, adapters = lora.split(full)
  params = lora.join(base, _trained_adapters(adapters))
  graphdef, _ = _params(CFG)
  np.testing.assert_allclose(nnx.merge(graphdef, lora.merged(params, LORA))(TOKENS),
                             nnx.merge(lora_graphdef, params)(TOKENS), atol=1e-5)


def test_targets_and_split_join_round_trip():
  assert lora.resolve_targets("q_proj, v") == ("q", "v")
  assert lora.resolve_targets("re:(gate|up|down)") == ("gate", "up", "down")
  assert lora.resolve_targets("all") == lora.TARGETS
  with pytest.raises(ValueError, match="config.lora.target_modules: 'qkv' is not one of"):
    lora.resolve_targets("qkv")
  cfg = dataclasses.replace(LORA, lora_targets=("q", "v"))
  full = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param))  # Shapes.
  base, adapters = lora.split(full)
  assert sorted(adapters["blocks"][1]["attn"]) == ["q_lora_a", "q_lora_b", "v_lora_a", "v_lora_b"]
  assert "mlp" not in adapters["blocks"][1]
  assert jax.tree.structure(lora.join(base, adapters)) == jax.tree.structure(full)


@pytest.mark.parametrize("qtype,tol", [("int8", 0.05), ("nf4", 1.0)])
def test_quantized_base(qtype, tol):
  """Per-output-channel absmax: int8 keeps logits within a few hundredths on this model; 4-bit (nf4) within ~1.
  (int4 takes the same path with another qwix qtype; the command-line QLoRA run used it.)"""
  lora_graphdef, full = _params(LORA)
  base, adapters = lora.split(full)
  ref = nnx.merge(lora_graphdef, full)(TOKENS)
  quantized = lora.quantize_base(base, qtype)
  q = quantized["blocks"][0]["attn"]["q"]
  assert q.qvalue.shape == (32, 4, 8) and q.scale.shape == (1, 4, 8)  # one scale per output channel
  out = jax.jit(lambda b, a: nnx.merge(lora_graphdef, lora.join(b, a))(TOKENS))(quantized, adapters)
  err = float(jnp.abs(out - ref).max())
  assert 0 < err < tol, err


def test_peft_adapter_loads_in_peft_with_the_same_logits(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  lora_graphdef, full = _params(LORA)
  base, adapters = lora.split(full)
  adapters = _trained_adapters(adapters)
  hf.save_pretrained(CFG, str(tmp_path / "base"), base)
  hf.save_peft_adapter(LORA, adapters, str(tmp_path / "adapter"), base_model=str(tmp_path / "base"))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")).float()
  model = peft.PeftModel.from_pretrained(model, str(tmp_path / "adapter")).eval()
  with torch.no_grad():
    got = model(torch.tensor(np.asarray(TOKENS))).logits.numpy()
  want = np.asarray(nnx.merge(lora_graphdef, lora.join(base, adapters))(TOKENS))
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_bench_lora_counts():
  """The tiny preset (D=128, H=4 x 32, K=2 x 32, F=384, L=2), rank 4. Adapter values per layer:
  q 128*4 + 4*128 = 1024, k and v 128*4 + 4*64 = 768 each, o 128*4 + 4*128 = 1024,
  gate and up 128*4 + 4*384 = 2048 each, down 384*4 + 4*128 = 2048 -> 9728; two layers -> 19456."""
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "bench_lora.py")
  spec = importlib.util.spec_from_file_location("bench_lora", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  plans = bench.plans("tiny", 4)
  assert plans["lora"]["trained"] == plans["qlora"]["trained"] == 19456
  assert plans["lora"]["frozen"] == plans["full"]["trained"]
  assert plans["qlora"]["bytes"] < plans["lora"]["bytes"] < plans["full"]["bytes"]
