"""Decoder-only transformer in Flax NNX (Llama, Mistral, Qwen2/3 and Gemma 2/3 via ModelConfig switches).

  h_0 = E[tokens] (* sqrt(D) for Gemma)
  h_{l+1} = h_l' + post(MLP(norm(h_l'))),  h_l' = h_l + post(Attn(norm(h_l), positions, segment_ids))
  logits = softcap(norm(h_L) @ E^T (tied) or @ W_out)

`post` is an extra RMSNorm in Gemma 2/3 (identity otherwise); each layer's attention may be global or
a sliding window, with its own RoPE base (Gemma 3).

Inputs are tokens, `positions` (RoPE; restart at 0 per packed example) and `segment_ids` (packed
examples never attend to each other). Layers are a list of blocks, or one stacked block scanned
with `lax.scan` (`scan_layers`); each block call can be rematerialised (`remat`).
`decode_hidden` is the sampling forward: the same blocks, reading and writing a KV cache
(jaxpost/models/kv_cache.py); the training path never sees a cache.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpost import mesh as mesh_lib
from jaxpost.models import attention as attention_lib
from jaxpost.models import kv_cache
from jaxpost.models import lora
from jaxpost.models.config import ModelConfig
from jaxpost.models.layers import Embed, GatedMLP, RMSNorm, apply_rope, param, rope_inv_frequencies

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each block's input; recompute the rest
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep the matmul outputs
    # keep the matmul outputs in pinned host memory: device memory of "full", recompute of "dots", paid for
    # in host<->device copies (which XLA can overlap with the following layers' compute)
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE, optional q/k/v bias, q/k RMSNorm, soft-capping and window."""

  def __init__(self, cfg: ModelConfig, layer: int = 0, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.sliding_window = cfg.layer_window(layer)
    self.rope_theta, self.rope_scaling = cfg.layer_rope(layer)
    d, h, k, hd, pd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.weight_dtype
    self.q = param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), pd)
    self.k = param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), pd)
    self.v = param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), pd)
    self.o = param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), pd, std=(h * hd) ** -0.5)
    if cfg.qkv_bias:
      self.q_bias = param(rngs, (h, hd), ("heads", "head_dim"), pd, init="zeros")
      self.k_bias = param(rngs, (k, hd), ("kv_heads", "head_dim"), pd, init="zeros")
      self.v_bias = param(rngs, (k, hd), ("kv_heads", "head_dim"), pd, init="zeros")
    if cfg.qk_norm:
      norm = dict(eps=cfg.norm_eps, param_dtype=pd, rngs=rngs, plus_one=cfg.norm_plus_one)
      self.q_norm = RMSNorm(hd, **norm)
      self.k_norm = RMSNorm(hd, **norm)
    lora.add_adapters(self, cfg, lora.ATTENTION_WEIGHTS, rngs)

  def qkv(self, x, positions):
    """x (B, T, D) at positions (B, T) -> q (B, T, H, hd), k, v (B, T, K, hd): the projections (and LoRA
    adapters), q/k/v bias, q/k RMSNorm and this layer's RoPE. Shared by every cache layout."""
    cfg, dt = self.cfg, x.dtype
    b, t, d = x.shape
    x2 = x.reshape(b * t, d)  # 2-D GEMMs lower best on every backend.
    s = cfg.lora_scale
    q = lora.project(self, "q", x2, 1, s).reshape(b, t, cfg.num_heads, cfg.head_dim)  # (B, T, H, hd)
    k = lora.project(self, "k", x2, 1, s).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)  # (B, T, K, hd)
    v = lora.project(self, "v", x2, 1, s).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)  # (B, T, K, hd)
    if cfg.qkv_bias:
      q, k, v = q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt), v + self.v_bias[...].astype(dt)
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    inv_freq = rope_inv_frequencies(cfg.head_dim, self.rope_theta, self.rope_scaling)
    return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v

  def output(self, out):
    """Attention output (B, T, H, hd) -> (B, T, D) through the o projection."""
    b, t = out.shape[:2]
    return lora.project(self, "o", out.reshape(b * t, -1), 2, self.cfg.lora_scale).reshape(b, t, -1)

  def __call__(self, x, positions, segment_ids, cache: kv_cache.LayerCache | None = None):
    """x (B, T, D) -> (B, T, D); with a cache -> ((B, T, D), (k, v) stacks with this layer's T columns written).

    With a cache, T > 1 is a prefill into an empty cache (the new tokens attend only to each other)
    and T == 1 a decode step (the query attends to the cached columns `cache.visible`)."""
    cfg = self.cfg
    b, t, _ = x.shape
    q, k, v = self.qkv(x, positions)
    options = dict(sliding_window=self.sliding_window, logit_softcap=cfg.attn_logit_softcap or None,
                   sm_scale=cfg.attention_scale)
    if cache is not None:
      k_all, v_all = kv_cache.write_layer(cache.k, cache.v, cache.layer, cache.index, k, v)
    if cache is None or t > 1:
      out = attention_lib.attend(cfg.attention, q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                                 causal=True, cudnn_max_segments=cfg.cudnn_max_segments, **options)  # (B, T, H, hd)
    else:  # One query per row is memory-bound: plain XLA over the cache, whatever `cfg.attention` says.
      visible = cache.visible
      if self.sliding_window is not None:  # (B, S): keys within the window of this query's position.
        visible = visible * (cache.positions > positions[:, -1:] - self.sliding_window)
      options["sliding_window"] = None  # Columns are not positions here; the window is in `visible`.
      keys, values = kv_cache.layer_keys_values(cache._replace(k=k_all, v=v_all))  # (B, S, K, hd)
      out = attention_lib.xla_attention(q, keys, values, causal=False,
                                        q_segment_ids=jnp.ones((b, 1), jnp.int32),
                                        kv_segment_ids=visible.astype(jnp.int32), **options)  # (B, 1, H, hd)
    out = self.output(out)  # (B, T, D)
    return out if cache is None else (out, (k_all, v_all))


