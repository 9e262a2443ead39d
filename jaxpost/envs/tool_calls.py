"""Reading the model's tool calls in its family's format.

Formats (what the chat templates render for an assistant message with `tool_calls`, so the parser reads
back what the template writes; tests/envs checks both directions against transformers):
- `hermes`: Qwen2.5 / Qwen3 and the built-in ChatML tool template: zero or more blocks
    <tool_call>\\n{"name": NAME, "arguments": {...}}\\n</tool_call>
  after optional free text (the message's `content`).
- `llama3`: Llama 3.1 / 3.2 custom tools: the whole reply is one JSON object
    {"name": NAME, "parameters": {...}}     ("arguments" is read too)
  optionally after `<|python_tag|>`; several calls may be separated by ";" or newlines.

A reply that tries to call and fails to parse (an unclosed `<tool_call>`, bad JSON, no name, arguments that
are not an object) yields an error text for the model in `errors`, and no call, never an exception.
"""
from __future__ import annotations

import dataclasses
import json
import re

from jaxpost.envs.tools import ToolCall

FORMATS = ("hermes", "llama3")


@dataclasses.dataclass(frozen=True)
class ParsedReply:
  content: str                      # text outside the calls (hermes) or the whole reply when it is not a call
  calls: tuple[ToolCall, ...]
  errors: tuple[str, ...]           # one message per malformed call


def _call_from_json(text: str, args_keys: tuple[str, ...]) -> ToolCall | str:
  """A ToolCall from a JSON object text, else what is wrong with it."""
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    return f"tool call is not valid JSON ({e.msg} at character {e.pos}): {text[:200]!r}"
  if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
    return f'tool call must be a JSON object with a "name" string: {text[:200]!r}'
  key = next((k for k in args_keys if k in obj), None)
  args = obj.get(key, {}) if key else {}
  if isinstance(args, str):  # Some models write the arguments as a JSON string.
    try:
      args = json.loads(args)
    except json.JSONDecodeError:
      return f'tool call "{obj["name"]}": arguments are a string that is not JSON: {args[:200]!r}'
  if not isinstance(args, dict):
    return f'tool call "{obj["name"]}": arguments must be a JSON object, got {type(args).__name__}'
  return ToolCall(obj["name"], args)


_HERMES = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def parse_hermes(text: str) -> ParsedReply:
  calls, errors = [], []
  for body in _HERMES.findall(text):
    out = _call_from_json(body.strip(), ("arguments", "parameters"))
    (calls if isinstance(out, ToolCall) else errors).append(out)
  if "<tool_call>" in _HERMES.sub("", text):
    errors.append("a <tool_call> was opened and not closed with </tool_call>")
  first = text.find("<tool_call>")
  content = (text[:first] if first >= 0 else text).strip()
  return ParsedReply(content, tuple(calls), tuple(errors))


def parse_llama3(text: str) -> ParsedReply:
  body = text.strip()
  if body.startswith("<|python_tag|>"):
    body = body[len("<|python_tag|>"):].strip()
  if not body.startswith("{"):
    return ParsedReply(text.strip(), (), ())
  calls, errors = [], []
  for part in (p.strip() for p in re.split(r";\s*(?=\{)|\n+(?=\{)", body)):
    out = _call_from_json(part, ("parameters", "arguments"))
    (calls if isinstance(out, ToolCall) else errors).append(out)
  return ParsedReply("", tuple(calls), tuple(errors))


def parse_reply(text: str, fmt: str) -> ParsedReply:
  """Content, calls and malformed-call errors of an assistant reply in format `fmt` (see FORMATS)."""
  if fmt == "hermes":
    return parse_hermes(text)
  if fmt == "llama3":
    return parse_llama3(text)
  raise ValueError(f"unknown tool-call format {fmt!r}; expected one of {', '.join(FORMATS)}")


def detect_format(chat_template: str | None) -> str:
  """The tool-call format a chat template writes: llama3 for templates with the `ipython` role or
  `<|python_tag|>`, else hermes (Qwen, the built-in ChatML tool template)."""
  if chat_template and ("ipython" in chat_template or "<|python_tag|>" in chat_template):
    return "llama3"
  return "hermes"
