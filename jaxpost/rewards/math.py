"""`math` reward: is the completion's final answer mathematically equal to example['answer']?

  1. The answer span: the last <answer>...</answer> if any, else the whole completion (math-verify then
     prefers the last \\boxed{...}, then "final answer is ...", then the last expression).
  2. Units after a number are stripped (`5 \\text{ cm}`, `5\\,\\mathrm{kg}`, `30^\\circ`, `12 meters`).
  3. math-verify (HuggingFace) parses gold and prediction into sympy and compares them: fractions,
     decimals, LaTeX (\\frac, \\dfrac, \\sqrt), percentages, thousands separators, sets, intervals.
  4. If either side does not parse (or math-verify raises), the last number of each is compared,
     relative tolerance 1e-6.
math-verify's own signal-based timeouts are off (they only work on the main thread); the caller's
`score_batch` timeout bounds a stuck call instead.
"""
from __future__ import annotations

import logging
import math
import re

from jaxpost.rewards.registry import register

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_LATEX_UNIT = re.compile(r"(\d)\s*(?:\\[,;! ]\s*)*\\(?:text|mbox|mathrm|textrm|operatorname)\s*"
                         r"\{\s*[A-Za-z][A-Za-z .]*\}(?:\s*\^\s*\{?\d\}?)?")
_DEGREE = re.compile(r"(\d)\s*\^\s*\{?\\circ\}?")
_WORD_UNIT = re.compile(r"(\d)\s+(?:cm|mm|km|m|kg|g|mg|s|sec|seconds?|minutes?|hours?|days?|years?|meters?|"
                        r"centimeters?|kilometers?|inches|inch|feet|foot|ft|miles?|pounds?|lbs?|dollars?|cents?|"
                        r"degrees?|units?|square|cubic)\b\.?")


def answer_span(completion: str) -> str:
  """The content of the last <answer>...</answer>, else the completion."""
  tags = _ANSWER_TAG.findall(completion)
  return tags[-1] if tags else completion


def strip_units(text: str) -> str:
  """Removes a unit written after a number: `5 \\text{ cm}^2` -> `5`, `30^\\circ` -> `30`, `12 meters` -> `12`."""
  text = _LATEX_UNIT.sub(r"\1", text)
  text = _DEGREE.sub(r"\1", text)
  return _WORD_UNIT.sub(r"\1", text)


def last_number(text: str) -> float | None:
  """The last number in text (thousands commas dropped), or None."""
  for match in reversed(_NUMBER.findall(text)):
    try:
      return float(match.replace(",", ""))
    except ValueError:
      continue
  return None


def _parse(text: str):
  from math_verify import parse
  return parse(text, parsing_timeout=None)


def _parse_gold(gold: str):
  # A bare LaTeX answer ("x^2+1", "\\sqrt{2}") only parses inside math delimiters.
  if "$" not in gold and "\\boxed" not in gold:
    parsed = _parse(f"${gold}$")
    if parsed:
      return parsed
  return _parse(gold)


def numbers_equal(a: float | None, b: float | None, rel_tol: float = 1e-6) -> bool:
  return a is not None and b is not None and math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)


@register("math")
def math_reward(completion: str, example: dict) -> float:
  """1.0 if the final answer equals example['answer'] (see the module docstring), else 0.0."""
  gold = str(example["answer"]).strip()
  span = strip_units(answer_span(completion))
  try:
    from math_verify import verify
    gold_parsed, pred_parsed = _parse_gold(gold), _parse(span)
    if gold_parsed and pred_parsed:
      return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=None) else 0.0
  except Exception as e:  # noqa: BLE001 - math-verify can raise on odd input; fall back to numbers.
    logging.debug("math-verify failed on %r vs %r: %s", span[-200:], gold, e)
  return 1.0 if numbers_equal(last_number(span), last_number(strip_units(gold))) else 0.0


# math-verify warns once that its timeouts are off: that is deliberate here (see the module docstring).
class _DropTimeoutWarning(logging.Filter):
  def filter(self, record):
    return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
  logging.getLogger(_name).addFilter(_DropTimeoutWarning())