class Block(nnx.Module):
  """Pre-norm residual block: attention then gated MLP; Gemma adds a norm on each branch's output."""

  def __init__(self, cfg: ModelConfig, layer: int = 0, *, rngs: nnx.Rngs):
    norm = dict(eps=cfg.norm_eps, param_dtype=cfg.weight_dtype, rngs=rngs, plus_one=cfg.norm_plus_one)
    self.attn_norm = RMSNorm(cfg.d_model, **norm)
    self.attn = Attention(cfg, layer, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, **norm)
    self.mlp = GatedMLP(cfg.d_model, cfg.mlp_dim, param_dtype=cfg.weight_dtype, rngs=rngs,
                        activation=cfg.mlp_activation, cfg=cfg)
    self.post_norms = cfg.post_norms
    if cfg.post_norms:
      self.post_attn_norm = RMSNorm(cfg.d_model, **norm)
      self.post_mlp_norm = RMSNorm(cfg.d_model, **norm)

  def _post(self, name: str, y):
    return getattr(self, name)(y) if self.post_norms else y

  def __call__(self, x, positions, segment_ids, cache: kv_cache.LayerCache | None = None):
    if cache is None:
      x = x + self._post("post_attn_norm", self.attn(self.attn_norm(x), positions, segment_ids))
      return x + self._post("post_mlp_norm", self.mlp(self.mlp_norm(x)))
    a, kv = self.attn(self.attn_norm(x), positions, segment_ids, cache)
    x = x + self._post("post_attn_norm", a)
    return x + self._post("post_mlp_norm", self.mlp(self.mlp_norm(x))), kv


# The residual stream (B, T, D) between blocks: rows over (data, fsdp), D whole, so FSDP all-gathers
# weights. Left to sharding propagation, D was split over fsdp like the weights, and every projection
# all-reduced activations instead (tensor parallelism by accident; tests/models/test_transformer.py).
RESIDUAL_LOGICAL = ("batch", None, None)


def _block_fn(graphdef, remat: str):
  """(x, block_state, positions, segment_ids) -> x as a pure function, rematerialised if asked."""
  def apply(x, block_state, positions, segment_ids):
    return mesh_lib.shard_like(nnx.merge(graphdef, block_state)(x, positions, segment_ids), RESIDUAL_LOGICAL)
  if remat == "none":
    return apply
  return jax.checkpoint(apply, policy=REMAT_POLICIES[remat])


