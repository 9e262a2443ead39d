"""Two-digit multiplication with a calculator: the tool demo's task (jaxpost/demo_tools.py).

A tiny model cannot multiply 37 * 48 in its head, but it can learn to ask the calculator and copy the result.
Pairs (a, b), 10 <= a, b <= 99, are split once into training and held-out pairs (a fixed random tenth of the
unordered pairs, so `a * b` and `b * a` fall on the same side).

The SFT teacher is reluctant: on a fraction `tool_frac` of problems it calls the calculator (the call, the
tool's answer, then the number); on the rest it answers from memory with an estimate, each factor rounded
to the nearest ten ("about 2000" for 37 * 48), never the exact product. Imitation learns both habits, and
its most likely reply is the teacher's usual one (from memory); reward for the exact product is what makes
the calculator the rule.
"""
from __future__ import annotations

import random

from jaxpost.envs.calculator import CALCULATOR

PAIRS = [(a, b) for a in range(10, 100) for b in range(10, 100)]
_HELD_OUT_UNORDERED = frozenset(random.Random(1).sample([(a, b) for a in range(10, 100) for b in range(a, 100)], 410))


def is_held_out(a: int, b: int) -> bool:
  return (min(a, b), max(a, b)) in _HELD_OUT_UNORDERED


TRAIN_PAIRS = [p for p in PAIRS if not is_held_out(*p)]
HELD_OUT_PAIRS = [p for p in PAIRS if is_held_out(*p)]
TOOLS = [CALCULATOR.schema]


def question(a: int, b: int) -> str:
  return f"what is {a} * {b}?"


def estimate(a: int, b: int) -> int:
  """The reluctant teacher's answer from memory: each factor rounded to the nearest ten (half up)."""
  return (a + 5) // 10 * 10 * ((b + 5) // 10 * 10)


def tool_conversation(a: int, b: int) -> list[dict]:
  """The user asks; the assistant calls the calculator, reads its answer, states the product."""
  call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": f"{a} * {b}"}}}
  return [{"role": "user", "content": question(a, b)}, {"role": "assistant", "content": "", "tool_calls": [call]},
          {"role": "tool", "name": "calculator", "content": str(a * b)},
          {"role": "assistant", "content": str(a * b)}]


def memory_conversation(a: int, b: int) -> list[dict]:
  """The user asks; the assistant answers from memory, "about 2000" (the reward wants the exact product)."""
  return [{"role": "user", "content": question(a, b)},
          {"role": "assistant", "content": f"about {estimate(a, b)}"}]


def sft_records(n: int, *, seed: int, tool_frac: float) -> list[dict]:
  """`{"messages", "tools"}` records from the reluctant teacher (tool use on a `tool_frac` of them)."""
  rng = random.Random(seed)
  records = []
  for _ in range(n):
    a, b = rng.choice(TRAIN_PAIRS)
    messages = tool_conversation(a, b) if rng.random() < tool_frac else memory_conversation(a, b)
    records.append({"messages": messages, "tools": TOOLS})
  return records


def prompt_records(pairs: list[tuple[int, int]]) -> list[dict]:
  """`{"prompt", "answer"}` records for the calculator environment (the answer is the exact product)."""
  return [{"prompt": question(a, b), "answer": str(a * b)} for a, b in pairs]


def held_out_pairs(n: int, *, seed: int) -> list[tuple[int, int]]:
  return random.Random(seed).sample(HELD_OUT_PAIRS, min(n, len(HELD_OUT_PAIRS)))
