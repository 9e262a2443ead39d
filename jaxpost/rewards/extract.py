"""Where a completion states its answer: anchors, extraction modes by name, and a guarded fallback.

A mode names the anchors it reads, in priority order, and whether an unanchored fallback may answer:

  mode        anchors read (the first kind present decides)                fallback
  boxed       \\boxed{...}                      (MATH's solutions)           -
  gsm8k       #### N                           (GSM8K's; verl's "strict")   -
  answer_tag  <answer>...</answer>             (the R1 layout)              -
  answer_is   "the (final) answer is X", "Answer: X"                       -
  anchored    answer_tag, boxed, gsm8k, answer_is                          -
  flexible    answer_tag, boxed, gsm8k, answer_is                          the final value, guarded

Each rule below makes a completion state no answer rather than be read leniently, because each lenient
reading is a way to collect reward without answering:
  - The first anchor kind present decides: an empty `\\boxed{}` is no answer, it does not fall through
    to weaker anchors or the fallback.
  - Several anchors of that kind must agree: `\\boxed{71} ... \\boxed{72}` lists candidates, and "the
    answer is 100 ... the answer is 101" contradicts itself; neither states one answer.
  - An anchor opened but never closed (`\\boxed{10`, `<answer>10`) was cut off mid-answer: no answer
    (not the weaker anchors', not the fallback's).
  - The fallback (flexible only) reads the last value token (a number, `a/b`, `\\frac{}{}`, `\\sqrt{}`)
    only if it is a result, not an operand: no arithmetic operator (+ - * / x ÷ ^, plus, minus, times,
    over) nor list word (and, or) just before it and no operator (nor `=`) just after it; "15 + 86",
    "To calculate 15 + 86, we", "Natalia sold 48 + 48/2" and "100 or 101" state no answer, while
    "23 + 41 = 64" states 64.
  - ... and only if it is not copied from the prompt: neither the value with the two words before it
    nor its clause (from up to 5 words before it to the end of its sentence) may be a run of the
    prompt's words, units read through on both sides ("Tom read 30 pages on Monday", "So Tom read 30",
    cut from the question, state nothing; "He read 30 pages on Tuesday." states 30).
What an anchor holds is then judged by `values.answer_value` ("\\boxed{15 + 86}" states no value).
"""
from __future__ import annotations

import dataclasses
import re

from jaxpost.rewards import values

ANCHORS = ("answer_tag", "boxed", "gsm8k", "answer_is")
MODES = {  # name -> (anchors read, in priority order; fallback allowed)
    "boxed": (("boxed",), False),
    "gsm8k": (("gsm8k",), False),
    "answer_tag": (("answer_tag",), False),
    "answer_is": (("answer_is",), False),
    "anchored": (ANCHORS, False),
    "flexible": (ANCHORS, True),
}

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"\b(?:final\s+)?answer\**\s*(?:is\b|:|=)\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\n|[!?]|\.(?!\d)")
_VALUE_TOKEN = re.compile(
    r"\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}"               # \frac{3}{4}
    r"|(?:\d+(?:\.\d+)?\s*)?\\sqrt\s*\{[^{}]*\}"           # 2\sqrt{3}
    r"|(?<![\w.,])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?!\d))?"  # 1,234.5 | 72 | 3/4
    r"|(?<![\w.])\.\d+")
_OPERATOR_BEFORE = re.compile(r"(?:[+*/×÷^]|\\cdot|\\times|\\div|\\pm|\d\s*x"
                              r"|\b(?:plus|minus|times|over|or|and|(?:divided|multiplied)\s+by))$", re.IGNORECASE)
_OPERATOR_AFTER = re.compile(  # A word operator needs an operand after it: "3 times 4", not "rang 22 times."
    r"^(?:[+\-*/×÷^=]|\\cdot|\\times|\\div|\\pm|(?:plus|minus|times|over|(?:divided|multiplied)\s+by|or)"
    r"\s+(?:the\s+)?[\d$\\(.]|x\s*\d)", re.IGNORECASE)
_WORDS = re.compile(r"[a-z]+|\d+(?:[.,/]\d+)*")
_ECHO_CONTEXT = 5  # Words before the value that must not, with it, repeat the prompt.
_ECHO_MIN_WORDS = 3  # Shorter clauses ("so 30", "30 pages") are too common to call copies.


@dataclasses.dataclass(frozen=True)
class Answer:
  """An extracted answer: `text` as written (anchor content or the final value token), `source` the
  anchor kind it came from or 'fallback'."""
  text: str
  source: str

  @property
  def anchored(self) -> bool:
    return self.source != "fallback"


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"unknown answer extraction mode {mode!r}: known are {sorted(MODES)}")
  return mode


def boxed_contents(text: str) -> tuple[list[str], bool]:
  """The contents of every `\\boxed{...}` (nested braces balanced), and whether one is left unclosed."""
  contents = []
  for match in _BOXED.finditer(text):
    depth, start = 1, match.end()
    for i in range(start, len(text)):
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      if depth == 0:
        contents.append(text[start:i])
        break
    else:
      return contents, True
  return contents, False


def _answer_is_contents(text: str) -> list[str]:
  """What follows each 'answer is' / 'Answer:' up to the end of its sentence."""
  out = []
  for match in _ANSWER_IS.finditer(text):
    rest = text[match.end():]
    end = _SENTENCE_END.search(rest)
    out.append((rest[:end.start()] if end else rest).lstrip(" \t*"))  # "**Answer:** 7" holds "7".
  return out


