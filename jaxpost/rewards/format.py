"""Rewards that read the completion's shape: the `format` tags, `exact_match`, `multiple_choice` (A-E)."""
from __future__ import annotations

import re

from jaxpost.rewards.math import answer_span
from jaxpost.rewards.registry import register

# The R1-style layout: reasoning in <think>, the answer in <answer>, nothing else around them.
THINK_ANSWER = r"^\s*<think>.+?</think>\s*<answer>.+?</answer>\s*$"


def make_format_reward(pattern: str = THINK_ANSWER, flags: int = re.DOTALL):
  """fn(completion, example) -> 1.0 if the whole completion matches `pattern` (re.fullmatch), else 0.0."""
  regex = re.compile(pattern, flags)

  def format_reward(completion: str, example: dict) -> float:
    del example
    return 1.0 if regex.fullmatch(completion) else 0.0
  return format_reward


register("format")(make_format_reward())

_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")


def final_answer(completion: str) -> str:
  """The answer part of a completion: the last <answer> tag, else the last \\boxed{...}, else all of it."""
  span = answer_span(completion)
  if span is not completion:
    return span
  boxed = _BOXED.findall(completion)
  return boxed[-1] if boxed else completion


def normalize_text(text: str) -> str:
  """Lower case, collapsed spaces, no surrounding quotes or final period."""
  text = " ".join(str(text).split()).lower()
  return text.strip().strip("\"'`").rstrip(".").strip()


@register("exact_match")
def exact_match_reward(completion: str, example: dict) -> float:
  """1.0 if the final answer equals example['answer'] after `normalize_text`."""
  return 1.0 if normalize_text(final_answer(completion)) == normalize_text(example["answer"]) else 0.0


_CHOICE_PATTERNS = (
    re.compile(r"^\W*\(?([A-E])\)?\W*$"),                                    # the answer is just "B", "(B)", "B."
    re.compile(r"answer\s*(?:is|:)?\s*(?:option\s*)?\(?\**([A-E])\b", re.IGNORECASE),  # "the answer is (C)"
)


def choice_letter(completion: str) -> str | None:
  """The chosen letter A-E: the <answer> / \\boxed content if it is a lone letter, else the last
  'answer is X' / 'Answer: X', else a completion that is a lone letter. None if none is found."""
  for text in (final_answer(completion), completion):
    text = text.strip()
    match = _CHOICE_PATTERNS[0].match(text)
    if match:
      return match.group(1)
    found = _CHOICE_PATTERNS[1].findall(text)
    if found:
      return found[-1].upper()
  return None


@register("multiple_choice")
def multiple_choice_reward(completion: str, example: dict) -> float:
  """1.0 if the chosen letter (see `choice_letter`) is example['answer'] ('B', '(B)' or 'b')."""
  gold = re.sub(r"[^A-Ea-e]", "", str(example["answer"])).upper()
  return 1.0 if gold and choice_letter(completion) == gold else 0.0
