"""The model's forward over a paged KV cache, built from the Transformer's own submodules.

  h_0 = model._embed(tokens);  per block: norm -> q/k/v (lora.project, bias, q/k norm, RoPE of the layer)
        -> write k, v into the pages -> paged attention (window, soft-cap, scale of the layer) -> o
        -> residual (+ Gemma post-norms) -> MLP;  hidden = model.final_norm(h_L)

The Transformer's `decode_hidden` takes the static sampler's contiguous cache, so this module runs the
blocks itself around the paged cache, through the Attention's own `qkv` (projections, LoRA, bias, q/k
norm, the layer's RoPE) and `output` and the Block's norms and MLP: every family option (RoPE variants and
local bases, sliding windows, attention and final soft-caps, scanned layers) goes through.
tests/engine/test_engine.py compares it with the full forward.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpost import mesh as mesh_lib
from jaxpost.engine import paged_attention as paged


PAGES_LOGICAL = (None, None, "kv_heads", "head_dim")  # (pages, page_size, K, hd): KV heads over `tensor`.


def shard_pages(pages: dict) -> dict:
  """Pins the pages to their mesh layout under a context mesh (jaxpost.mesh rules); no-op without one. Every
  jitted engine call returns its pages through this, so their sharding (a compile-cache key) never drifts."""
  return jax.tree.map(lambda a: mesh_lib.shard_like(a, PAGES_LOGICAL), pages)


def place_pages(pages: dict, params) -> dict:
  """The pages on the mesh of `params` (their first leaf's), laid out by PAGES_LOGICAL, so the first prefill
  sees the layout every later call returns (a layout change would recompile); as they are otherwise."""
  sharding = jax.tree.leaves(params)[0].sharding
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return pages
  mesh = sharding.mesh
  return jax.tree.map(lambda a: jax.device_put(a, jax.sharding.NamedSharding(
      mesh, mesh_lib.logical_to_spec(PAGES_LOGICAL, a.shape, mesh))), pages)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def init_pages(cfg, num_pages: int, page_size: int) -> dict:
  """{"k", "v": L arrays (num_pages + 1, page_size, K, hd)}: page 0 is the trash page."""
  shape = (num_pages + 1, page_size, cfg.num_kv_heads, cfg.head_dim)
  return shard_pages({name: tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(cfg.num_layers))
                      for name in ("k", "v")})


def _blocks(model):
  """The model's blocks as a list of Block modules (one per layer, sliced out of the stack when scanned)."""
  if not model.cfg.scan_layers:
    return list(model.blocks)
  graphdef, state = nnx.split(model.blocks)
  return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(model.cfg.num_layers)]


def _attention(attn, x, positions, valid, page_table, k_pages, v_pages):
  """Attention.__call__ with a paged cache: x (B, T, D) -> ((B, T, D), k_pages, v_pages with T tokens written)."""
  q, k, v = attn.qkv(x, positions)  # (B, T, H, hd), (B, T, K, hd) x 2
  k_pages = paged.write_pages(k_pages, page_table, positions, valid, k)
  v_pages = paged.write_pages(v_pages, page_table, positions, valid, v)
  cfg = attn.cfg
  out = paged.paged_attention(q, k_pages, v_pages, page_table, positions, valid,
                              sliding_window=attn.sliding_window, logit_softcap=cfg.attn_logit_softcap or None,
                              sm_scale=cfg.attention_scale)  # (B, T, H, hd)
  return attn.output(out), k_pages, v_pages


def forward(model, pages: dict, tokens, positions, valid, page_table):
  """tokens, positions (B, T) int32, valid (B, T) bool, page_table (B, P) int32 -> (hidden (B, T, D), pages).

  Writes the K/V of the valid tokens at their positions in each row's pages (invalid ones go to the
  trash page) and attends each valid query to its row's keys at positions <= its own."""
  x = model._embed(tokens)  # (B, T, D)
  k_all, v_all = list(pages["k"]), list(pages["v"])
  for layer, block in enumerate(_blocks(model)):
    a, k_all[layer], v_all[layer] = _attention(block.attn, block.attn_norm(x), positions, valid, page_table,
                                               k_all[layer], v_all[layer])
    x = x + block._post("post_attn_norm", a)
    x = x + block._post("post_mlp_norm", block.mlp(block.mlp_norm(x)))
  return model.final_norm(x), shard_pages({"k": tuple(k_all), "v": tuple(v_all)})
