"""Turning sampled completions into a training batch for the policy losses.

Row r = prompt (P_r tokens) + completion (C_r tokens, its stop token included), right-padded to T:
  inputs = row[:-1], targets = row[1:], loss_mask = 1 where the target is a completion token.
`old_logps` sit on the same positions: the sampler's log-prob of completion token j lands at column
P_r - 1 + j (the column whose target it is).
"""
from __future__ import annotations

import numpy as np


def rollout_batch(prompts: list[list[int]], completions: list[list[int]], sample_logps: np.ndarray | None, *,
                  num_samples: int, seq_len: int, rows: int | None = None) -> dict[str, np.ndarray]:
  """prompts: P lists; completions: P*G lists (row r belongs to prompt r // G); sample_logps (P*G, N).

  Returns int32 inputs/targets/loss_mask/positions/segment_ids (R, T) and f32 old_logps (R, T) when
  sample_logps is given; R = `rows` (>= P*G; extra rows are all padding, loss_mask 0)."""
  total = len(completions)
  rows = total if rows is None else rows
  out = {k: np.zeros((rows, seq_len), np.int32) for k in ("inputs", "targets", "loss_mask", "positions",
                                                           "segment_ids")}
  if sample_logps is not None:
    out["old_logps"] = np.zeros((rows, seq_len), np.float32)
  for r, completion in enumerate(completions):
    prompt = prompts[r // num_samples]
    seq = list(prompt) + list(completion)
    if len(seq) - 1 > seq_len:
      raise ValueError(f"row {r}: prompt {len(prompt)} + completion {len(completion)} tokens exceed "
                       f"seq_len + 1 = {seq_len + 1}")
    n = len(seq) - 1
    out["inputs"][r, :n] = seq[:-1]
    out["targets"][r, :n] = seq[1:]
    out["loss_mask"][r, len(prompt) - 1:n] = 1
    out["positions"][r, :n] = np.arange(n)
    out["segment_ids"][r, :n] = 1
    if sample_logps is not None:
      out["old_logps"][r, len(prompt) - 1:n] = sample_logps[r, :len(completion)]
  return out
