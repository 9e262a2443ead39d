"""The assistant loss mask for any chat template, from prefix renderings and token offsets.

Approach (no search of the rendered text for the reply, so a reply that also appears in the
prompt, or that the template rewrites, e.g. with `| trim`, is still masked exactly):

1. Character spans. For each assistant message i, render
     before = messages[:i] with the generation prompt   (the prompt the model would be given)
     after  = messages[:i+1] without it                 (the prompt plus the rendered reply)
   and check that `before` is a prefix of `after` and `after` a prefix of the full rendering. The
   reply span is after[len(before):]: the reply as the template wrote it plus whatever the template
   writes to close the turn (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, eos, ...). Trailing
   whitespace of that span is left out: the newline written after an end-of-turn token is never
   generated (sampling stops at the end-of-turn token) and belongs to the next turn's prompt, as in
   the built-in ChatML mask. When the template marks replies with `{% generation %}` blocks, those
   spans are used instead (trailing whitespace trimmed the same way), which also serves templates
   that rewrite earlier turns (e.g. drop the reasoning of old replies).
2. Tokens. The full rendering is encoded once with character offsets; a token is in the mask when
   its [start, end) overlaps a span (a token that straddles a span boundary counts, as in
   transformers' `return_assistant_tokens_mask`).

A template that breaks step 1's prefix property (one that rewrites earlier turns without
`{% generation %}` tags, or whose generation prompt differs from how it opens a written reply, such
as a `<think>` that only the prompt carries) is an error naming the message and the first
differing character, never a silently wrong mask.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Span = tuple[int, int]
# render(messages, add_generation_prompt) -> (text, {% generation %} spans)
RenderFn = Callable[[Sequence[Mapping[str, Any]], bool], tuple[str, list[Span]]]


def assistant_spans(render: RenderFn, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                    loss_from: int = 0) -> tuple[str, list[Span]]:
  """Returns the full rendering and the character spans [(start, end)] of the assistant replies.

  Args:
    loss_from: replies of messages[:loss_from] get no span (a preference prompt's earlier turns).

  Raises:
    ValueError: the template does not render messages[:i+1] as a continuation of messages[:i]
      (see the module docstring); the message says which message and where the texts differ.
  """
  text, generation_spans = render(messages, add_generation_prompt)
  if generation_spans:
    skip = sum(m.get("role") == "assistant" for m in messages[:loss_from])
    replies = sum(m.get("role") == "assistant" for m in messages)
    if skip and len(generation_spans) != replies:
      raise ValueError(f"chat template: {len(generation_spans)} {{% generation %}} blocks for {replies} assistant "
                       f"messages, so the replies before messages[{loss_from}] cannot be told apart")
    return text, [_rstrip(text, span) for span in generation_spans[skip:]]
  spans = []
  for i, message in enumerate(messages):
    if message.get("role") != "assistant" or i < loss_from:
      continue
    before, _ = render(messages[:i], True)
    after, _ = render(messages[:i + 1], False)
    _check_prefix(before, after, f"messages[:{i}] rendered with the generation prompt",
                  f"messages[:{i + 1}] (ending with assistant messages[{i}])")
    _check_prefix(after, text, f"messages[:{i + 1}]", "the whole conversation (the template rewrites earlier turns)")
    spans.append(_rstrip(after, (len(before), len(after))))
  return text, spans


def token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> np.ndarray:
  """bool [L]: True for the tokens whose character range [start, end) overlaps one of `spans`.

  An empty range (start == end) counts when start lies inside a span.
  """
  bounds = np.asarray(offsets, np.int64).reshape(-1, 2)
  start, end = bounds[:, 0], bounds[:, 1]  # [L]
  mask = np.zeros(start.shape, np.bool_)
  for a, b in spans:
    mask |= np.where(end > start, (start < b) & (end > a), (a <= start) & (start < b))
  return mask


def _rstrip(text: str, span: Span) -> Span:
  start, end = span
  while end > start and text[end - 1].isspace():
    end -= 1
  return start, end


def _check_prefix(prefix: str, text: str, prefix_name: str, text_name: str) -> None:
  if text.startswith(prefix):
    return
  k = next((j for j, (a, b) in enumerate(zip(prefix, text)) if a != b), min(len(prefix), len(text)))
  raise ValueError(
      f"chat template: {prefix_name} is not a prefix of {text_name}, so the assistant loss mask cannot be "
      f"derived; first difference at character {k}: {prefix[max(0, k - 30):k + 30]!r} vs "
      f"{text[max(0, k - 30):k + 30]!r}. Add {{% generation %}} tags around the replies in the template, "
      "or use a template that renders earlier turns the same way in every prefix")
