"""Tools: Python functions with a JSON schema, called by the model and answered with an observation.

A tool's schema is the object `transformers` passes to chat templates as `tools=[...]`:
  {"type": "function", "function": {"name", "description", "parameters": JSON schema of an object}}.
`call_tool` never raises: unknown tools, arguments that do not fit the schema, exceptions and calls that
run past the tool's timeout all come back as an error observation (text for the model) with `ok=False`,
so a hostile or confused call is a lesson for the model, never a crashed run. A timed-out call's thread
cannot be killed and is abandoned (tools that run code use the sandbox, whose subprocess is killed).
"""
from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MAX_OBSERVATION_CHARS = 2000  # A tool's reply is cut to this (head and tail kept) before it enters the context.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tool:
  name: str
  description: str
  parameters: Mapping[str, Any]     # JSON schema: {"type": "object", "properties": {...}, "required": [...]}
  fn: Callable[..., Any]            # fn(**arguments) -> result (str, or anything json.dumps accepts)
  timeout_s: float = 5.0

  @property
  def schema(self) -> dict:
    return {"type": "function", "function": {"name": self.name, "description": self.description,
                                             "parameters": dict(self.parameters)}}


@dataclasses.dataclass(frozen=True)
class ToolCall:
  name: str
  arguments: dict

  def as_message_entry(self) -> dict:
    """The entry of an assistant message's `tool_calls` list, as transformers' templates read it."""
    return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclasses.dataclass(frozen=True)
class ToolResult:
  name: str
  content: str     # the observation the model reads
  ok: bool         # False: unknown tool, bad arguments, exception or timeout
  timed_out: bool = False


_JSON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "array": (list,),
               "object": (dict,), "null": (type(None),)}


def check_arguments(parameters: Mapping[str, Any], arguments: Any) -> str | None:
  """What is wrong with `arguments` for the schema `parameters` (required, unknown and top-level types),
  or None when they fit."""
  if not isinstance(arguments, dict):
    return f"arguments must be a JSON object, got {type(arguments).__name__}"
  properties = parameters.get("properties", {})
  missing = [k for k in parameters.get("required", ()) if k not in arguments]
  if missing:
    return f"missing required argument(s) {', '.join(map(repr, missing))}"
  unknown = [k for k in arguments if k not in properties]
  if unknown and parameters.get("additionalProperties", False) is False:
    return f"unknown argument(s) {', '.join(map(repr, unknown))}; expected {', '.join(map(repr, properties))}"
  for key, value in arguments.items():
    kind = properties.get(key, {}).get("type")
    types = _JSON_TYPES.get(kind, ())
    if types and (not isinstance(value, types) or (kind in ("integer", "number") and isinstance(value, bool))):
      return f"argument {key!r} must be {kind}, got {type(value).__name__}"
  return None


def _clip(text: str, limit: int = MAX_OBSERVATION_CHARS) -> str:
  if len(text) <= limit:
    return text
  half = limit // 2
  return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"


def call_tool(tools: Sequence[Tool], call: ToolCall) -> ToolResult:
  """Runs `call` against `tools` (by name) within the tool's timeout; never raises."""
  by_name = {t.name: t for t in tools}
  tool = by_name.get(call.name)
  if tool is None:
    return ToolResult(call.name, f"error: unknown tool {call.name!r}; available: {', '.join(by_name) or 'none'}",
                      False)
  problem = check_arguments(tool.parameters, call.arguments)
  if problem is not None:
    return ToolResult(call.name, f"error: {call.name}: {problem}", False)
  box: dict = {}

  def run():
    try:
      box["value"] = tool.fn(**call.arguments)
    except BaseException as e:  # noqa: BLE001 - reported to the model.
      box["error"] = e
  thread = threading.Thread(target=run, daemon=True, name=f"tool-{tool.name}")
  thread.start()
  thread.join(tool.timeout_s)
  if thread.is_alive():
    return ToolResult(call.name, f"error: {call.name} timed out after {tool.timeout_s:g} s", False, timed_out=True)
  if "error" in box:
    e = box["error"]
    return ToolResult(call.name, _clip(f"error: {type(e).__name__}: {e}"), False)
  value = box.get("value")
  try:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
  except (TypeError, ValueError) as e:
    return ToolResult(call.name, f"error: {call.name} returned {type(value).__name__}, not text or JSON: {e}", False)
  return ToolResult(call.name, _clip(text), True)
