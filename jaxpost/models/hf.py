"""Hugging Face checkpoints in and out: `config.json` <-> ModelConfig, safetensors <-> parameters.

This is the only module that knows HF names. Import reads one tensor at a time from the memory-mapped
safetensors and places it straight onto its (sharded) devices, so host memory peaks near one tensor;
export streams the parameters back out one at a time.

Layout conversions (HF linear weights are (out, in); ours are (in, ...out)):

  q_proj.weight (H*hd, D)   <-> attn.q (D, H, hd)        = W^T reshaped
  o_proj.weight (D, H*hd)   <-> attn.o (H, hd, D)        = W^T reshaped
  gate/up_proj (F, D)       <-> mlp.gate/up (D, F)       = W^T
  down_proj (D, F)          <-> mlp.down (F, D)          = W^T
  lm_head.weight (V, D)     <-> unembed (D, V)           = W^T
  q/k/v_proj.bias (N*hd,)   <-> attn.*_bias (N, hd)      reshaped
  norms, embeddings         identical (Gemma's `1 + w` norms store w on both sides)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost.models import lora, safetensors_io
from jaxpost.models.abstract import abstract_model, param_shardings
from jaxpost.models.config import FULL, SLIDING, ModelConfig
from jaxpost.models.safetensors_io import CheckpointError
from jaxpost.models.transformer import Transformer

FAMILIES = {  # HF model_type -> (our family, HF architecture class)
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3_text": ("gemma3", "Gemma3ForCausalLM"),
}
MODEL_TYPES = {family: model_type for model_type, (family, _) in FAMILIES.items()}
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
# Options left at defaults by every supported family; anything else is refused rather than ignored.
_UNSUPPORTED_TRUE = ("mlp_bias", "use_bidirectional_attention")


class UnsupportedModelError(ValueError):
  """config.json names a model type or option jaxpost does not implement."""


# ----------------------------------------------------------------------------- config.json

def read_config(path: str) -> dict:
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise CheckpointError(f"{path}: no config.json (is this a Hugging Face model directory?)")
  try:
    with open(file) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None


def _rope(rope: dict | None, where: str) -> tuple[float | None, tuple]:
  """An HF rope dict (v5 `rope_parameters` entry or v4 `rope_scaling`) -> (theta or None, scaling pairs)."""
  if not rope:
    return None, ()
  rope = dict(rope)
  theta = rope.pop("rope_theta", None)
  kind = rope.get("rope_type", rope.get("type", "default"))
  if kind not in ("default", "linear", "llama3"):
    raise UnsupportedModelError(f"{where}: rope type {kind!r} is not supported (supported: default, linear, llama3)")
  factor = rope.get("partial_rotary_factor", 1.0)
  if factor != 1.0:
    raise UnsupportedModelError(f"{where}: partial_rotary_factor={factor} is not supported (only 1.0)")
  if kind == "default":
    return theta, ()
  keep = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                             "original_max_position_embeddings")}[kind]
  missing = [k for k in keep if k not in rope]
  if missing:
    raise UnsupportedModelError(f"{where}: rope type {kind!r} needs {', '.join(missing)}")
  return theta, tuple(sorted([("rope_type", kind)] + [(k, rope[k]) for k in keep]))


def _layer_types(hf: dict, family: str, n: int, window: int) -> tuple:
  if not window:
    return ()
  if hf.get("layer_types"):
    types = tuple(hf["layer_types"])
  elif family == "mistral":
    types = (SLIDING,) * n
  elif family in ("qwen2", "qwen3"):
    if not hf.get("use_sliding_window", False):
      return ()
    start = hf.get("max_window_layers", n)
    types = tuple(SLIDING if i >= start else FULL for i in range(n))
  elif family == "gemma2":
    types = tuple(SLIDING if i % 2 == 0 else FULL for i in range(n))
  else:  # gemma3: every `pattern`-th layer is global.
    pattern = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6))
    types = tuple(SLIDING if (i + 1) % pattern else FULL for i in range(n))
  return types if SLIDING in types else ()


def config_from_hf(hf: dict, where: str = "config.json", **overrides) -> ModelConfig:
  """ModelConfig from a parsed HF `config.json`; `overrides` set training fields (dtype, attention, ...)."""
  model_type = hf.get("model_type")
  if model_type not in FAMILIES:
    raise UnsupportedModelError(f"{where}: model_type {model_type!r} is not supported; supported: "
                                f"{', '.join(FAMILIES)}")
  family = FAMILIES[model_type][0]
  for key in _UNSUPPORTED_TRUE:
    if hf.get(key):
      raise UnsupportedModelError(f"{where}: {key}=true is not supported for {model_type}")
  if hf.get("attention_bias") and family != "qwen2":
    raise UnsupportedModelError(f"{where}: attention_bias=true (bias on every projection) is not supported "
                                f"for {model_type}")
  act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
  if act not in ACTIVATIONS:
    raise UnsupportedModelError(f"{where}: activation {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
  n, d, heads = hf["num_hidden_layers"], hf["hidden_size"], hf["num_attention_heads"]
  gemma = family in ("gemma2", "gemma3")

  # RoPE: v5 writes `rope_parameters` (per layer type for Gemma 3); v4 `rope_theta` + `rope_scaling`.
  params = hf.get("rope_parameters") or {}
  if SLIDING in params or FULL in params:
    theta, scaling = _rope(params.get(FULL), where)
    local_theta, local_scaling = _rope(params.get(SLIDING), where)
    if local_scaling:
      raise UnsupportedModelError(f"{where}: rope scaling on sliding-window layers is not supported")
  else:
    theta, scaling = _rope(params, where)
    legacy_theta, legacy_scaling = _rope(hf.get("rope_scaling"), where)
    theta, scaling = theta or legacy_theta, scaling or legacy_scaling
    local_theta = hf.get("rope_local_base_freq")
  theta = theta or hf.get("rope_theta", 10000.0)

  window = hf.get("sliding_window") or 0
  if family in ("qwen2", "qwen3") and not hf.get("layer_types") and not hf.get("use_sliding_window", False):
    window = 0
  types = _layer_types(hf, family, n, window)
  values = dict(
      family=family, vocab_size=hf["vocab_size"], d_model=d, num_layers=n, num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim") or d // heads,
      mlp_dim=hf["intermediate_size"], rope_theta=float(theta), rope_scaling=scaling,
      rope_local_theta=float(local_theta or 0.0) if family == "gemma3" else 0.0,
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_embeddings=hf.get("tie_word_embeddings", gemma), qkv_bias=family == "qwen2",
      qk_norm=family in ("qwen3", "gemma3"), norm_plus_one=gemma, post_norms=gemma, embed_scale=gemma,
      mlp_activation=ACTIVATIONS[act],
      query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or 0.0) if gemma else 0.0,
      attn_logit_softcap=float(hf.get("attn_logit_softcapping") or 0.0) if gemma else 0.0,
      final_logit_softcap=float(hf.get("final_logit_softcapping") or 0.0) if gemma else 0.0,
      sliding_window=window if types else 0, layer_types=types if len(set(types)) > 1 else (),
  )
  if types and len(set(types)) == 1:  # All layers sliding (Mistral): no per-layer list needed.
    values["layer_types"] = ()
  values.update(overrides)
  return ModelConfig(**values)


def config_to_hf(cfg: ModelConfig, base: dict | None = None) -> dict:
  """The HF `config.json` dict for `cfg`; keys of `base` (the imported config, if any) that jaxpost does
  not model (token ids, max_position_embeddings, ...) are kept."""
  if cfg.family not in MODEL_TYPES:
    raise UnsupportedModelError(f"cannot export family {cfg.family!r}; supported: {', '.join(MODEL_TYPES)}")
  if cfg.head != "lm":
    raise UnsupportedModelError("only language-model heads export to Hugging Face (model.head='lm')")
  model_type = MODEL_TYPES[cfg.family]
  gemma = cfg.family in ("gemma2", "gemma3")
  out = {k: v for k, v in (base or {}).items() if k not in ("rope_parameters", "torch_dtype")}
  out.update(
      model_type=model_type, architectures=[FAMILIES[model_type][1]], vocab_size=cfg.vocab_size,
      hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.mlp_dim,
      rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, rope_theta=cfg.rope_theta,
      rope_scaling=dict(cfg.rope_scaling) if cfg.rope_scaling else None, dtype=cfg.param_dtype,
  )
  out["hidden_activation" if gemma else "hidden_act"] = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[
      cfg.mlp_activation]
  if gemma:
    scalar = cfg.query_pre_attn_scalar or cfg.head_dim
    out.update(query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
               attn_logit_softcapping=cfg.attn_logit_softcap or None,
               final_logit_softcapping=cfg.final_logit_softcap or None)
  if cfg.family == "gemma3":
    out["rope_local_base_freq"] = cfg.rope_local_theta or cfg.rope_theta
  if cfg.family in ("qwen2", "qwen3"):
    out["use_sliding_window"] = bool(cfg.sliding_window)
    out["max_window_layers"] = next((i for i, t in enumerate(cfg.all_layer_types) if t == SLIDING), cfg.num_layers)
  out["sliding_window"] = cfg.sliding_window or None
  if cfg.family != "mistral":  # (transformers reads a Mistral config with layer_types as Ministral.)
    out["layer_types"] = list(cfg.all_layer_types)
  else:
    out.pop("layer_types", None)
  return out


# ----------------------------------------------------------------------------- parameter names

FLAT = -1  # in-dims of a tensor HF stores flattened (q/k/v biases: (N, hd) <-> (N*hd,)).


def _entries(cfg: ModelConfig) -> list[tuple[tuple, str, int]]:
  """(our path, HF name, in-dims) for every parameter. in-dims = how many leading axes of ours form HF's
  `in` axis of a transposed linear weight; 0 = same layout; FLAT = HF stores it flattened."""
  gemma = cfg.family in ("gemma2", "gemma3")
  block = [(("attn_norm", "weight"), "input_layernorm.weight", 0),
           (("attn", "q"), "self_attn.q_proj.weight", 1), (("attn", "k"), "self_attn.k_proj.weight", 1),
           (("attn", "v"), "self_attn.v_proj.weight", 1), (("attn", "o"), "self_attn.o_proj.weight", 2),
           (("mlp", "gate"), "mlp.gate_proj.weight", 1), (("mlp", "up"), "mlp.up_proj.weight", 1),
           (("mlp", "down"), "mlp.down_proj.weight", 1)]
  if gemma:
    block += [(("mlp_norm", "weight"), "pre_feedforward_layernorm.weight", 0),
              (("post_attn_norm", "weight"), "post_attention_layernorm.weight", 0),
              (("post_mlp_norm", "weight"), "post_feedforward_layernorm.weight", 0)]
  else:
    block += [(("mlp_norm", "weight"), "post_attention_layernorm.weight", 0)]
  if cfg.qkv_bias:
    block += [(("attn", f"{x}_bias"), f"self_attn.{x}_proj.bias", FLAT) for x in "qkv"]
  if cfg.qk_norm:
    block += [(("attn", "q_norm", "weight"), "self_attn.q_norm.weight", 0),
              (("attn", "k_norm", "weight"), "self_attn.k_norm.weight", 0)]
  out = [(("embed", "embedding"), "model.embed_tokens.weight", 0), (("final_norm", "weight"), "model.norm.weight", 0)]
  if not cfg.tie_embeddings and cfg.head == "lm":
    out.append((("unembed",), "lm_head.weight", 1))
  for layer in range(cfg.num_layers):
    for path, name, in_dims in block:
      out.append((("blocks", layer) + path, f"model.layers.{layer}.{name}", in_dims))
  return out


def _to_ours(w: np.ndarray, shape: tuple, in_dims: int) -> np.ndarray:
  return (w.T if in_dims > 0 else w).reshape(shape)


def _to_hf(w: np.ndarray, in_dims: int) -> np.ndarray:
  if in_dims == FLAT:
    return w.reshape(-1)
  if in_dims == 0:
    return w
  return w.reshape(math.prod(w.shape[:in_dims]), -1).T


def _expected_hf_shape(shape: tuple, in_dims: int) -> tuple:
  if in_dims == FLAT:
    return (math.prod(shape),)
  if in_dims == 0:
    return tuple(shape)
  return (math.prod(shape[in_dims:]), math.prod(shape[:in_dims]))


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


# ----------------------------------------------------------------------------- import

def config_from_pretrained(path: str, **overrides) -> ModelConfig:
  return config_from_hf(read_config(path), os.path.join(path, "config.json"), **overrides)


def load_params(path: str, cfg: ModelConfig, shardings=None, *, seed: int = 0) -> dict:
  """The parameters (pure dict, as `nnx.to_pure_dict` of the Transformer) read from `path`'s safetensors.

  Each tensor is read, converted to our layout and `param_dtype`, and put on its devices (its entry of
  `shardings`, a matching pytree of NamedShardings; the default device when None) before the next is
  read. With `scan_layers` the L per-layer tensors of one name are stacked first. A scalar head
  (`head='scalar'`, reward model or critic on an HF language model) starts fresh from `seed`.
  """
  _, shapes, _ = abstract_model(dataclasses.replace(cfg, scan_layers=False))
  reader = safetensors_io.CheckpointReader(path)
  dtype = cfg.weight_dtype
  host: dict = {}
  try:
    for ours, name, in_dims in _entries(cfg):
      shape = _get(shapes, ours).shape
      if name not in reader.keys():
        raise CheckpointError(f"{path}: tensor {name!r} (for {'.'.join(map(str, ours))}, shape {shape}) is missing "
                              "from the checkpoint")
      got = reader.shape(name)
      want = _expected_hf_shape(shape, in_dims)
      if tuple(got) != tuple(want):
        raise CheckpointError(f"{reader.file_of(name)}: tensor {name!r} has shape {tuple(got)}, expected "
                              f"{tuple(want)} from config.json")
      value = _to_ours(reader.get(name), shape, in_dims).astype(dtype, copy=False)
      if cfg.scan_layers and ours[0] == "blocks":
        _set(host, ("blocks", ours[1]) + ours[2:], value)  # Stacked below, once every layer is read.
        continue
      _set(host, ours, _place(value, _get(shardings, ours) if shardings is not None else None))
  finally:
    reader.close()
  if cfg.scan_layers:
    layers = host.pop("blocks")
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *[layers[i] for i in range(cfg.num_layers)])
    host["blocks"] = jax.tree.map(lambda x, s: _place(x, s), stacked,
                                  shardings["blocks"] if shardings is not None else jax.tree.map(lambda _: None, stacked))
  if cfg.head == "scalar":
    w = np.random.default_rng(seed).normal(0.0, cfg.d_model ** -0.5, (cfg.d_model,))
    host["score_w"] = _place(w.astype(dtype), shardings["score_w"] if shardings is not None else None)
    host["score_b"] = _place(np.zeros((), dtype), shardings["score_b"] if shardings is not None else None)
  return host


def _place(value: np.ndarray, sharding) -> jax.Array:
  return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)


def from_pretrained(path: str, dtype: str = "float32", mesh: jax.sharding.Mesh | None = None, *,
                    param_dtype: str | None = None, **overrides):
  """A jaxpost Transformer (Flax NNX module) with the weights of the HF checkpoint directory `path`.

  `model(tokens)` with int32 (B, T) returns f32 logits (B, T, V). `dtype` is the compute dtype; weights
  are stored in `param_dtype` (default: `dtype`). With a `mesh`, every weight is created sharded by the
  logical-axis rules of jaxpost.mesh.
  """
  cfg = config_from_pretrained(path, dtype=dtype, param_dtype=param_dtype or dtype, **overrides)
  shardings = param_shardings(cfg, mesh) if mesh is not None else None
  params = load_params(path, cfg, shardings)
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------- export

def hf_tensors(cfg: ModelConfig, params: dict, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, host array) pairs, fetched from the devices one at a time."""
  for ours, name, in_dims in _entries(cfg):
    if cfg.scan_layers and ours[0] == "blocks":
      value = _get(params["blocks"], ours[2:])[ours[1]]
    else:
      value = _get(params, ours)
    w = np.asarray(jax.device_get(value))
    if dtype is not None:
      w = w.astype(dtype)
    yield name, _to_hf(w, in_dims)


