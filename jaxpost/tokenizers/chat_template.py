"""The built-in ChatML-style chat template and its assistant loss mask.

Each message renders as `<|im_start|>{role}\\n{content}<|im_end|>\\n`; a generation prompt is
`<|im_start|>assistant\\n`, and generation stops at `<|im_end|>` (see `chat_eos_id`).

The loss mask is built by tokenising segment by segment (special ids, role header, content,
closing tag), never by searching the rendered string, so it is exact even when a reply's text
also appears in the prompt. With the sentencepiece tokenizers of this package (the specials and
"\\n" are user-defined symbols, hence always piece boundaries) the segment-wise ids equal
`tokenizer.encode(render_chat(messages))`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # base.py imports this module for its ChatML defaults.
  from jaxpost.tokenizers.base import Tokenizer

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_SPECIAL_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant")

Message = dict[str, Any]


def check_messages(messages: Any) -> None:
  """Raises ValueError naming the first malformed message (`messages[i]: ...`), else None.

  A message is a dict with `role` in ROLES and a string `content`; other keys are ignored.
  """
  if not isinstance(messages, list):
    raise ValueError(f"`messages` must be a list of {{role, content}} dicts, got {type(messages).__name__}")
  if not messages:
    raise ValueError("`messages` is empty")
  for i, message in enumerate(messages):
    if not isinstance(message, dict):
      raise ValueError(f"messages[{i}] must be a dict with `role` and `content`, got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
      raise ValueError(f"messages[{i}]: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    content = message.get("content")
    if not isinstance(content, str):
      raise ValueError(f"messages[{i}] ({role}): `content` must be a string, got {type(content).__name__}")


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
  """Renders `messages` as ChatML text, optionally ending with `<|im_start|>assistant\\n`."""
  check_messages(list(messages))
  text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
  if add_generation_prompt:
    text += f"{IM_START}assistant\n"
  return text


def tokenize_chat(messages: Sequence[Message], tokenizer: Tokenizer,
                  add_generation_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Tokenises a conversation with the ChatML template; no bos or eos is added.

  Returns:
    tokens: int32 [L].
    loss_mask: bool [L], True exactly on the content tokens of assistant messages and on their
      closing `<|im_end|>` (so the model learns to stop); False on role headers, the newline
      after `<|im_end|>`, every non-assistant token and the generation prompt.
  """
  check_messages(list(messages))
  im_start, im_end = tokenizer.token_id(IM_START), tokenizer.token_id(IM_END)
  newline = tokenizer.encode("\n")
  tokens: list[int] = []
  loss_mask: list[bool] = []

  def add(ids: list[int], loss: bool) -> None:
    tokens.extend(ids)
    loss_mask.extend([loss] * len(ids))

  for message in messages:
    is_assistant = message["role"] == "assistant"
    add([im_start] + tokenizer.encode(message["role"] + "\n"), False)
    add(tokenizer.encode(message["content"]) + [im_end], is_assistant)
    add(newline, False)
  if add_generation_prompt:
    add([im_start] + tokenizer.encode("assistant\n"), False)
  return np.asarray(tokens, np.int32), np.asarray(loss_mask, np.bool_)


def chat_eos_id(tokenizer: Tokenizer) -> int:
  """The id that ends an assistant turn, used as eos when generating chat replies."""
  return tokenizer.token_id(IM_END)
