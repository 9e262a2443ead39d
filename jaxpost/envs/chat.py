"""Rendering an episode's conversation (with tools, tool calls and tool results) and its tokens.

A tokenizer with a Hugging Face chat template renders through that template (`tools=` as transformers
passes them). The built-in sentencepiece tokenizers render through CHATML_TOOLS below: the built-in ChatML
(identical to `chat_template.render_chat` when the conversation has no tools and no tool messages), plus
the hermes convention Qwen2.5 uses for tools: their schemas in the system message, calls as
`<tool_call>` JSON blocks, results as `<tool_response>` blocks in a user turn.

Tokens of an episode are never re-encoded from text: the model's own sampled tokens stay as sampled, and
what the environment adds is the text the template writes between the end of the model's turn and the
next generation prompt (`continuation_text`), encoded on its own.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxpost.envs import tool_calls as tool_calls_lib
from jaxpost.tokenizers.hf_chat_template import render_chat_template

CHATML_TOOLS = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}\n"
    "    {{- '# Tools\\n<tools>' }}\n"
    "    {%- for tool in tools %}{{- '\\n' + tool | tojson }}{%- endfor %}\n"
    "    {{- '\\n</tools>\\nCall one as <tool_call>\\n{\"name\": ..., \"arguments\": {...}}\\n</tool_call>'"
    " + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' and loop.first and tools %}{%- continue %}{%- endif %}\n"
    "    {%- if message.role == 'tool' %}\n"
    "        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}\n"
    "        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}\n"
    "    {%- elif message.role == 'assistant' and message.tool_calls %}\n"
    "        {{- '<|im_start|>assistant\\n' + (message.content or '') }}\n"
    "        {%- for call in message.tool_calls %}\n"
    "            {%- if call.function is defined %}{%- set call = call.function %}{%- endif %}\n"
    "            {%- if not loop.first or message.content %}{{- '\\n' }}{%- endif %}\n"
    "            {{- '<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' + call.arguments | tojson"
    " + '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n")

Message = Mapping[str, Any]


def template_of(tokenizer) -> str:
  """The template an episode renders with: the tokenizer's own, else CHATML_TOOLS."""
  return getattr(tokenizer, "chat_template", None) or CHATML_TOOLS


def tool_format(tokenizer) -> str:
  return tool_calls_lib.detect_format(template_of(tokenizer))


def render(tokenizer, messages: Sequence[Message], tools: Sequence[dict] | None,
           add_generation_prompt: bool) -> str:
  """The conversation as text, with `tools` (schemas) offered; what `apply_chat_template` writes."""
  tools = list(tools) or None if tools is not None else None
  if getattr(tokenizer, "chat_template", None):
    return tokenizer.render_chat(messages, add_generation_prompt=add_generation_prompt, tools=tools)
  return render_chat_template(CHATML_TOOLS, messages, add_generation_prompt=add_generation_prompt, tools=tools)[0]


def encode_prompt(tokenizer, text: str) -> list[int]:
  """Ids of an episode's opening text: a bos first where the built-in template is used and the tokenizer
  adds one (a Hugging Face template writes its own bos as text)."""
  bos = [tokenizer.bos_id] if not getattr(tokenizer, "chat_template", None) and tokenizer.adds_bos else []
  return bos + list(tokenizer.encode(text))


def continuation_text(tokenizer, before: Sequence[Message], added: Sequence[Message], tools) -> str:
  """The text between the end of the model's last turn (its end-of-turn token, the last token sampled) and
  the next generation prompt, once the environment's messages `added` follow `before` (which ends with
  that assistant turn).

  render(before) ends with the turn's end-of-turn token plus any whitespace the template writes after it
  (ChatML's newline): that whitespace is never sampled, so it starts the continuation. Raises ValueError
  when the template rewrites earlier turns (render(before) is not a prefix of the longer rendering)."""
  head = render(tokenizer, before, tools, add_generation_prompt=False)
  full = render(tokenizer, list(before) + list(added), tools, add_generation_prompt=True)
  if not full.startswith(head):
    at = next(i for i, (a, b) in enumerate(zip(head, full + "\0" * len(head))) if a != b)
    raise ValueError(f"the chat template rewrites earlier turns once an environment message follows (first "
                     f"difference at character {at}: {head[at:at + 40]!r} vs {full[at:at + 40]!r}); multi-turn "
                     "episodes need a template whose renderings extend each other")
  return head[len(head.rstrip()):] + full[len(head):]


def encode_conversation(tokenizer, messages: Sequence[Message], tools) -> tuple[list[int], list[bool]]:
  """(ids, loss mask) of a finished conversation with tools, built turn by turn exactly as an episode builds
  its sequence: the opening prompt (everything before the first assistant message, generation prompt
  included), each assistant turn as the ids of its rendered text up to and including its end-of-turn token
  (loss True), and between turns the continuation text (loss False). So SFT on a transcript trains the very
  tokens a rollout of it would hold. Messages after the last assistant turn are left out.

  Raises ValueError naming the message when there is no assistant turn or the template breaks the prefix
  property (see continuation_text)."""
  roles = [m.get("role") for m in messages]
  if "assistant" not in roles:
    raise ValueError(f"no assistant message to train on (roles: {roles})")
  first = roles.index("assistant")
  if first == 0:
    raise ValueError("messages[0] is an assistant turn: nothing prompts it")
  stop_ids = set(tokenizer.chat_stop_ids)
  ids = encode_prompt(tokenizer, render(tokenizer, messages[:first], tools, add_generation_prompt=True))
  mask = [False] * len(ids)
  turns = [i for i, r in enumerate(roles) if r == "assistant"]
  for k, i in enumerate(turns):
    head = render(tokenizer, messages[:i], tools, add_generation_prompt=True)
    full = render(tokenizer, messages[:i + 1], tools, add_generation_prompt=False)
    if not full.startswith(head):
      raise ValueError(f"messages[{i}]: the rendering with this assistant turn does not extend the prompt before it")
    turn = list(tokenizer.encode(full[len(head):].rstrip()))
    if not turn or turn[-1] not in stop_ids:
      raise ValueError(f"messages[{i}]: the rendered turn does not end with an end-of-turn token {sorted(stop_ids)}")
    ids += turn
    mask += [True] * len(turn)
    if k + 1 < len(turns):
      cont = tokenizer.encode(continuation_text(tokenizer, messages[:i + 1], messages[i + 1:turns[k + 1]], tools))
      ids += cont
      mask += [False] * len(cont)
  return ids, mask