def save_pretrained(model_or_cfg, path: str, params: dict | None = None, *, base_config: dict | None = None,
                    dtype: str | None = None, max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes `config.json` and safetensors (sharded with an index past `max_shard_bytes`) that
  `transformers.AutoModelForCausalLM.from_pretrained(path)` loads. Pass a Transformer module, or a
  ModelConfig and its params (pure dict). `dtype` converts the weights (default: as stored)."""
  if params is None:
    model = model_or_cfg
    cfg = model.cfg
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  else:
    cfg = model_or_cfg
  hf = config_to_hf(cfg, base_config)
  np_dtype = None
  if dtype is not None:
    np_dtype = jnp.dtype(dtype)
    hf["dtype"] = np_dtype.name  # "bfloat16" whether dtype came as that string or as jnp.bfloat16.
  os.makedirs(path, exist_ok=True)
  files = safetensors_io.write(path, hf_tensors(cfg, params, np_dtype), max_shard_bytes=max_shard_bytes)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  return ["config.json"] + files


# ----------------------------------------------------------------------------- LoRA adapters (PEFT)

def save_peft_adapter(cfg: ModelConfig, adapters: dict, path: str, *, base_model: str = "") -> list[str]:
  """Writes a PEFT LoRA directory (`adapter_config.json` + `adapter_model.safetensors`) that
  `peft.PeftModel.from_pretrained(base, path)` loads on the exported (or original) HF base model.

  PEFT stores lora_A.weight (r, in) and lora_B.weight (out, r) with delta W = (alpha / r) B A; ours are
  A (in, r) and B (r, out), so each is transposed.
  """
  def tensors():
    for layer in range(cfg.num_layers):
      for group, weights, hf_group in (("attn", lora.ATTENTION_WEIGHTS, "self_attn"), ("mlp", lora.MLP_WEIGHTS, "mlp")):
        for name in weights:
          if name not in cfg.lora_targets:
            continue
          prefix = f"base_model.model.model.layers.{layer}.{hf_group}.{lora.HF_NAMES[name]}"
          for suffix, hf_suffix in (("_lora_a", "lora_A"), ("_lora_b", "lora_B")):
            if cfg.scan_layers:
              value = adapters["blocks"][group][name + suffix][layer]
            else:
              value = adapters["blocks"][layer][group][name + suffix]
            yield f"{prefix}.{hf_suffix}.weight", np.asarray(jax.device_get(value)).T

  os.makedirs(path, exist_ok=True)
  safetensors_io._write_file(os.path.join(path, "adapter_model.safetensors"), list(tensors()), None)  # noqa: SLF001
  config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha,
            "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
            "target_modules": [lora.HF_NAMES[t] for t in cfg.lora_targets], "base_model_name_or_path": base_model}
  with open(os.path.join(path, "adapter_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  return ["adapter_config.json", "adapter_model.safetensors"]
