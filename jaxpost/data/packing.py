"""Next-token shift and greedy first-fit packing of examples into fixed-length rows.

An example (tokens x [L], mask m [L]) becomes `inputs = x[:-1]`, `targets = x[1:]`,
`loss_mask = m[1:]`: the mask lives on targets, and since each example is shifted on its own, no
target ever crosses into the next segment of a packed row.

Row fields, each [R, T] int32:
  inputs, targets  token ids (0 in padding)
  loss_mask        1 where the target is trained on, 0 elsewhere (always 0 in padding)
  positions        0, 1, 2, ... restarting at every segment (0 in padding)
  segment_ids      1, 2, 3, ... per example within a row; 0 marks padding
Attention must stay within equal, non-zero `segment_ids`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FIELDS = ("inputs", "targets", "loss_mask", "positions", "segment_ids")
OVERLONG = ("truncate", "drop")


def shift_example(tokens: np.ndarray, loss_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns (inputs int32 [L-1], targets int32 [L-1], loss_mask int32 [L-1]) of one example [L]."""
  tokens, loss_mask = np.asarray(tokens, np.int32), np.asarray(loss_mask)
  return tokens[:-1], tokens[1:], loss_mask[1:].astype(np.int32)


def pack_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, *, pack: bool = True,
                  overlong: str = "truncate") -> tuple[dict[str, np.ndarray], dict[str, int | float]]:
  """Shifts examples and packs them greedily, first fit in the given order, into rows [R, T=seq_len].

  Args:
    examples: (tokens [L], loss_mask [L]) pairs, e.g. from `records.tokenize_record`.
    seq_len: T, the row length (counted after the shift, so an example fits if L - 1 <= T).
    pack: if False, one example per row, padded.
    overlong: 'truncate' keeps the first T shifted tokens of a longer example; 'drop' skips it.

  Returns:
    rows: dict of int32 [R, T] arrays named in FIELDS (see the module docstring).
    stats: examples (given), truncated, dropped (overlong under 'drop'), empty (skipped: no loss
      token after the shift and truncation), rows, loss_tokens, fill (fraction of non-pad slots).
  """
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  if overlong not in OVERLONG:
    raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
  stats = dict(examples=len(examples), truncated=0, dropped=0, empty=0)

  shifted = []  # (inputs, targets, loss_mask), each [S <= T]
  for i, (tokens, loss_mask) in enumerate(examples):
    if np.ndim(tokens) != 1 or np.shape(tokens) != np.shape(loss_mask):
      raise ValueError(f"examples[{i}]: tokens {np.shape(tokens)} and loss_mask {np.shape(loss_mask)} "
                       "must be 1-D of equal length")
    inputs, targets, mask = shift_example(tokens, loss_mask)
    if len(inputs) > seq_len:
      if overlong == "drop":
        stats["dropped"] += 1
        continue
      stats["truncated"] += 1
      inputs, targets, mask = inputs[:seq_len], targets[:seq_len], mask[:seq_len]
    if not mask.any():
      stats["empty"] += 1
      continue
    shifted.append((inputs, targets, mask))

  if pack:
    row_of = _first_fit([len(s[0]) for s in shifted], seq_len)
  else:
    row_of = list(range(len(shifted)))
  num_rows = max(row_of, default=-1) + 1

  rows = {k: np.zeros([num_rows, seq_len], np.int32) for k in FIELDS}
  used = np.zeros([num_rows], np.int64)  # filled length of each row
  segments = np.zeros([num_rows], np.int32)  # segments placed in each row
  for (inputs, targets, mask), r in zip(shifted, row_of):
    start, n = used[r], len(inputs)
    segments[r] += 1
    window = slice(start, start + n)
    rows["inputs"][r, window] = inputs
    rows["targets"][r, window] = targets
    rows["loss_mask"][r, window] = mask
    rows["positions"][r, window] = np.arange(n, dtype=np.int32)
    rows["segment_ids"][r, window] = segments[r]
    used[r] += n

  stats.update(rows=num_rows, loss_tokens=int(rows["loss_mask"].sum()),
               fill=float(used.sum() / (num_rows * seq_len)) if num_rows else 0.0)
  return rows, stats


def _first_fit(lengths: list[int], capacity: int) -> list[int]:
  """Returns the row index of each length: the lowest row with room left, O(log R) per item.

  A max-tree over the free space of up to len(lengths) rows; unopened rows have full capacity and
  sit to the right of every opened row, so the leftmost fit is the first-fit row.
  """
  size = 1
  while size < max(len(lengths), 1):
    size *= 2
  free = [capacity] * (2 * size)  # free[1] is the root; leaves are free[size:]
  row_of = []
  for n in lengths:
    node = 1
    while node < size:
      node = 2 * node if free[2 * node] >= n else 2 * node + 1
    row_of.append(node - size)
    free[node] -= n
    node //= 2
    while node:
      free[node] = max(free[2 * node], free[2 * node + 1])
      node //= 2
  return row_of
