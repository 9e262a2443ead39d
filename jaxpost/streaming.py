"""One prompt's completion, token by token, for the CLI (`jaxpost/generate.py`).

A host loop over three jitted steps (prefill, sample, decode) built from the batch sampler's pieces
(jaxpost/sampling.py): the same left padding, shadow row, cache and per-step keys, so `stream` yields
exactly the tokens `sampling.generate` draws for that prompt with the same seed. It is slower per token
than the batch sampler's on-device `lax.while_loop`; it exists so a reply can be printed as it arrives.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost import sampling as sampling_lib


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def _prefill_jit(graphdef, params, tokens, segment_ids, *, max_len):
  """Prompts (B, P) -> (next-token logits (B, V), cache of max_len columns), as `sampling.generate` prefills."""
  positions = sampling_lib._positions(segment_ids)  # noqa: SLF001
  return sampling_lib._prefill(nnx.merge(graphdef, params), tokens, segment_ids, positions, max_len)  # noqa: SLF001


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def _decode_jit(graphdef, params, cache, token, position):
  """One token per row (B,) at `position` (B,) -> (next-token logits (B, V), cache)."""
  return sampling_lib._decode(nnx.merge(graphdef, params), cache, token, position)  # noqa: SLF001


@functools.partial(jax.jit, static_argnames=("sampling",))
def _sample_jit(logits, traced, i, *, sampling):
  """Samples row 0 only (the others are shadow rows) with step i's key, as `sampling.generate` does."""
  return sampling_lib.sample_logits(logits[:1], jax.random.fold_in(traced["key"], i), sampling,
                                    temperature=traced["temperature"], top_p=traced["top_p"])


def stream(graphdef, params, prompt: list[int], sampling: sampling_lib.SamplingConfig, *,
           pad_id: int = 0) -> Iterator[int]:
  """Yields one prompt's completion token by token (same draws as `sampling.generate` with the same
  seed). The stop token, if reached, is yielded last."""
  if sampling.num_samples != 1:
    raise ValueError(f"stream: num_samples must be 1, got {sampling.num_samples}")
  rows = sampling_lib.MIN_MODEL_ROWS  # The prompt and shadow copies of it, as in `generate`; only row 0 is sampled.
  tokens, segment_ids = sampling_lib._left_pad([prompt] * rows, pad_id)  # noqa: SLF001
  static, traced = sampling_lib._static(sampling), sampling_lib._traced(sampling)  # noqa: SLF001
  n = sampling.max_new_tokens
  logits, cache = _prefill_jit(graphdef, params, jnp.asarray(tokens), jnp.asarray(segment_ids),
                               max_len=tokens.shape[1] + n)
  for i in range(n):
    token, _ = _sample_jit(logits, traced, i, sampling=static)
    value = int(token[0])
    yield value
    if value in sampling.stop_token_ids or i == n - 1:
      return
    logits, cache = _decode_jit(graphdef, params, cache, np.full((rows,), value, np.int32),
                                np.full((rows,), len(prompt) + i, np.int32))  # host inputs: no eager device ops