def anchor_contents(text: str, kind: str) -> tuple[list[str], bool]:
  """(contents of every anchor of `kind` in text, whether one was opened but not closed)."""
  if kind == "boxed":
    return boxed_contents(text)
  if kind == "answer_tag":
    tags = _ANSWER_TAG.findall(text)
    tail = text[text.lower().rfind("</answer>") + len("</answer>"):] if tags else text
    return [_inner_answer(t) for t in tags], bool(_ANSWER_OPEN.search(tail))
  if kind == "gsm8k":
    return _GSM8K.findall(text), False
  if kind == "answer_is":
    return [_inner_answer(c, ("boxed",)) for c in _answer_is_contents(text)], False
  raise ValueError(f"unknown anchor {kind!r}: known are {ANCHORS}")


def _inner_answer(content: str, kinds=("boxed", "answer_is")) -> str:
  """An anchor inside an anchor if it holds one answer: `<answer>\\boxed{5}</answer>` and "the answer is
  $\\boxed{5}$" hold 5."""
  for kind in kinds:
    found, _ = anchor_contents(content, kind)
    if found and len({_key(f) for f in found}) == 1:
      return found[-1]
  return content


def _key(content: str) -> str:
  """What two anchors must share to agree: the number they hold, else the cleaned value, else the text
  without spaces ("\\frac{1}{2}" and "0.5" agree; "71" and "72" do not)."""
  value = values.clean_span(content)
  number = values.to_number(value)
  return str(number) if number is not None else re.sub(r"\s+", "", value or content)


def final_value(completion: str, prompt: str = "") -> Answer | None:
  """The guarded fallback of the module docstring: the last value token if it is a result (not an
  operand) and not copied from `prompt`; else None."""
  text = values.strip_units(completion)
  tokens = list(_VALUE_TOKEN.finditer(text))
  if not tokens:
    return None
  token = tokens[-1]
  before, after = text[:token.start()].rstrip(" \t$({"), text[token.end():].lstrip(" \t$)}")
  value = token.group()
  if before.endswith("-"):
    head = before[:-1].rstrip(" \t$({")
    if head[-1:].isdigit() or head[-1:] in ")}]":
      return None  # "86 - 15": the value is the subtrahend of an unevaluated difference.
    value, before = "-" + value, head
  if _OPERATOR_BEFORE.search(before) or _OPERATOR_AFTER.search(after):
    return None
  if prompt and _copied_from(values.strip_units(prompt), text, token.start(), token.end()):  # Both unit-free.
    return None
  return Answer(value, "fallback")


def _copied_from(prompt: str, text: str, start: int, end: int) -> bool:
  """True if the value text[start:end] reads as copied from the prompt: the value with the
  _ECHO_MIN_WORDS - 1 words before it ("Emily has 4", "So Emily has 4", "add it to 15 liters of p", "sale
  for $2" cut from "sale for $2.00"), or
  its clause (up to _ECHO_CONTEXT words before it, to its sentence's end: "30 pages on Monday."), is a
  run of the prompt's words."""
  prompt_words = f" {' '.join(_WORDS.findall(prompt.lower()))} "
  sentence_end = _SENTENCE_END.search(text, end)
  before = _WORDS.findall(text[:start].lower())[-_ECHO_CONTEXT:]
  value_on = _WORDS.findall(text[start:sentence_end.start() if sentence_end else len(text)].lower())
  lead = before[len(before) - (_ECHO_MIN_WORDS - 1):] + value_on[:1]
  clause = before + value_on
  # The lead run may end inside a prompt word: "sale for $2" cut from "sale for $2.00 a pound" is a copy.
  return ((len(lead) >= _ECHO_MIN_WORDS and f" {' '.join(lead)}" in prompt_words)
          or (len(clause) >= _ECHO_MIN_WORDS and f" {' '.join(clause)} " in prompt_words))


def extract_answer(completion: str, mode: str = "flexible", prompt: str = "") -> Answer | None:
  """The answer `completion` states under `mode` (see the module docstring), or None if it states none.

  prompt: the prompt's text, for the fallback's copy check (`prompt_text(example)`)."""
  anchors, fallback = MODES[check_mode(mode)]
  answer, decided = anchored_answer(completion, anchors)
  if decided or not fallback:
    return answer
  return final_value(completion, prompt)


def anchored_answer(completion: str, kinds=ANCHORS) -> tuple[Answer | None, bool]:
  """(answer, decided): the first anchor kind of `kinds` present decides, decided = False if none is.
  The answer is None if that kind's anchors disagree, the last is empty, or one is left unclosed."""
  for kind in kinds:
    found, unclosed = anchor_contents(completion, kind)
    if unclosed:
      return None, True
    if found:
      agree = len({_key(f) for f in found}) == 1  # Several different answers are a hedge.
      text = found[-1].strip()
      return (Answer(text, kind) if agree and text else None), True
  return None, False


def prompt_text(example: dict) -> str:
  """The prompt a completion answers, from a prompt record: `prompt`, else the non-assistant messages,
  else the raw GSM8K `question` / MATH `problem`."""
  if isinstance(example.get("prompt"), str):
    return example["prompt"]
  if isinstance(example.get("messages"), list):
    return "\n".join(str(m.get("content", "")) for m in example["messages"]
                     if isinstance(m, dict) and m.get("role") != "assistant")
  return str(example.get("question") or example.get("problem") or "")
