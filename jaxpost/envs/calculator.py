"""`calculator` environment: a question with a numeric answer and one tool that evaluates arithmetic.

The record is {"question" (or "messages"), "answer"}; the final answer (a turn without tool calls) is scored
by `reward_fns` (default the math reward) against record["answer"]. The tool evaluates + - * / // % ** and
parentheses on integers and decimals by walking the expression's syntax tree (never `eval`), with bounds
that keep every call fast: 200 characters, exponents up to 64, results up to 10**100.
"""
from __future__ import annotations

import ast
import operator

from jaxpost import rewards as rewards_lib
from jaxpost.envs.base import ToolEnvironment, register
from jaxpost.envs.tools import Tool

MAX_CHARS, MAX_EXPONENT, MAX_MAGNITUDE = 200, 64, 10 ** 100
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _value(node):
  if isinstance(node, ast.Constant) and type(node.value) in (int, float):
    return node.value
  if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
    return _UNARY[type(node.op)](_value(node.operand))
  if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
    left, right = _value(node.left), _value(node.right)
    if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
      raise ValueError(f"exponent {right} is larger than {MAX_EXPONENT}")
    out = _BINARY[type(node.op)](left, right)
    if abs(out) > MAX_MAGNITUDE:
      raise ValueError("result is larger than 1e100")
    return out
  raise ValueError(f"unsupported expression element {type(node).__name__}; use numbers, + - * / // % ** and ()")


def evaluate(expression: str) -> str:
  """The value of an arithmetic expression as text: an int when exact ("6", "3.5", "0.3333333333333333")."""
  if len(expression) > MAX_CHARS:
    raise ValueError(f"expression longer than {MAX_CHARS} characters")
  try:
    tree = ast.parse(expression.strip(), mode="eval")
  except SyntaxError as e:
    raise ValueError(f"not an arithmetic expression: {e.msg}") from None
  value = _value(tree.body)
  if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
    value = int(value)
  return str(value)


CALCULATOR = Tool(name="calculator", description="Evaluate arithmetic, e.g. 12 * (3 + 4).",
                  parameters={"type": "object", "properties": {"expression": {"type": "string"}},
                              "required": ["expression"]},
                  fn=evaluate, timeout_s=2.0)


def opening_messages(example: dict, system: str = "") -> list[dict]:
  """record["messages"], else a user turn with record["prompt"] or record["question"] (after an optional
  system message)."""
  if "messages" in example:
    return [dict(m) for m in example["messages"]]
  text = example.get("prompt", example.get("question"))
  if not isinstance(text, str):
    raise KeyError(f"an environment record needs 'messages', 'prompt' or 'question', got keys {sorted(example)}")
  return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def score_answer(reward_fns, answer: str, example: dict) -> float:
  """sum_k w_k fn_k(answer, example) over `reward_fns` (a spec such as "math" or a combined list)."""
  fns = rewards_lib.combine(reward_fns) if isinstance(reward_fns, str) else reward_fns
  return float(sum(r.weight * float(r.fn(answer, example)) for r in fns))


class QuestionTask(ToolEnvironment):
  """A record's question, the class's tools, the final answer scored by reward_fns against the record."""

  def __init__(self, example: dict, reward_fns="math", system: str = ""):
    super().__init__(example, reward_fns)
    self.system = system

  def reset(self) -> list[dict]:
    return opening_messages(self.example, self.system)

  def outcome(self, answer: str) -> float:
    return score_answer(self.reward_fns, answer, self.example)


@register("calculator")
class Calculator(QuestionTask):
  tools = (CALCULATOR,)