class Transformer(nnx.Module):
  """The causal LM. `__call__` gives logits (B, T, V); `hidden` gives final-normed states (B, T, D)
  and `unembedding()` the (D, V) matrix, so log-prob kernels can skip materialising logits."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = cfg.weight_dtype
    self.embed = Embed(cfg.vocab_size, cfg.d_model, param_dtype=pd, rngs=rngs)
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def stacked(rngs):
        return Block(cfg, rngs=rngs)
      self.blocks = stacked(rngs)  # Every param gains a leading (L,) axis.
    else:
      self.blocks = nnx.List([Block(cfg, layer, rngs=rngs) for layer in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd, rngs=rngs, plus_one=cfg.norm_plus_one)
    if cfg.head == "scalar":  # Reward model / critic: r = h . w_score + b_score.
      self.score_w = param(rngs, (cfg.d_model,), ("embed",), pd, std=cfg.d_model ** -0.5)
      self.score_b = param(rngs, (), (), pd, init="zeros")
    elif not cfg.tie_embeddings:
      self.unembed = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pd)

  def hidden(self, tokens, positions=None, segment_ids=None):
    """tokens, positions, segment_ids: (B, T) int32 -> final-normed hidden states (B, T, D)."""
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions is None else positions
    segment_ids = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids
    x = mesh_lib.shard_like(self._embed(tokens), RESIDUAL_LOGICAL)  # (B, T, D)
    if self.cfg.scan_layers:
      graphdef, state = nnx.split(self.blocks)
      fn = _block_fn(graphdef, self.cfg.remat)
      x, _ = jax.lax.scan(lambda h, s: (fn(h, s, positions, segment_ids), None), x, state)
    else:
      for block in self.blocks:
        graphdef, state = nnx.split(block)
        x = _block_fn(graphdef, self.cfg.remat)(x, state, positions, segment_ids)
    return self.final_norm(x)

  def decode_hidden(self, tokens, positions, segment_ids, cache: dict):
    """The forward of T new tokens (B, T) against a KV cache -> (hidden (B, T, D), cache with them written).

    T > 1 is the prefill and must be the first write (cache["index"] == 0); later calls have T == 1.
    Positions and segment ids (0 = left padding) are recorded in the cache for the decode mask."""
    b, t = tokens.shape
    cache = kv_cache.write_rows(cache, segment_ids, positions)
    visible = kv_cache.visible_segment_ids(cache, positions[:, -1]) if t == 1 else None
    index = cache["index"]
    x = self._embed(tokens)  # (B, T, D)
    k_all, v_all = cache["k"], cache["v"]
    if self.cfg.scan_layers:
      graphdef, state = nnx.split(self.blocks)

      def body(carry, xs):  # The cache rides in the carry so each layer's write is in place.
        h, k_all, v_all = carry
        layer_state, layer = xs
        layer_cache = kv_cache.LayerCache(k_all, v_all, layer, index, visible, cache["positions"])
        h, (k_all, v_all) = nnx.merge(graphdef, layer_state)(h, positions, segment_ids, layer_cache)
        return (h, k_all, v_all), None

      (x, k_all, v_all), _ = jax.lax.scan(body, (x, k_all, v_all), (state, jnp.arange(self.cfg.num_layers)))
    else:  # One buffer per layer (kv_cache.init).
      k_all, v_all = list(k_all), list(v_all)
      for layer, block in enumerate(self.blocks):
        layer_cache = kv_cache.LayerCache(k_all[layer], v_all[layer], None, index, visible, cache["positions"])
        x, (k_all[layer], v_all[layer]) = block(x, positions, segment_ids, layer_cache)
      k_all, v_all = tuple(k_all), tuple(v_all)
    cache = kv_cache.constrain({**cache, "k": k_all, "v": v_all, "index": index + t})
    return self.final_norm(x), cache

  def _embed(self, tokens):
    x = self.embed(tokens, self.cfg.compute_dtype)  # (B, T, D)
    if self.cfg.embed_scale:  # Gemma rounds sqrt(D) to the compute dtype before scaling.
      x = x * jnp.asarray(self.cfg.d_model ** 0.5, x.dtype)
    return x

  def unembedding(self) -> jax.Array:
    """(D, V) in the compute dtype."""
    w = self.embed.embedding[...].T if self.cfg.tie_embeddings else self.unembed[...]
    return w.astype(self.cfg.compute_dtype)

  def scores(self, tokens, positions=None, segment_ids=None) -> jax.Array:
    """The scalar head (`head == "scalar"`): (B, T) f32 score at every position; a reward model reads
    the last real token of each sequence, a critic every completion token."""
    h = self.hidden(tokens, positions, segment_ids).astype(jnp.float32)  # (B, T, D)
    return h @ self.score_w[...].astype(jnp.float32) + self.score_b[...].astype(jnp.float32)  # (B, T)

  def __call__(self, tokens, positions=None, segment_ids=None):
    return self.logits(self.hidden(tokens, positions, segment_ids))  # (B, T, V)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Final-normed hidden states (..., D) -> f32 logits (..., V), soft-capped when the model says so."""
    z = jnp.einsum("...d,dv->...v", hidden, self.unembedding(), preferred_element_type=jnp.float32)
    cap = self.cfg.final_logit_softcap
    return cap * jnp.tanh(z / cap) if cap else z
