"""Hugging Face interop: every family's logits equal transformers' (f32, random weights with each
family's unusual options switched on), export round-trips, bad checkpoints fail naming tensor and file,
and greedy KV-cache decoding equals transformers' `generate`."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxpost import sampling  # noqa: E402
from jaxpost.models import hf, safetensors_io  # noqa: E402
from jaxpost.models.safetensors_io import CheckpointError  # noqa: E402

V, T = 97, 12
COMMON = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2)
# Each family with its unusual options on; sliding windows (5) shorter than the sequence (12) so they bite.
FAMILIES = {
    "llama3": lambda: transformers.LlamaConfig(
        **COMMON, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}),
    "llama_tied": lambda: transformers.LlamaConfig(**COMMON, tie_word_embeddings=True),
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=5, head_dim=24),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=16),
    "gemma2": lambda: transformers.Gemma2Config(**COMMON, head_dim=16, sliding_window=5, query_pre_attn_scalar=24,
                                                attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **COMMON, head_dim=16, sliding_window=5, query_pre_attn_scalar=24,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0}}),
}


def _hf_model(family: str, directory: str):
  """A random f32 HF model saved to `directory`; weights jittered so norms and biases are not at init."""
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(FAMILIES[family]()).float().eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  model.save_pretrained(directory)
  return model


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


TOKENS = np.random.RandomState(0).randint(0, V, (2, T))
# Cheaper XLA:CPU codegen for the jitted forwards (as kernels/test_attention.py).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _logits(model, tokens: np.ndarray) -> np.ndarray:
  """The jaxpost model's logits, in one compiled program (not op by op)."""
  graphdef, state = nnx.split(model)
  tokens = jnp.asarray(tokens, jnp.int32)
  forward = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
  return np.asarray(forward.lower(state, tokens).compile(compiler_options=FAST_COMPILE)(state, tokens))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers_and_export_round_trips(family, tmp_path):
  ref_model = _hf_model(family, str(tmp_path / "hf"))
  ref = _hf_logits(ref_model, TOKENS)
  model = hf.from_pretrained(str(tmp_path / "hf"))
  out = _logits(model, TOKENS)  # (B, T, V)
  assert np.abs(out - ref).max() <= 1e-4, np.abs(out - ref).max()

  hf.save_pretrained(model, str(tmp_path / "out"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).float().eval()
  assert type(reloaded) is type(ref_model)
  assert np.abs(_hf_logits(reloaded, TOKENS) - ref).max() <= 1e-4


def test_sliding_window_and_softcaps_are_read_from_config(tmp_path):
  _hf_model("gemma2", str(tmp_path))
  cfg = hf.config_from_pretrained(str(tmp_path))
  # Gemma 2 alternates sliding (even layers) and global attention.
  assert cfg.all_layer_types == ("sliding_attention", "full_attention") * 2
  assert (cfg.sliding_window, cfg.attn_logit_softcap, cfg.final_logit_softcap) == (5, 2.0, 3.0)
  assert cfg.attention_scale == pytest.approx(24 ** -0.5)
  assert cfg.norm_plus_one and cfg.post_norms and cfg.embed_scale and cfg.mlp_activation == "gelu_tanh"


def test_sharded_checkpoint_with_index_and_mesh_and_scan(tmp_path):
  ref = _hf_logits(_hf_model("qwen3", str(tmp_path / "hf")), TOKENS)
  model = hf.from_pretrained(str(tmp_path / "hf"))
  files = hf.save_pretrained(model, str(tmp_path / "sharded"), max_shard_bytes=60_000)
  assert safetensors_io.INDEX_FILE in files and len(files) > 4  # config + index + several shards
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  sharded = hf.from_pretrained(str(tmp_path / "sharded"), mesh=mesh)
  q = sharded.blocks[0].attn.q[...]
  assert q.sharding.spec != jax.sharding.PartitionSpec() and len(q.addressable_shards) == 8
  np.testing.assert_allclose(_logits(sharded, TOKENS), ref, atol=1e-4)
  scanned = hf.from_pretrained(str(tmp_path / "sharded"), scan_layers=True)
  assert scanned.blocks.attn.q[...].shape[0] == 4  # (L, D, H, hd)
  np.testing.assert_allclose(_logits(scanned, TOKENS), ref, atol=1e-4)
  # ... and transformers reads the sharded export too.
  again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "sharded")).float().eval()
  np.testing.assert_allclose(_hf_logits(again, TOKENS), ref, atol=1e-4)


