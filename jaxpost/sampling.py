"""Greedy generation by recomputation: a small, obviously-correct decoder for evaluation.

Prompts are left-padded into one (B, P + N) buffer (pad = segment 0, prompt and completion = segment
1, positions counted from each prompt's first token), so every row writes its next token into the
same column. Each step runs the full causal forward and takes the argmax at the last filled column;
causality makes the not-yet-written columns irrelevant. O(N (P+N)^2) work: fine for evaluation of
small models; the KV-cache sampler (rollout engine) supersedes it for RL.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnums=(0, 4))
def _greedy(graphdef, params, tokens, segment_ids, max_new_tokens):
  b, total = tokens.shape
  prompt_len = total - max_new_tokens
  positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)  # (B, P+N)
  model = nnx.merge(graphdef, params)

  def body(i, tokens):
    col = prompt_len + i
    logits = model(tokens, positions, segment_ids)  # (B, P+N, V)
    next_token = jnp.argmax(logits[:, col - 1], axis=-1).astype(tokens.dtype)  # (B,)
    return tokens.at[:, col].set(next_token)

  return jax.lax.fori_loop(0, max_new_tokens, body, tokens)


def greedy_generate(graphdef, params, prompts: list[list[int]], *, max_new_tokens: int, stop_id: int,
                    pad_id: int = 0) -> list[list[int]]:
  """Returns each prompt's completion (tokens up to, excluding, `stop_id`)."""
  prompt_len = max(len(p) for p in prompts)
  total = prompt_len + max_new_tokens
  tokens = np.full((len(prompts), total), pad_id, np.int32)
  segment_ids = np.ones((len(prompts), total), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, prompt_len - len(p):prompt_len] = p
    segment_ids[i, :prompt_len - len(p)] = 0
  out = np.asarray(_greedy(graphdef, params, jnp.asarray(tokens), jnp.asarray(segment_ids), max_new_tokens))
  completions = []
  for row in out[:, prompt_len:].tolist():
    completions.append(row[:row.index(stop_id)] if stop_id in row else row)
  return completions
