"""The tokenizer interface every backend implements (sentencepiece now, tokenizer.json later).

Ids are plain Python ints; `encode` never adds bos/eos, so callers (chat template, record
tokenisers) decide where special tokens go and which of them carry loss.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence


class Tokenizer(abc.ABC):
  """Abstract text <-> ids mapping with named special tokens."""

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Returns the ids of `text` [L], without bos or eos."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """Returns the text of `ids` [L] (any int sequence or 1-D array); pad ids are skipped."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids; every id is in [0, vocab_size)."""

  @property
  @abc.abstractmethod
  def bos_id(self) -> int | None:
    """Beginning-of-sequence id, or None when the vocabulary has none."""

  @property
  @abc.abstractmethod
  def eos_id(self) -> int | None:
    """End-of-sequence id, or None when the vocabulary has none."""

  @property
  @abc.abstractmethod
  def pad_id(self) -> int | None:
    """Padding id, or None when the vocabulary has none (packed rows pad with 0 regardless)."""

  @abc.abstractmethod
  def token_id(self, piece: str) -> int:
    """Returns the single id of a special piece such as "<|im_end|>"; KeyError if absent."""