@pytest.fixture
def llama_dir(tmp_path):
  _hf_model("llama_tied", str(tmp_path))
  return tmp_path


def test_truncated_file_names_tensor_and_file(llama_dir):
  path = llama_dir / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) - 100])
  with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated: tensor '.*' ends at byte"):
    hf.from_pretrained(str(llama_dir))


def test_corrupt_header_names_file(llama_dir):
  path = llama_dir / "model.safetensors"
  path.write_bytes(b"\xff" * 64)
  with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt safetensors header"):
    hf.from_pretrained(str(llama_dir))


def test_missing_tensor_and_shape_mismatch(llama_dir):
  reader = safetensors_io.SafetensorsFile(str(llama_dir / "model.safetensors"))
  tensors = {k: np.array(reader.get(k)) for k in reader.keys()}
  reader.close()
  missing = dict(tensors)
  del missing["model.layers.1.mlp.up_proj.weight"]
  safetensors_io.write(str(llama_dir), iter(missing.items()))
  with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' .* is missing"):
    hf.from_pretrained(str(llama_dir))
  wrong = dict(tensors)
  wrong["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)  # 1 kv head, not 2
  safetensors_io.write(str(llama_dir), iter(wrong.items()))
  with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' "
                                            r"has shape \(16, 64\), expected \(32, 64\)"):
    hf.from_pretrained(str(llama_dir))


def test_unknown_model_type_and_unsupported_option(tmp_path):
  config = {"model_type": "gpt2", "vocab_size": 10}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(hf.UnsupportedModelError, match=r"model_type 'gpt2' is not supported; supported: llama, "):
    hf.config_from_pretrained(str(tmp_path))
  config = {**FAMILIES["llama_tied"]().to_dict(), "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(hf.UnsupportedModelError, match=r"rope type 'yarn' is not supported"):
    hf.config_from_pretrained(str(tmp_path))


@pytest.mark.parametrize("family", ["llama_tied", "gemma2"])
def test_greedy_kv_cache_decoding_equals_transformers_generate(family, tmp_path):
  """Prompts of different lengths (left-padded in one batch); gemma2 adds a sliding window shorter than
  the sequence and both soft-caps to the cached decode path."""
  ref_model = _hf_model(family, str(tmp_path))
  model = hf.from_pretrained(str(tmp_path))
  graphdef, params = nnx.split(model, nnx.Param)
  prompts = [[5, 17, 3, 88, 41, 9, 2], [60, 7, 33]]
  out = sampling.generate(graphdef, nnx.to_pure_dict(params), prompts,
                          sampling.SamplingConfig(max_new_tokens=8, temperature=0.0))
  for prompt, completion in zip(prompts, out.completions()):
    with torch.no_grad():
      ref = ref_model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
    assert list(completion) == ref[0, len(prompt):].tolist()


def test_dtype_as_a_type_or_a_string_round_trips(llama_dir, tmp_path):
  """jnp.float32 and "float32" are one setting: the config stores the name, so save_pretrained's config.json
  serialises (it raised TypeError on the type before), and the exported weights reload to the same logits."""
  model = hf.from_pretrained(str(llama_dir), dtype=jnp.float32)
  assert (model.cfg.dtype, model.cfg.param_dtype) == ("float32", "float32")
  hf.save_pretrained(model, str(tmp_path / "out"), dtype=jnp.bfloat16)
  assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
  again = hf.from_pretrained(str(tmp_path / "out"), dtype="float32")
  np.testing.assert_allclose(np.asarray(again(TOKENS)), np.asarray(model(TOKENS)), atol=0.1)  # bf16 weights.
  with pytest.raises(ValueError, match="ModelConfig.dtype: 'float33' is not a dtype"):
    hf.from_pretrained(str(llama_dir), dtype="float33")
