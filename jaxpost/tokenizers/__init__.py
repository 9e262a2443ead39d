"""Tokenizers: the `Tokenizer` interface, sentencepiece and Hugging Face backends, chat templates.

`load(path)` picks the backend; every tokenizer offers `encode_chat(messages) -> (tokens, loss_mask)`
and `chat_stop_ids`, whichever template (built-in ChatML, or the folder's Jinja template) it uses.
"""
from __future__ import annotations

import os

from jaxpost.tokenizers.base import Tokenizer
from jaxpost.tokenizers.chat_template import (CHAT_SPECIAL_TOKENS, IM_END, IM_START, ROLES, chat_eos_id,
                                              check_messages, render_chat, tokenize_chat)
from jaxpost.tokenizers.hf import HFTokenizer
from jaxpost.tokenizers.hf_chat_template import ChatTemplateError, render_chat_template
from jaxpost.tokenizers.spm import SentencePieceTokenizer, train_sentencepiece


def load(path: str, chat_template: str | None = None) -> Tokenizer:
  """Loads a tokenizer from a folder or a file, picking the backend from what is there.

    folder with tokenizer.json                         HFTokenizer (`tokenizers`) + side files
    folder with tokenizer.model + tokenizer_config.json  HFTokenizer (sentencepiece) + side files
    folder with only tokenizer.model, or a `.model` file  SentencePieceTokenizer (built-in ChatML)
    a tokenizer.json file                              as its folder

  Args:
    chat_template: for Hugging Face folders, a template name or source replacing the folder's.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"tokenizer path not found: {path}")
  if os.path.isfile(path) and os.path.basename(path) == "tokenizer.json":
    path = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    has = {name: os.path.isfile(os.path.join(path, name))
           for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")}
    if has["tokenizer.json"] or (has["tokenizer.model"] and has["tokenizer_config.json"]):
      return HFTokenizer.from_folder(path, chat_template=chat_template)
    if has["tokenizer.model"]:
      path = os.path.join(path, "tokenizer.model")
    else:
      raise ValueError(f"cannot load a tokenizer from folder {path!r}: it has neither tokenizer.json nor "
                       "tokenizer.model")
  if path.endswith(".model"):
    return SentencePieceTokenizer(path)
  raise ValueError(f"cannot load a tokenizer from {path!r}: expected a folder with tokenizer.json or "
                   "tokenizer.model, a tokenizer.json file, or a sentencepiece `.model` file")


__all__ = ["CHAT_SPECIAL_TOKENS", "IM_END", "IM_START", "ROLES", "ChatTemplateError", "HFTokenizer",
           "SentencePieceTokenizer", "Tokenizer", "chat_eos_id", "check_messages", "load", "render_chat",
           "render_chat_template", "tokenize_chat", "train_sentencepiece"]
