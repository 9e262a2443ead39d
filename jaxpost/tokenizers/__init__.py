"""Tokenizers: the `Tokenizer` interface, the sentencepiece backend and the ChatML chat template."""
from __future__ import annotations

import os

from jaxpost.tokenizers.base import Tokenizer
from jaxpost.tokenizers.chat_template import (CHAT_SPECIAL_TOKENS, IM_END, IM_START, ROLES, chat_eos_id,
                                              check_messages, render_chat, tokenize_chat)
from jaxpost.tokenizers.spm import SentencePieceTokenizer, train_sentencepiece


def load(path: str) -> Tokenizer:
  """Loads a tokenizer from a sentencepiece `.model` file, or a folder holding `tokenizer.model`."""
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, "tokenizer.model")):
    path = os.path.join(path, "tokenizer.model")
  if path.endswith(".model"):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"tokenizer file not found: {path}")
    return SentencePieceTokenizer(path)
  raise ValueError(f"cannot load a tokenizer from {path!r}: only sentencepiece `.model` files (or a folder "
                   "with tokenizer.model) are supported; tokenizer.json is not supported yet")


__all__ = ["CHAT_SPECIAL_TOKENS", "IM_END", "IM_START", "ROLES", "SentencePieceTokenizer", "Tokenizer",
           "chat_eos_id", "check_messages", "load", "render_chat", "tokenize_chat", "train_sentencepiece"]
