"""Renders Hugging Face chat templates with jinja2 exactly as `transformers` does.

Same environment as `tokenizer.apply_chat_template(messages, tokenize=False, ...)`: an immutable
sandbox with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that
does not escape HTML (and takes `indent`, `separators`, `sort_keys`), the globals `raise_exception`,
`strftime_now`, a plain `dict` and a `namespace` that rejects underscore names, and the
`{% generation %}...{% endgeneration %}` tag, whose rendered character spans are recorded.
The template sees `messages`, `tools`, `documents`, `add_generation_prompt`, the named special tokens
(`bos_token`, `eos_token`, ...) and any extra keyword arguments (which win over special tokens).
Messages are normalised first, as transformers does: keys whose value is None are dropped, and a
reasoning text under `thinking`/`reasoning` is also given as `reasoning_content` (and vice versa).
"""
from __future__ import annotations

import contextvars
import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

Span = tuple[int, int]
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
  """A template that does not compile, or that rejects a conversation (its `raise_exception`)."""


class _Tracker:
  """Rendered length so far and the `{% generation %}` spans seen, for one render call."""

  def __init__(self):
    self.length = 0
    self.spans: list[Span] = []


_TRACKER: contextvars.ContextVar[_Tracker | None] = contextvars.ContextVar("jaxpost_chat_tracker", default=None)


class _GenerationTag(jinja2.ext.Extension):
  """`{% generation %}body{% endgeneration %}` renders `body` and records its character span."""
  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

  def _render_body(self, caller) -> str:
    text = caller()
    if (tracker := _TRACKER.get()) is not None:
      # Blocks before this one were already yielded (and counted) when the generator got here.
      tracker.spans.append((tracker.length, tracker.length + len(text)))
    return text


class _Namespace(jinja2.utils.Namespace):
  """jinja's `namespace`, refusing underscore attributes (no reaching CPython internals)."""

  def __init__(*args, **kwargs):  # pylint: disable=no-method-argument
    self, attrs = args[0], dict(*args[1:], **kwargs)
    for name in attrs:
      _Namespace._check(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name, value):
    _Namespace._check(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attribute {name!r} on a namespace")


class _Dict:
  """`dict(...)` and `dict.fromkeys(...)` without exposing the `dict` type itself."""

  def __call__(self, *args, **kwargs):
    return dict(*args, **kwargs)

  def fromkeys(self, *args, **kwargs):
    return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
  return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
  """Compiles a chat template (cached by source); ChatTemplateError with the line on a syntax error."""
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_Dict(),
                     namespace=_Namespace)
  try:
    return env.from_string(source)
  except jinja2.exceptions.TemplateSyntaxError as e:
    raise ChatTemplateError(f"chat template line {e.lineno}: {e.message}") from None


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Copies of `messages` without None values, with reasoning aliased under every name templates read."""
  out = []
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping):
      raise ValueError(f"messages[{i}] must be a dict, got {type(message).__name__}")
    message = {k: v for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING_KEYS if k in message), None)
    if reasoning is not None:
      message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    out.append(message)
  return out


def render_chat_template(source: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                         special_tokens: Mapping[str, str] | None = None, tools: list | None = None,
                         documents: list | None = None, **kwargs) -> tuple[str, list[Span]]:
  """Renders `messages` with the template `source`.

  Args:
    special_tokens: {"bos_token": ..., "eos_token": ..., ...}, visible to the template as variables.
    tools, documents, kwargs: passed to the template as in `apply_chat_template` (kwargs win over
      special tokens of the same name).

  Returns:
    text: the rendered conversation (the string `apply_chat_template(..., tokenize=False)` returns).
    generation_spans: [(start, end)] character spans of each `{% generation %}` block, in order
      (empty when the template has no such tag).

  Raises:
    ChatTemplateError: the template's `raise_exception(...)` message, or another template error.
  """
  template = compile_template(source)
  context = {**(special_tokens or {}), **kwargs}
  tracker = _Tracker()
  parts = []
  token = _TRACKER.set(tracker)
  try:
    for block in template.generate(messages=normalize_messages(messages), tools=tools, documents=documents,
                                   add_generation_prompt=add_generation_prompt, **context):
      parts.append(block)
      tracker.length += len(block)
  except jinja2.exceptions.TemplateError as e:
    raise ChatTemplateError(f"chat template: {e.message or e}") from None
  finally:
    _TRACKER.reset(token)
  return "".join(parts), tracker.spans
