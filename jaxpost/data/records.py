"""One JSONL record -> tokens and loss mask, for the three supervised formats.

  chat               {"messages": [{"role", "content"}, ...]}  loss on assistant replies + end of turn
  chat with tools    {"messages": [... assistant `tool_calls`, `tool` results ...], "tools": [schema, ...]}
                     built turn by turn as a multi-turn episode's sequence (envs.chat.encode_conversation)
  prompt/completion  {"prompt": str, "completion": str}         loss on completion (+ eos)
  plain text         {"text": str}                              loss on every token (+ eos)

Other keys (ids, sources, ...) are ignored. Chat records are `tokenizer.encode_chat(messages)`: the
tokenizer's template (built-in ChatML, or a Hugging Face folder's) with the bos it puts first, and no
eos: the end-of-turn token (`<|im_end|>`, `<|eot_id|>`, ...) already ends each reply and is trained
on. A bos never carries loss.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jaxpost.data.jsonl import DataError
from jaxpost.tokenizers import Tokenizer, check_messages

FORMATS = '{"messages": [{"role", "content"}, ...]}, {"prompt", "completion"} or {"text"}'


def tokenize_record(obj: Any, tokenizer: Tokenizer, *, where: str, add_bos: bool = True,
                    add_eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Tokenises one record in any of the three formats.

  Args:
    obj: the parsed JSON object.
    where: "path:line", prefixed to every error message.
    add_bos: prepend bos to prompt/completion and text records when the tokenizer starts sequences
      with one (`tokenizer.adds_bos`); chat records get the bos `encode_chat` gives.
    add_eos: append eos (carrying loss) to prompt/completion and text records.

  Returns:
    tokens: int32 [L].
    loss_mask: bool [L], True on the tokens the model is trained to predict.

  Raises:
    DataError: `"{where}: ..."` for a malformed record.
  """
  if not isinstance(obj, dict):
    raise DataError(f"{where}: a record must be a JSON object ({FORMATS}), got {type(obj).__name__}")
  if "messages" in obj and _has_tools(obj):
    tokens, loss_mask = _tool_chat(obj, tokenizer, where)
    add_bos = add_eos = False
  elif "messages" in obj:
    tokens, loss_mask = _chat(obj["messages"], tokenizer, where)
    add_bos = add_eos = False
  elif "prompt" in obj and "completion" in obj:
    tokens, loss_mask = _prompt_completion(obj, tokenizer, where)
  elif "text" in obj:
    tokens, loss_mask = _text(obj["text"], tokenizer, where)
  else:
    raise DataError(f"{where}: unknown record format with keys {sorted(obj)}; expected {FORMATS}")

  if add_bos and tokenizer.adds_bos:
    tokens = np.concatenate([np.asarray([tokenizer.bos_id], np.int32), tokens])
    loss_mask = np.concatenate([np.zeros([1], np.bool_), loss_mask])
  if add_eos:
    if tokenizer.eos_id is None:
      raise DataError(f"{where}: add_eos=True but the tokenizer has no eos id")
    tokens = np.concatenate([tokens, np.asarray([tokenizer.eos_id], np.int32)])
    loss_mask = np.concatenate([loss_mask, np.ones([1], np.bool_)])
  return tokens, loss_mask


def _chat(messages: Any, tokenizer: Tokenizer, where: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    check_messages(messages)
  except ValueError as e:
    raise DataError(f"{where}: {e}") from None
  roles = [m["role"] for m in messages]
  if "assistant" not in roles:
    raise DataError(f"{where}: no assistant message to train on (roles: {roles})")
  for i, m in enumerate(messages):
    if m["role"] == "assistant" and not m["content"].strip():
      raise DataError(f"{where}: messages[{i}] (assistant) has empty content")
  try:
    return tokenizer.encode_chat(messages)
  except ValueError as e:  # The template rejects the conversation (raise_exception, prefix check).
    raise DataError(f"{where}: {e}") from None


def _has_tools(obj: dict) -> bool:
  messages = obj["messages"]
  return "tools" in obj or (isinstance(messages, list) and any(
      isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages))


def _tool_chat(obj: dict, tokenizer: Tokenizer, where: str) -> tuple[np.ndarray, np.ndarray]:
  from jaxpost.envs import chat  # Pulls in the environments (and rewards) only for records that need them.
  messages, tools = obj["messages"], obj.get("tools")
  if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
    raise DataError(f"{where}: `tools` must be a list of JSON schemas (objects)")
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
      raise DataError(f"{where}: messages[{i}]: expected a dict with role system, user, assistant or tool")
    if not isinstance(m.get("content", ""), str):
      raise DataError(f"{where}: messages[{i}] ({m['role']}): `content` must be a string")
  try:
    ids, mask = chat.encode_conversation(tokenizer, messages, tools)
  except ValueError as e:
    raise DataError(f"{where}: {e}") from None
  return np.asarray(ids, np.int32), np.asarray(mask, np.bool_)


def _prompt_completion(obj: dict, tokenizer: Tokenizer, where: str) -> tuple[np.ndarray, np.ndarray]:
  prompt, completion = obj["prompt"], obj["completion"]
  for key, value in (("prompt", prompt), ("completion", completion)):
    if not isinstance(value, str):
      raise DataError(f"{where}: `{key}` must be a string, got {type(value).__name__}")
  if not completion:
    raise DataError(f"{where}: `completion` is empty")
  prompt_ids, completion_ids = tokenizer.encode(prompt), tokenizer.encode(completion)
  tokens = np.asarray(prompt_ids + completion_ids, np.int32)
  loss_mask = np.asarray([False] * len(prompt_ids) + [True] * len(completion_ids), np.bool_)
  return tokens, loss_mask


def _text(text: Any, tokenizer: Tokenizer, where: str) -> tuple[np.ndarray, np.ndarray]:
  if not isinstance(text, str):
    raise DataError(f"{where}: `text` must be a string, got {type(text).__name__}")
  if not text:
    raise DataError(f"{where}: `text` is empty")
  tokens = np.asarray(tokenizer.encode(text), np.int32)
  return tokens, np.ones(tokens.shape, np.bool_)
