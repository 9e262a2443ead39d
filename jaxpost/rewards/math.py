"""`math` reward: does the completion state a final answer mathematically equal to example['answer']?

  1. The answer: `extract.extract_answer(completion, mode)`, an anchor's content or (mode `flexible`)
     the guarded final value; none (score 0) for a hedge, an empty or cut-off anchor, or a value that
     is an operand or copied from the prompt (see extract.py).
  2. Its value: `values.answer_value`; none (score 0) if it is arithmetic left unevaluated ("15 + 86").
  3. The gold: example['answer'], read like a reference solution if it is one (`gold_answer`: the
     last `\\boxed{}`, or the number after `####`).
  4. math-verify (HuggingFace) parses both into sympy and compares them: fractions, decimals, LaTeX
     (\\frac, \\sqrt), percentages, thousands separators, sets, intervals, symbolic equality. Without it
     (or if either side does not parse) both must be plain numbers (`values.to_number`), equal within
     a relative 1e-6.

Modes, registered as `math:MODE` (`rl.reward_fns = "math:boxed"`): boxed, gsm8k, answer_tag, answer_is,
anchored, flexible. Plain `math` is `math:flexible`: anchors first, else the final value. Flexible is
safe: its fallback takes a value only where it is a result ("... = 64", "64"), never an operand of an
expression the model left for the grader to evaluate nor a number copied from the question, so a
restated question scores 0 (tests/rewards/data/adversarial.jsonl holds the cases); and it still scores
the unanchored replies small chat models give to prompts that prescribe no format (the bundled
arithmetic prompts), where an anchors-only default would score every reply 0 and teach nothing. Use
an anchored mode when the prompts ask for that anchor: GSM8K-trained models end with `#### N`, MATH's
with `\\boxed{}`.

math-verify's own signal-based timeouts are off (they only work on the main thread); the caller's
`score_batch` timeout bounds a stuck call instead.
"""
from __future__ import annotations

import dataclasses
import logging

from jaxpost.rewards import extract, values
from jaxpost.rewards.registry import register

DEFAULT_MODE = "flexible"


def gold_answer(gold: str) -> str:
  """The answer in a gold string: after the last `####` (GSM8K solution), the last `\\boxed{}` (MATH
  solution), else the string itself."""
  gold = str(gold).strip()
  if "####" in gold:
    return extract.anchor_contents(gold, "gsm8k")[0][-1].strip()
  boxed, _ = extract.boxed_contents(gold)
  return boxed[-1].strip() if boxed else gold


def _parse(text: str):
  from math_verify import parse
  return parse(f"${text}$", parsing_timeout=None)


def values_equal(gold: str, value: str) -> bool:
  """math-verify equality of two cleaned values; exact numbers if it is missing or cannot parse."""
  try:
    from math_verify import verify
    gold_parsed, pred_parsed = _parse(gold), _parse(value)
    if gold_parsed and pred_parsed:
      return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
  except ImportError:
    pass
  except Exception as e:  # noqa: BLE001 - math-verify can raise on odd input; compare numbers instead.
    logging.debug("math-verify failed on %r vs %r: %s", value[-200:], gold, e)
  return numbers_equal(values.to_number(gold), values.to_number(value))


def numbers_equal(a, b, rel_tol: float = 1e-6) -> bool:
  """a == b within rel_tol (exact for fractions); False if either is None."""
  if a is None or b is None:
    return False
  return a == b or abs(a - b) <= rel_tol * max(abs(a), abs(b))


@dataclasses.dataclass(frozen=True)
class MathReward:
  """fn(completion, example) -> 1.0 if the answer stated under `mode` equals example['answer'], else 0.0."""
  mode: str = DEFAULT_MODE
  verifier = True  # 1.0 means a correct answer: the loops report accuracy from it (registry.is_verifier).

  def __post_init__(self):
    extract.check_mode(self.mode)

  def answer(self, completion: str, example: dict) -> extract.Answer | None:
    return extract.extract_answer(completion, self.mode, extract.prompt_text(example))

  def __call__(self, completion: str, example: dict) -> float:
    answer = self.answer(completion, example)
    value = values.answer_value(answer.text) if answer else None
    if value is None:
      return 0.0
    gold = values.clean_span(gold_answer(example["answer"])) or str(example["answer"]).strip()
    return 1.0 if values_equal(gold, value) else 0.0

  def answer_source(self, completion: str, example: dict) -> str | None:
    """'anchored' or 'fallback': where the answer came from (for the rollout metrics), None if none."""
    answer = self.answer(completion, example)
    return None if answer is None else "anchored" if answer.anchored else "fallback"


math_reward = register("math")(MathReward())
for _mode in extract.MODES:
  register(f"math:{_mode}")(MathReward(_mode))


# math-verify warns once that its timeouts are off: that is deliberate here (see the module docstring).
class _DropTimeoutWarning(logging.Filter):
  def filter(self, record):
    return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
  logging.getLogger(_name).addFilter(_DropTimeoutWarning())
