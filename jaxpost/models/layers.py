"""Building blocks of the transformer: RMSNorm, RoPE (plain, linear, Llama 3.1), embeddings, gated MLP.

Every parameter is an `nnx.Param` with `logical=(...)` axis names (see jaxpost/mesh.py). Weights are
stored in `param_dtype` and cast to the compute dtype at use (bf16 compute, f32 master weights).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, shape: tuple, logical: tuple, dtype, *, std: float | None = None,
          init: str = "normal") -> nnx.Param:
  """A parameter with logical axes: truncated normal with `std` (default 1/sqrt(fan_in)), or ones/zeros."""
  if init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    std = std if std is not None else shape[0] ** -0.5
    value = std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32)
    value = value.astype(dtype)
  return nnx.Param(value, logical=logical)


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * w, computed in f32 (Zhang & Sennrich, 2019).

  With `plus_one` (Gemma) the scale is (1 + w) and w starts at 0, so a stored w means what HF stores."""

  def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs, plus_one: bool = False):
    self.eps = eps
    self.plus_one = plus_one
    self.weight = param(rngs, (dim,), ("norm",), param_dtype, init="zeros" if plus_one else "ones")

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    w = self.weight[...].astype(jnp.float32)
    return (y * (1.0 + w if self.plus_one else w)).astype(x.dtype)


ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_frequencies(head_dim: int, theta: float, scaling: tuple = ()) -> jax.Array:
  """inv_freq_i = theta^(-2i/d), i < d/2 (Su et al., 2021), then rescaled per `scaling` ((key, value) pairs):

    linear: inv_freq / factor (position interpolation, Chen et al., 2023).
    llama3: wavelengths 2 pi / inv_freq longer than L / low_freq_factor are divided by `factor`, shorter
            than L / high_freq_factor kept, and in between interpolated smoothly (L = the original
            context length; Llama 3.1 report).
  """
  inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # (D/2,)
  s = dict(scaling)
  kind = s.get("rope_type", s.get("type", "default"))
  if kind == "default":
    return inv
  if kind == "linear":
    return inv / s["factor"]
  if kind == "llama3":
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    context = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv  # (D/2,)
    scaled = jnp.where(wavelen > context / low, inv / factor, inv)
    smooth = (context / wavelen - low) / (high - low)
    medium = (wavelen >= context / high) & (wavelen <= context / low)
    return jnp.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
  raise ValueError(f"rope_scaling type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotates pairs (x_i, x_{i+d/2}) by angle positions * inv_freq_i (the 'half-split' layout HF uses).

  x: (B, T, N, D); positions: (B, T) int.
  """
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # (B, T, D/2)
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]  # (B, T, 1, D/2)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # (B, T, N, D/2) each
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Embed(nnx.Module):
  """Token embedding table E (V, D); `attend` gives logits h @ E^T for tied unembedding."""

  def __init__(self, vocab_size: int, dim: int, *, param_dtype, rngs: nnx.Rngs):
    self.embedding = param(rngs, (vocab_size, dim), ("vocab", "embed"), param_dtype, std=dim ** -0.5)

  def __call__(self, tokens: jax.Array, dtype) -> jax.Array:
    return jnp.take(self.embedding[...], tokens, axis=0).astype(dtype)  # (B, T, D)


ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}


class GatedMLP(nnx.Module):
  """MLP(x) = W_down (act(x W_gate) * (x W_up)): SwiGLU with silu, GeGLU with tanh-gelu (Shazeer, 2020)."""

  def __init__(self, dim: int, hidden: int, *, param_dtype, rngs: nnx.Rngs, activation: str = "silu", cfg=None):
    from jaxpost.models import lora
    self.activation = activation
    self.lora_scale = cfg.lora_scale if cfg is not None else 0.0
    self.gate = param(rngs, (dim, hidden), ("embed", "mlp"), param_dtype)
    self.up = param(rngs, (dim, hidden), ("embed", "mlp"), param_dtype)
    self.down = param(rngs, (hidden, dim), ("mlp", "embed"), param_dtype)
    if cfg is not None:
      lora.add_adapters(self, cfg, lora.MLP_WEIGHTS, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    from jaxpost.models.lora import project
    shape = x.shape
    x = x.reshape(-1, shape[-1])  # (B*T, D): plain 2-D GEMMs lower best on every backend.
    g = project(self, "gate", x, 1, self.lora_scale)  # (B*T, F)
    u = project(self, "up", x, 1, self.lora_scale)  # (B*T, F)
    return project(self, "down", ACTIVATIONS[self.activation](g) * u, 1, self.lora_scale).reshape(shape)  # (B, T, D)
