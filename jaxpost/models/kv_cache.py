"""The KV cache for sampling: preallocated keys/values of every layer, written in place.

  cache = {"k", "v": L arrays (B, S, K, hd) in the compute dtype, one per layer; stacked into one
                     (L, B, S, K, hd) array when the model scans over layers (scan_layers),
           "segment_ids": (B, S) int32  1 where a column holds a real token, 0 for padding / not yet written,
           "positions": (B, S) int32    RoPE position of the token in each column,
           "index": () int32            the next column to write}

Every row writes the same column at each step (prompts are left-padded), so one scalar `index`
suffices. A query sees the columns whose segment id is 1 and, with a sliding window w, whose position
is within w of its own (`visible_segment_ids`); the window therefore costs nothing new in the layout.
The cache is a plain dict pytree so it can be a `lax.while_loop` carry and be sharded like a batch.
One buffer per layer lets a decode step's attention read its layer's keys straight from the buffer;
from a stack, XLA on GPU copies the layer's slice out first, every step (seen in the compiled H100
program, jax 0.11). The scanned model needs the stack (one loop body).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpost import mesh as mesh_lib
from jaxpost.models.config import ModelConfig

# Logical axes of k/v, resolved to mesh axes by jaxpost.mesh.LOGICAL_RULES.
KV_LOGICAL = ("layers", "batch", None, "kv_heads", "head_dim")  # A stack; one layer's buffer drops "layers".
ROWS_LOGICAL = ("batch", None)


class LayerCache(NamedTuple):
  """What one attention layer needs: its keys/values, and where to write.

  k, v: the layer's own (B, S, K, hd) buffers with layer None, or the stacks (L, B, S, K, hd) with
  layer the () int32 index of this layer's slice (scanned model); index: () int32 first column to write;
  visible: (B, S) int32 segment ids of the columns a single decode query may attend to (after the write).
  positions: (B, S) int32 RoPE positions of the columns (sliding-window layers narrow `visible` with them).
  """
  k: jax.Array
  v: jax.Array
  layer: jax.Array | int
  index: jax.Array
  visible: jax.Array | None
  positions: jax.Array | None = None


def init(cfg: ModelConfig, batch: int, max_len: int) -> dict:
  """An empty cache for `batch` rows of up to `max_len` tokens (prompt + completion)."""
  shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  if cfg.scan_layers:
    k = v = jnp.zeros((cfg.num_layers, *shape), cfg.compute_dtype)
  else:
    k = v = tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(cfg.num_layers))
  cache = {"k": k, "v": v,
           "segment_ids": jnp.zeros((batch, max_len), jnp.int32), "positions": jnp.zeros((batch, max_len), jnp.int32),
           "index": jnp.zeros((), jnp.int32)}
  return constrain(cache)


def constrain(cache: dict) -> dict:
  """Shards the cache like a batch (rows over data/fsdp, kv heads over tensor) under a context mesh."""
  out = {k: jax.tree.map(lambda a: mesh_lib.shard_like(a, KV_LOGICAL[-a.ndim:]), cache[k]) for k in ("k", "v")}
  out.update({k: mesh_lib.shard_like(cache[k], ROWS_LOGICAL) for k in ("segment_ids", "positions")})
  out["index"] = cache["index"]
  return out


def write_rows(cache: dict, segment_ids: jax.Array, positions: jax.Array) -> dict:
  """Records segment ids and positions (B, T) of T new tokens at columns [index, index + T)."""
  index = cache["index"]
  out = dict(cache)
  out["segment_ids"] = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids.astype(jnp.int32), (0, index))
  out["positions"] = jax.lax.dynamic_update_slice(cache["positions"], positions.astype(jnp.int32), (0, index))
  return out


def visible_segment_ids(cache: dict, q_positions: jax.Array, sliding_window: int | None = None) -> jax.Array:
  """(B, S) int32: 1 where one new query per row at `q_positions` (B,) may attend, else 0.

  Call after `write_rows` so the query's own column is visible. Causality holds because columns after
  `index` are not written yet (segment id 0).
  """
  visible = cache["segment_ids"] == 1  # (B, S)
  if sliding_window is not None:
    visible &= cache["positions"] > q_positions[:, None] - sliding_window
  return visible.astype(jnp.int32)


def write_layer(k_all: jax.Array, v_all: jax.Array, layer, index, k: jax.Array, v: jax.Array):
  """Writes one layer's new keys/values (B, T, K, hd) at columns [index, index + T), in place, into its
  own buffers (layer None) or into slice `layer` of the stacks."""
  if layer is not None:
    k, v, start = k[None], v[None], (layer, 0, index, 0, 0)
  else:
    start = (0, index, 0, 0)
  k_all = jax.lax.dynamic_update_slice(k_all, k.astype(k_all.dtype), start)
  v_all = jax.lax.dynamic_update_slice(v_all, v.astype(v_all.dtype), start)
  return k_all, v_all


def layer_keys_values(cache: LayerCache) -> tuple[jax.Array, jax.Array]:
  """The layer's (B, S, K, hd) keys and values (a slice of the stacks for a scanned model)."""
  if cache.layer is None:
    return cache.k, cache.v
  return tuple(jax.lax.dynamic_index_in_dim(a, cache.layer, keepdims=False) for a in (cache.k, cache.v))


def repeat_rows(cache: dict, n: int) -> dict:
  """Each row repeated n times (row i -> rows i*n .. i*n + n-1): one prefill serves n samples."""
  if n == 1:
    return cache
  # Rows are the batch axis: axis 0 of every array, after the layer axis of a stacked k/v.
  out = {k: jax.tree.map(lambda a: jnp.repeat(a, n, axis=a.ndim - 4 if k in ("k", "v") else 0), v)
         for k, v in cache.items() if k != "index"}
  out["index"] = cache["index"]
  return constrain(out)
