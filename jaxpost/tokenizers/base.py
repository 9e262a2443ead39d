"""The tokenizer interface every backend implements (sentencepiece, Hugging Face tokenizer folders).

Ids are plain Python ints; `encode` never adds bos/eos, so callers (chat template, record
tokenisers) decide where special tokens go and which of them carry loss. Chat goes through one
interface for every backend: `encode_chat` gives the full ids of a conversation (with whatever bos
the template or tokenizer puts first) and its assistant loss mask; `chat_stop_ids` ends a reply.
The defaults here are the built-in ChatML template (chat_template.py) after a bos.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxpost.tokenizers import chat_template


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

  @property
  def adds_bos(self) -> bool:
    """Whether sequences start with bos (plain text records, prompts); default: when there is a bos."""
    return self.bos_id is not None

  def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False, *,
                  loss_from: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises a conversation with the tokenizer's chat template, ready to train on or to prompt with.

    Default: bos (when `adds_bos`) + the built-in ChatML template (`chat_template.tokenize_chat`).

    Args:
      messages: [{"role", "content"}, ...].
      add_generation_prompt: end with the header that opens an assistant reply (for sampling).
      loss_from: assistant messages before this index carry no loss (e.g. the earlier turns of a
        preference prompt, whose completion starts at messages[loss_from]).

    Returns:
      tokens: int32 [L], including any bos.
      loss_mask: bool [L], True exactly on the assistant replies and the end-of-turn token(s) that
        close them; False on bos, prompts, role headers and the generation prompt.
    """
    tokens, loss_mask = chat_template.tokenize_chat(messages, self, add_generation_prompt=add_generation_prompt)
    if loss_from > 0:  # ChatML tokenises message by message, so a prefix's ids are a prefix of the ids.
      loss_mask[:len(chat_template.tokenize_chat(messages[:loss_from], self)[0])] = False
    if self.adds_bos:
      tokens = np.concatenate([np.asarray([self.bos_id], np.int32), tokens])
      loss_mask = np.concatenate([np.zeros([1], np.bool_), loss_mask])
    return tokens, loss_mask

  @property
  def chat_stop_ids(self) -> tuple[int, ...]:
    """Ids that end a generated chat reply: the end-of-turn token first, then eos (if any)."""
    return (chat_template.chat_eos_id(self),) + (() if self.eos_id is None else (self.eos_id,))
