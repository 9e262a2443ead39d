"""Rewards that read the completion's shape: the `format` tags, `exact_match`, `multiple_choice` (A-E)."""
from __future__ import annotations

import re

from jaxpost.rewards import extract
from jaxpost.rewards.registry import register

# The R1-style layout: reasoning in <think>, the answer in <answer>, nothing else around them. Each tag
# holds some non-space text and no other tag, so `<answer>1</answer><answer>2</answer>` (two answers)
# and `<answer> </answer>` fail.
_NO_TAG = r"(?!</?(?:think|answer)>)"
_TAG_BODY = rf"(?:{_NO_TAG}.)*?{_NO_TAG}\S(?:{_NO_TAG}.)*?"
THINK_ANSWER = rf"^\s*<think>{_TAG_BODY}</think>\s*<answer>{_TAG_BODY}</answer>\s*$"


def make_format_reward(pattern: str = THINK_ANSWER, flags: int = re.DOTALL):
  """fn(completion, example) -> 1.0 if the whole completion matches `pattern` (re.fullmatch), else 0.0."""
  regex = re.compile(pattern, flags)

  def format_reward(completion: str, example: dict) -> float:
    del example
    return 1.0 if regex.fullmatch(completion) else 0.0
  return format_reward


register("format")(make_format_reward())

_TEXT_ANCHORS = ("answer_tag", "boxed")


def final_answer(completion: str) -> str | None:
  """The answer part of a completion: the <answer> tag, else the \\boxed{...}, else all of it; None if
  the tags (or boxes) disagree: `\\boxed{London} ... \\boxed{Paris}` lists candidates."""
  answer, decided = extract.anchored_answer(completion, _TEXT_ANCHORS)
  if decided:
    return answer.text if answer else None
  return completion


def normalize_text(text: str) -> str:
  """Lower case, collapsed spaces, no surrounding quotes or final period."""
  text = " ".join(str(text).split()).lower()
  return text.strip().strip("\"'`").rstrip(".").strip()


@register("exact_match")
def exact_match_reward(completion: str, example: dict) -> float:
  """1.0 if the final answer equals example['answer'] after `normalize_text`."""
  answer = final_answer(completion)
  return 1.0 if answer is not None and normalize_text(answer) == normalize_text(example["answer"]) else 0.0


def _exact_match_source(completion: str, example: dict) -> str:
  del example
  return "anchored" if extract.anchored_answer(completion, _TEXT_ANCHORS)[1] else "fallback"


exact_match_reward.answer_source = _exact_match_source  # Read by the rollout metrics (see provenance.py).
exact_match_reward.verifier = True


_CHOICE_PATTERNS = (
    re.compile(r"^\W*\(?([A-E])\)?\W*$"),                                    # the answer is just "B", "(B)", "B."
    re.compile(r"answer\s*(?:is|:)?\s*(?:option\s*)?\(?\**([A-E])\b", re.IGNORECASE),  # "the answer is (C)"
)


def choice_letter(completion: str) -> str | None:
  """The chosen letter A-E: the <answer> / \\boxed content if it is a lone letter, else the last
  'answer is X' / 'Answer: X', else a completion that is a lone letter. None if none is found."""
  for text in (final_answer(completion) or "", completion):
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


multiple_choice_reward.verifier = True
