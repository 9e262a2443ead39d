"""Preference JSONL -> pair rows for reward models and the DPO family.

Record formats (other keys are ignored):
  paired    {"prompt": str | "messages": [...], "chosen": C, "rejected": C, ["margin": number]}
  unpaired  {"prompt": str | "messages": [...], "completion": C, "label": bool}              (KTO)
where C is a string (one assistant reply) or a list of messages that continue the conversation.
A `prompt` string is one user message. Everything is rendered with the chat template: prompt tokens
carry no loss, the completion's assistant content and its closing `<|im_end|>` do.

Rows: one pair per row, no packing, every field (R, 2, T) int32 as in `packing.FIELDS`:
  paired    [:, 0] = prompt + chosen,   [:, 1] = prompt + rejected;  `margin` (R,) f32 (0 if absent)
  unpaired  [:, 0] = prompt + completion,  [:, 1] = the same prompt + the completion of another record
            (KTO's mismatched pair for the KL reference point);  `label` (R,) int32 (1 = desirable)
A pair stays in one row so that sharding rows over devices and splitting microbatches never separate
it. Paired records given to the unpaired builder yield two examples each (chosen desirable, rejected
not), so one preference file serves every loss.

Longer than T after the shift: `truncate` keeps the first T tokens of that sequence (counted), `drop`
skips the whole pair (counted); a sequence left with no loss token drops its pair (`empty`).
Batches come from `pipeline.make_train_iterator` / `pipeline.eval_batches`, unchanged: they index rows
along the first axis whatever the field shapes, so the iterator state checkpoints and resumes exactly.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxpost.data.jsonl import DataError, read_jsonl
from jaxpost.data.packing import FIELDS, OVERLONG, shift_example
from jaxpost.tokenizers import Tokenizer, check_messages

Rows = dict[str, np.ndarray]
Example = tuple[np.ndarray, np.ndarray]  # tokens [L], loss_mask [L]


def _messages(value: Any, key: str, where: str, *, role: str) -> list[dict]:
  """A string (one `role` message) or a message list -> checked messages; DataError naming `key`."""
  if isinstance(value, str):
    if not value.strip():
      raise DataError(f"{where}: `{key}` is empty")
    return [{"role": role, "content": value}]
  if isinstance(value, list):
    try:
      check_messages(value)
    except ValueError as e:
      raise DataError(f"{where}: `{key}`: {e}") from None
    return value
  raise DataError(f"{where}: `{key}` must be a string or a list of messages, got {type(value).__name__}")


def _prompt(obj: dict, where: str) -> list[dict]:
  if "messages" in obj:
    return _messages(obj["messages"], "messages", where, role="user")
  if "prompt" in obj:
    return _messages(obj["prompt"], "prompt", where, role="user")
  raise DataError(f"{where}: a preference record needs `prompt` or `messages`; found keys {sorted(obj)}")


def _completion(obj: dict, key: str, where: str) -> list[dict]:
  if key not in obj:
    raise DataError(f"{where}: missing `{key}` (keys: {sorted(obj)})")
  messages = _messages(obj[key], key, where, role="assistant")
  if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
    raise DataError(f"{where}: `{key}` has no non-empty assistant message to score")
  return messages


def _tokenize(prompt: list[dict], completion: list[dict], tokenizer: Tokenizer, add_bos: bool) -> Example:
  """The conversation prompt + completion through the tokenizer's chat template (built-in ChatML, or a HF
  folder's Jinja template): loss on the completion's assistant replies and their end-of-turn token only."""
  tokens, mask = tokenizer.encode_chat(prompt + completion, loss_from=len(prompt))
  if not add_bos and tokenizer.bos_id is not None and len(tokens) and tokens[0] == tokenizer.bos_id:
    tokens, mask = tokens[1:], mask[1:]
  return tokens, mask


def parse_paired(obj: Any, tokenizer: Tokenizer, *, where: str, add_bos: bool = True):
  """One paired record -> (chosen Example, rejected Example, margin float). DataError naming `where`."""
  if not isinstance(obj, dict):
    raise DataError(f"{where}: a preference record must be a JSON object, got {type(obj).__name__}")
  prompt = _prompt(obj, where)
  chosen, rejected = _completion(obj, "chosen", where), _completion(obj, "rejected", where)
  if chosen == rejected:
    raise DataError(f"{where}: `chosen` and `rejected` are identical")
  margin = obj.get("margin", 0.0)
  if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
    raise DataError(f"{where}: `margin` must be a finite number, got {margin!r}")
  return (_tokenize(prompt, chosen, tokenizer, add_bos), _tokenize(prompt, rejected, tokenizer, add_bos),
          float(margin))


def parse_unpaired(obj: Any, tokenizer: Tokenizer, *, where: str) -> list[tuple[list[dict], list[dict], bool]]:
  """One record -> [(prompt messages, completion messages, desirable)]: one for an unpaired record, two
  (chosen desirable, rejected undesirable) for a paired one."""
  if not isinstance(obj, dict):
    raise DataError(f"{where}: a preference record must be a JSON object, got {type(obj).__name__}")
  prompt = _prompt(obj, where)
  if "chosen" in obj or "rejected" in obj:
    chosen, rejected = _completion(obj, "chosen", where), _completion(obj, "rejected", where)
    if chosen == rejected:
      raise DataError(f"{where}: `chosen` and `rejected` are identical")
    return [(prompt, chosen, True), (prompt, rejected, False)]
  completion = _completion(obj, "completion", where)
  label = obj.get("label")
  if not isinstance(label, bool):
    raise DataError(f"{where}: `label` must be true (desirable) or false (undesirable), got {label!r}")
  return [(prompt, completion, label)]


def _row(example: Example, seq_len: int, overlong: str, stats: dict) -> dict[str, np.ndarray] | None:
  """One sequence -> its (T,) fields, or None when it is dropped (overlong under 'drop', or no loss)."""
  inputs, targets, mask = shift_example(*example)
  if len(inputs) > seq_len:
    if overlong == "drop":
      stats["dropped"] += 1
      return None
    stats["truncated"] += 1
    inputs, targets, mask = inputs[:seq_len], targets[:seq_len], mask[:seq_len]
  if not mask.any():
    stats["empty"] += 1
    return None
  n = len(inputs)
  out = {k: np.zeros([seq_len], np.int32) for k in FIELDS}
  out["inputs"][:n], out["targets"][:n], out["loss_mask"][:n] = inputs, targets, mask
  out["positions"][:n] = np.arange(n, dtype=np.int32)
  out["segment_ids"][:n] = 1
  return out


def _stack(pairs: list[tuple[dict, dict]]) -> Rows:
  return {k: np.stack([np.stack([a[k], b[k]]) for a, b in pairs]) for k in FIELDS}  # (R, 2, T)


def build_paired(paths, tokenizer: Tokenizer, *, seq_len: int, overlong: str = "truncate",
                 add_bos: bool = True) -> tuple[Rows, dict[str, Any]]:
  """Paired records -> rows (R, 2, T) + `margin` (R,) f32, and stats (records, pairs, truncated, dropped, empty).

  Raises:
    DataError: naming `path:line` for a malformed record, or when no pair is left.
  """
  if overlong not in OVERLONG:
    raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
  stats = dict(records=0, truncated=0, dropped=0, empty=0)
  pairs, margins = [], []
  for path, line, obj in read_jsonl(paths):
    stats["records"] += 1
    chosen, rejected, margin = parse_paired(obj, tokenizer, where=f"{path}:{line}", add_bos=add_bos)
    rows = [_row(chosen, seq_len, overlong, stats), _row(rejected, seq_len, overlong, stats)]
    if None not in rows:
      pairs.append(tuple(rows))
      margins.append(margin)
  if not pairs:
    raise DataError(f"no usable preference pair in {paths!r} (stats: {stats})")
  rows = _stack(pairs)
  rows["margin"] = np.asarray(margins, np.float32)
  stats["pairs"] = len(pairs)
  return rows, stats


def build_unpaired(paths, tokenizer: Tokenizer, *, seq_len: int, overlong: str = "truncate", seed: int = 0,
                   add_bos: bool = True) -> tuple[Rows, dict[str, Any]]:
  """KTO examples -> rows (R, 2, T) (example, mismatched KL sequence) + `label` (R,) int32, and stats.

  Example i's KL sequence is its prompt with the completion of example perm[(k + 1) % N], where i =
  perm[k] and perm is a permutation seeded by `seed`: a fixed mismatched pairing, as TRL builds it once.
  """
  if overlong not in OVERLONG:
    raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
  stats = dict(records=0, truncated=0, dropped=0, empty=0)
  examples = []
  for path, line, obj in read_jsonl(paths):
    stats["records"] += 1
    examples += parse_unpaired(obj, tokenizer, where=f"{path}:{line}")
  if len(examples) < 2:
    raise DataError(f"KTO needs at least 2 examples (for mismatched KL pairs), found {len(examples)} in {paths!r}")
  perm = np.random.default_rng(seed).permutation(len(examples))
  other = np.empty(len(examples), np.int64)
  other[perm] = np.roll(perm, -1)
  pairs, labels = [], []
  for i, (prompt, completion, desirable) in enumerate(examples):
    example = _tokenize(prompt, completion, tokenizer, add_bos)
    mismatched = _tokenize(prompt, examples[other[i]][1], tokenizer, add_bos)
    rows = [_row(example, seq_len, overlong, stats), _row(mismatched, seq_len, overlong, stats)]
    if None not in rows:
      pairs.append(tuple(rows))
      labels.append(int(desirable))
  if not pairs:
    raise DataError(f"no usable KTO example in {paths!r} (stats: {stats})")
  rows = _stack(pairs)
  rows["label"] = np.asarray(labels, np.int32)
  stats.update(examples=len(pairs), desirable=int(sum(labels)))
  return rows, stats
