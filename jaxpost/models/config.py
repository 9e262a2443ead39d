"""ModelConfig: the architecture as a frozen dataclass; family differences are fields, not subclasses.

The families (Llama, Mistral, Qwen2/2.5, Qwen3, Gemma 2, Gemma 3) differ only in the switches below:

  field                  llama  mistral  qwen2  qwen3  gemma2  gemma3
  qkv_bias                 -       -       x      -      -       -
  qk_norm                  -       -       -      x      -       x
  sliding_window / types   -      all    (opt)  (opt)  alternate  5 local : 1 global
  norm_plus_one, embed_scale, post_norms, gelu_tanh MLP, query_pre_attn_scalar:   gemma2, gemma3
  attn / final logit soft-capping:                                                gemma2
  rope_local_theta (own RoPE base on sliding layers):                             gemma3

`jaxpost/models/hf.py` is the only place that maps Hugging Face `config.json` onto these fields.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  family: str = "llama"
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  # RoPE frequency rescaling as sorted (key, value) pairs, e.g. (("factor", 8.0), ("rope_type", "llama3"), ...);
  # () = plain RoPE. Applies to full-attention layers (and to all layers when rope_local_theta is 0).
  rope_scaling: tuple = ()
  rope_local_theta: float = 0.0       # RoPE base of sliding-window layers (Gemma 3); 0 = rope_theta.
  norm_eps: float = 1e-5
  norm_plus_one: bool = False         # RMSNorm scales by (1 + w) with w initialised to 0 (Gemma).
  tie_embeddings: bool = True
  qkv_bias: bool = False              # Bias on q/k/v projections (Qwen2).
  qk_norm: bool = False               # RMSNorm over head_dim on q and k before RoPE (Qwen3, Gemma 3).
  post_norms: bool = False            # Extra RMSNorm on the attention and MLP outputs (Gemma 2/3).
  embed_scale: bool = False           # h_0 = E[tokens] * sqrt(d_model) (Gemma).
  mlp_activation: str = "silu"        # silu (SwiGLU) | gelu_tanh (GeGLU, Gemma).
  query_pre_attn_scalar: float = 0.0  # Attention scale 1/sqrt(this); 0 = 1/sqrt(head_dim).
  attn_logit_softcap: float = 0.0     # c * tanh(scores / c) on attention scores; 0 = off (Gemma 2).
  final_logit_softcap: float = 0.0    # c * tanh(logits / c) on the output logits; 0 = off (Gemma 2).
  sliding_window: int = 0             # Keys within this many positions of the query; 0 = off.
  layer_types: tuple = ()             # Per layer SLIDING or FULL; () = all SLIDING if sliding_window else all FULL.
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention: str = "xla"
  cudnn_max_segments: int = 0         # cuDNN's packed layout for rows of at most this many segment runs; 0 = mask.
  logprob_impl: str = "auto"
  scan_layers: bool = False
  remat: str = "none"
  head: str = "lm"            # lm: logits over the vocabulary | scalar: one score per token (reward model, critic).
  lora_rank: int = 0                  # LoRA adapters of this rank on `lora_targets` (0 = none); see models/lora.py.
  lora_alpha: float = 16.0            # Adapter scale alpha / rank.
  lora_targets: tuple = ("q", "k", "v", "o", "gate", "up", "down")

  def __post_init__(self):
    # A dtype may be spelt as a string ("bfloat16") or a numpy/jax type (jnp.bfloat16); it is stored once as
    # its canonical name, so the config serialises (model.json, config.json) whichever spelling came in.
    for name in ("dtype", "param_dtype"):
      try:
        object.__setattr__(self, name, jnp.dtype(getattr(self, name)).name)
      except TypeError:
        raise ValueError(f"ModelConfig.{name}: {getattr(self, name)!r} is not a dtype") from None
    if self.layer_types and len(self.layer_types) != self.num_layers:
      raise ValueError(f"ModelConfig.layer_types: {len(self.layer_types)} entries for {self.num_layers} layers")
    bad = [t for t in self.layer_types if t not in (SLIDING, FULL)]
    if bad:
      raise ValueError(f"ModelConfig.layer_types: {bad[0]!r} is not one of {SLIDING}, {FULL}")
    if SLIDING in self.layer_types and self.sliding_window <= 0:
      raise ValueError("ModelConfig.layer_types: sliding layers need sliding_window > 0")
    if self.mlp_activation not in ("silu", "gelu_tanh"):
      raise ValueError(f"ModelConfig.mlp_activation: {self.mlp_activation!r} is not one of silu, gelu_tanh")
    if self.scan_layers and len(set(self.all_layer_types)) > 1:
      raise ValueError("config.model.scan_layers: this model mixes sliding and full attention layers, which a "
                       "scan over identical layers cannot express; set scan_layers=False")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def all_layer_types(self) -> tuple:
    if self.layer_types:
      return tuple(self.layer_types)
    return ((SLIDING if self.sliding_window > 0 else FULL),) * self.num_layers

  def layer_window(self, layer: int) -> int | None:
    """The sliding window of layer `layer`, or None for full attention."""
    return self.sliding_window if self.all_layer_types[layer] == SLIDING else None

  def layer_rope(self, layer: int) -> tuple[float, tuple]:
    """(theta, scaling) of layer `layer`: Gemma 3's sliding layers use their own base and no scaling."""
    if self.rope_local_theta and self.all_layer_types[layer] == SLIDING:
      return self.rope_local_theta, ()
    return self.rope_theta, self.rope_scaling

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  @property
  def attention_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  @classmethod
  def from_config(cls, model_cfg, vocab_size: int | None = None) -> "ModelConfig":
    """From the `config.model` group; `vocab_size` fills a `-1` from the tokenizer."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in model_cfg.items() if k in fields}
    if values.get("vocab_size", -1) == -1:
      if vocab_size is None:
        raise ValueError("config.model.vocab_size: -1 needs a tokenizer to take the size from")
      values["vocab_size"] = vocab_size
    return cls(**values)

  def num_params(self) -> int:
    """Parameter count (embeddings counted once when tied)."""
    d, h, k, hd, f, v = self.d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim, self.vocab_size
    attn = d * (h + 2 * k) * hd + h * hd * d + (self.qkv_bias and (h + 2 * k) * hd or 0) + self.qk_norm * 2 * hd
    block = attn + 3 * d * f + (4 if self.post_norms else 2) * d
    if self.head == "scalar":
      out = d + 1
    else:
      out = 0 if self.tie_embeddings else v * d
    return v * d + out + self.num_layers * block + d
