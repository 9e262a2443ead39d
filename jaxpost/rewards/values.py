"""What value an extracted answer span states: cleaned to a bare value, or None when it states none.

`answer_value(span)` turns what a completion wrote after an anchor ("$\\frac{3}{4}$ of the cake.",
"72 clips", "x = 5", "15 + 86") into the value the `math` reward compares, in this order:

  1. Delimiters and spacing go: `$`, `\\(`, `\\)`, `\\left`, `\\right`, `\\,`, markdown `**`; `{,}` -> `,`.
  2. Units after a number go (`5 \\text{ cm}`, `30^\\circ`, `12 meters`); then any words after a leading
     value ("72 clips altogether" -> "72").
  3. An equation keeps its right side ("x = 5" -> "5", "15 + 86 = 101" -> "101"; "15 + 86 =" -> none).
  4. No value is stated if what is left is empty, a hedge ("100 or 101", "101 and 102"), or arithmetic left
     unevaluated (`is_unevaluated`): "15 + 86", "48/2", "\\frac{202}{2}", "2^{10}", "\\sqrt{4}".

Why 4: math-verify evaluates an expression before comparing, so "\\boxed{15 + 86}" would equal 101 and
restating the question would score. Only a value in its final form counts: an integer, a decimal, a
fraction that is not an integer, or a closed form with a symbol or an irrational part (`2\\sqrt{3}`,
`x^2+1`, `\\pi/2`), which math-verify then compares symbolically.
"""
from __future__ import annotations

import fractions
import math
import re

_LATEX_UNIT = re.compile(r"(\d)\s*(?:\\[,;! ]\s*)*\\(?:text|mbox|mathrm|textrm|operatorname)\s*"
                         r"\{\s*[A-Za-z][A-Za-z .]*\}(?:\s*\^\s*\{?\d\}?)?")
_DEGREE = re.compile(r"(\d)\s*\^\s*\{?\\circ\}?")
_WORD_UNIT = re.compile(r"(\d)\s+(?:cm|mm|km|m|kg|g|mg|s|sec|seconds?|minutes?|hours?|days?|years?|meters?|"
                        r"centimeters?|kilometers?|inches|inch|feet|foot|ft|miles?|pounds?|lbs?|dollars?|cents?|"
                        r"degrees?|units?|square|cubic)\b\.?")
_DELIMITERS = re.compile(r"\\\$|\$|\\[()\[\]]|\\left\b|\\right\b|\\[,;! ]|\\displaystyle\b")
_WORD_OPERATORS = ((re.compile(r"(?<!\\)\b(?:divided\s+by|over)\b", re.I), "/"),
                   (re.compile(r"(?<!\\)\b(?:multiplied\s+by|times)\b", re.I), "*"),
                   (re.compile(r"\bplus\b", re.I), "+"), (re.compile(r"\bminus\b", re.I), "-"))
_HEDGE = re.compile(r"\d[^\n]*?\b(?:or|and)\b[^\n]{0,8}?\d", re.I)  # "100 or 101", "101 and 102"
_PLAIN_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # a word, not a LaTeX command like \sqrt
_EQUALS = re.compile(r"=|\\approx\b|\\equiv\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_PERFECT_ROOT = re.compile(r"\\sqrt\s*\{\s*(\d+)\s*\}")
_CANONICAL = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")
_FRACTION = re.compile(r"-?\(?(\d+)\)?/\(?(\d+)\)?")
_ARITHMETIC = re.compile(r"[\d.()+\-*/^]+")


def strip_units(text: str) -> str:
  """Removes a unit written after a number: `5 \\text{ cm}^2` -> `5`, `30^\\circ` -> `30`, `12 meters` -> `12`."""
  text = _LATEX_UNIT.sub(r"\1", text)
  text = _DEGREE.sub(r"\1", text)
  return _WORD_UNIT.sub(r"\1", text)


def clean_span(span: str) -> str:
  """Steps 1-3 of the module docstring: the bare value written in span ("" if none)."""
  text = _DELIMITERS.sub("", span.replace("{,}", ",")).strip().strip("*_").strip()
  for pattern, symbol in _WORD_OPERATORS:
    text = pattern.sub(symbol, text)
  text = strip_units(text)
  word = _PLAIN_WORD.search(text)
  if word and re.search(r"\d", text[:word.start()]):
    text = text[:word.start()]  # "72 clips altogether" -> "72".
  text = _EQUALS.split(text)[-1]
  return text.strip().rstrip(".,;:!?").strip()


def is_unevaluated(value: str) -> bool:
  """True if value is pure arithmetic on numbers not in final form: "15+86", "48/2", "\\frac{4}{2}",
  "2^{10}", "(3)*(4)", "\\sqrt{9}". False for "101", "-0.5", "3/4", "\\frac{3}{4}", "2\\sqrt{3}", "x+1",
  "3, 5" (a list) and anything with a symbol, which math-verify compares as it stands."""
  text = re.sub(r"\s+", "", value)
  text = text.replace("\\cdot", "*").replace("\\times", "*").replace("×", "*").replace("\\div", "/").replace("÷", "/")
  roots = [int(n) for n in _PERFECT_ROOT.findall(text)]
  if any(math.isqrt(n) ** 2 == n for n in roots):
    return True
  text = _FRAC.sub(r"(\1)/(\2)", text).replace("{", "(").replace("}", ")")
  text = _THOUSANDS.sub("", text)
  if not _ARITHMETIC.fullmatch(text):
    return False  # A symbol, a list, a LaTeX command: not plain arithmetic.
  while text.startswith("(") and text.endswith(")") and _CANONICAL.fullmatch(text[1:-1]):
    text = text[1:-1]
  if _CANONICAL.fullmatch(text):
    return False
  fraction = _FRACTION.fullmatch(text)
  if fraction and int(fraction.group(2)) != 0:
    return int(fraction.group(1)) % int(fraction.group(2)) == 0  # 3/4 is final; 48/2 is 24 unevaluated.
  return True


def answer_value(span: str) -> str | None:
  """The value span states (module docstring), or None: empty, a hedge, or unevaluated arithmetic."""
  if _HEDGE.search(_DELIMITERS.sub("", span)):
    return None
  value = clean_span(span)
  if not value or is_unevaluated(value):
    return None
  return value


def to_number(value: str) -> fractions.Fraction | None:
  """An exact number for a plain value ("1,234.5", "-3/4", "\\frac{3}{4}", "50%"), else None."""
  text = _THOUSANDS.sub("", re.sub(r"\s+|\\?%", "", value))
  text = _FRAC.sub(r"\1/\2", text)
  try:
    number = fractions.Fraction(text)
  except (ValueError, ZeroDivisionError):
    return None
  return number
