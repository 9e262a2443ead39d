"""The decode roofline shared by bench_generate.py and bench_rl.py: HBM bytes a decode step must move.

A decode step reads every weight once (in the compute dtype: an engine casts f32 master weights once per
rollout, not per step) and the filled KV cache of every row, so over decode steps 1..N-1 (token 0 comes
from the prefill)

  ideal decode time = sum over steps of (weight bytes + KV bytes filled at that step) / copy bandwidth,

with the bandwidth measured by timing a large device copy (read + write).
"""
import time

import jax
import jax.numpy as jnp

from jaxpost.models import ModelConfig


def copy_bandwidth(nbytes: int) -> float:
  """Bytes/s of a device copy (counts the read and the write)."""
  x = jnp.ones((nbytes // 4,), jnp.float32)
  copy = jax.jit(lambda a: a * 1.0001)
  jax.block_until_ready(copy(x))
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(copy(x))
    times.append(time.perf_counter() - t0)
  return 2 * x.nbytes / min(times)


def ideal_decode_seconds(cfg: ModelConfig, batch: int, prompt_len: int, new: int, bandwidth: float) -> float:
  """Seconds for decode steps 1..N-1 of `batch` rows at the roofline (see the module docstring)."""
  itemsize = min(jnp.dtype(cfg.param_dtype).itemsize, jnp.dtype(cfg.dtype).itemsize)
  weight_bytes = cfg.num_params() * itemsize
  kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
  filled = sum(prompt_len + i for i in range(1, new))  # Cache columns read at steps 1..N-1, per row.
  return ((new - 1) * weight_bytes + batch * kv_per_token * filled) / bandwidth
