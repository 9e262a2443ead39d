"""JSONL files -> packed rows -> per-process batches: a checkpointable grain train iterator and
finite eval batches.

Records are read and tokenised eagerly (post-training sets fit in host memory); rows are
packed once, then shuffled per epoch by grain.

Resuming: the train iterator's state is a small JSON-serialisable dict ({"next_index": n}).
Rebuild the iterator with the same rows and arguments and restore it:

    state = it.get_state()                 # save, e.g. with orbax JsonSave
    it = make_train_iterator(rows, ...)    # same rows, batch_size, seed, process_index/count
    it.set_state(state)                    # yields exactly the batches `it` would have yielded
"""
from __future__ import annotations

from typing import Any

import grain
import numpy as np

from jaxpost.data.jsonl import DataError, read_jsonl
from jaxpost.data.packing import pack_examples
from jaxpost.data.records import tokenize_record
from jaxpost.tokenizers import Tokenizer

Rows = dict[str, np.ndarray]  # field -> [R, T]


def build_dataset(paths: str | list[str], tokenizer: Tokenizer, *, seq_len: int, pack: bool = True,
                  overlong: str = "truncate", add_bos: bool = True) -> tuple[Rows, dict[str, Any]]:
  """Reads every record of the JSONL files (glob patterns allowed), tokenises and packs them.

  Returns:
    rows: int32 [R, T=seq_len] arrays, fields as in `packing.FIELDS`.
    stats: `pack_examples` stats plus `files` (count) and `records`.

  Raises:
    DataError: naming `path:line` for any malformed record, or when no row has a loss token.
  """
  examples, files = [], set()
  for path, line, obj in read_jsonl(paths):
    files.add(path)
    examples.append(tokenize_record(obj, tokenizer, where=f"{path}:{line}", add_bos=add_bos))
  rows, stats = pack_examples(examples, seq_len, pack=pack, overlong=overlong)
  if not stats["rows"]:
    raise DataError(f"no trainable example in {paths!r} (stats: {stats})")
  return rows, dict(files=len(files), records=len(examples), **stats)


class _RowSource:
  """Random access to row i of `rows` as a dict of [T] arrays (a grain data source)."""

  def __init__(self, rows: Rows):
    self._rows = rows
    self._len = _num_rows(rows)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in self._rows.items()}


def make_train_iterator(rows: Rows, *, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                        shuffle: bool = True) -> grain.DatasetIterator:
  """An endless, checkpointable iterator of this process's batches: dicts of [B=batch_size, T] arrays.

  Each epoch is a fresh permutation of all R rows (seeded by `seed` and the epoch); the endless
  stream of epochs is dealt round-robin to processes (global index i goes to process
  i % process_count), so no row reaches two processes within an epoch, and together the
  processes' step-s batches are the rows a single process would see at step s with batch
  size B * process_count.

  Args:
    rows: [R, T] arrays from `build_dataset` / `pack_examples`.
    batch_size: rows per batch on this process (the per-process batch, not the global one).
    seed: shuffle seed; every process must use the same one.
    process_index, process_count: e.g. jax.process_index(), jax.process_count().
    shuffle: if False, rows come in order (epoch after epoch).

  Returns:
    A grain iterator; `get_state()` is JSON-serialisable and `set_state` resumes exactly.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index} and {process_count}")
  ds = grain.MapDataset.source(_RowSource(rows))
  if shuffle:
    ds = ds.shuffle(seed=seed)  # before repeat: grain reshuffles every epoch
  ds = ds.repeat()[process_index::process_count].batch(batch_size, drop_remainder=True)
  # Rows are already in memory: a couple of threads suffice and spare the host's cores.
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))


def eval_batches(rows: Rows, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """Every row once, in order, as [B=batch_size, T] batches; the last one padded with all-zero rows.

  Zero rows have segment_ids 0 and loss_mask 0, so they add nothing to a masked loss. With several
  processes, process p takes rows p, p + P, ... and every process gets the same number of batches
  (some possibly all padding), so collective eval steps stay in lockstep.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index} and {process_count}")
  num_rows = _num_rows(rows)
  per_process = -(-num_rows // process_count)
  num_batches = -(-per_process // batch_size)
  batches = []
  for b in range(num_batches):
    index = np.arange(b * batch_size, (b + 1) * batch_size) * process_count + process_index  # [B] global rows
    valid = index < num_rows
    batch = {}
    for k, v in rows.items():
      batch[k] = np.zeros((batch_size,) + v.shape[1:], v.dtype)
      batch[k][valid] = v[index[valid]]
    batches.append(batch)
  return batches


def _num_rows(rows: Rows) -> int:
  lengths = {k: len(v) for k, v in rows.items()}
  if not lengths or len(set(lengths.values())) != 1:
    raise ValueError(f"rows must be a non-empty dict of arrays with equal first dimension, got {lengths}")
  (num_rows,) = set(lengths.values())
  if not num_rows:
    raise ValueError("rows has no row")
  return num_rows
