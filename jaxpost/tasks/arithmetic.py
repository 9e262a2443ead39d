"""Two-digit addition: the demo's procedural task with a verifiable answer.

Pairs (a, b) with 10 <= a, b <= 99 are split once, by a fixed rule, into training pairs and held-out
pairs ((7a + 3b) % 10 == 0: 810 of 8100 pairs), so evaluation never sees a problem the model trained on.
Pre-training text is `a + b = c` lines and, 20% of the time, questions (`what is a + b? c`): without
question lines SFT does not transfer to the chat format (seen in the prototype). At 40% the base model
answers plain-text questions better (25.6% vs 16.2% held-out, 800 steps, seed 0) but its SFT reached
only 3.8% (vs 21.2%), so the demo keeps 20%.
"""
from __future__ import annotations

import random
import re

PAIRS = [(a, b) for a in range(10, 100) for b in range(10, 100)]


def is_held_out(a: int, b: int) -> bool:
  return (7 * a + 3 * b) % 10 == 0


TRAIN_PAIRS = [p for p in PAIRS if not is_held_out(*p)]
HELD_OUT_PAIRS = [p for p in PAIRS if is_held_out(*p)]


def question(a: int, b: int) -> str:
  return f"what is {a} + {b}?"


def pretraining_records(n: int, *, seed: int, question_frac: float = 0.2, lines_per_record: int = 4) -> list[dict]:
  """`{"text"}` records of several arithmetic lines each."""
  rng = random.Random(seed)
  records = []
  for _ in range(n):
    lines = []
    for _ in range(lines_per_record):
      a, b = rng.choice(TRAIN_PAIRS)
      lines.append(f"{question(a, b)} {a + b}" if rng.random() < question_frac else f"{a} + {b} = {a + b}")
    records.append({"text": "\n".join(lines)})
  return records


def chat_records(n: int, *, seed: int) -> list[dict]:
  """`{"messages"}` records: the user asks, the assistant answers with the number alone."""
  rng = random.Random(seed)
  records = []
  for _ in range(n):
    a, b = rng.choice(TRAIN_PAIRS)
    records.append({"messages": [{"role": "user", "content": question(a, b)},
                                 {"role": "assistant", "content": str(a + b)}]})
  return records


def held_out_problems(n: int, *, seed: int) -> list[tuple[str, int]]:
  """(question, answer) pairs from the held-out split; n <= 810 distinct problems."""
  rng = random.Random(seed)
  pairs = rng.sample(HELD_OUT_PAIRS, min(n, len(HELD_OUT_PAIRS)))
  return [(question(a, b), a + b) for a, b in pairs]


def score(completion: str, answer: int) -> float:
  """1.0 when the completion's first integer equals the answer, else 0.0."""
  match = re.search(r"-?\d+", completion)
  return float(match is not None and int(match.group()) == answer)


def prompt_records(pairs: list[tuple[int, int]]) -> list[dict]:
  """`{"prompt", "answer"}` records for online RL (the answer is the exact sum, as a string)."""
  return [{"prompt": question(a, b), "answer": str(a + b)} for a, b in pairs]


def leading_digit_reward(completion: str, example: dict) -> float:
  """A shaping reward a random model can already earn sometimes: 1 when the reply starts with a digit."""
  del example
  return float(completion[:1].isdigit())
