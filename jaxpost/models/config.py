"""ModelConfig: the architecture as a frozen dataclass; family differences are fields, not subclasses."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp


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
  rope_scaling: tuple | None = None   # Hook for RoPE scaling (e.g. Llama 3.1); None = plain RoPE.
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  qkv_bias: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention: str = "xla"
  logprob_impl: str = "auto"
  scan_layers: bool = False
  remat: str = "none"
  head: str = "lm"            # lm: logits over the vocabulary | scalar: one score per token (reward model, critic).

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

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
    attn = d * (h + 2 * k) * hd + h * hd * d + (self.qkv_bias and (h + 2 * k) * hd or 0)
    block = attn + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_embeddings else 2) + self.num_layers * block + d
