"""Two-digit addition: the demo's procedural task with a verifiable answer.

Pairs (a, b) with 10 <= a, b <= 99 are split once into training pairs and held-out pairs (813 of 8100):
a fixed random tenth of the unordered pairs, so `a + b` and `b + a` fall on the same side and evaluation
never sees a problem the model trained on, in either order. (A rule on the digits would bias it: the
earlier (7a + 3b) % 10 == 0 held out exactly the pairs with equal ones digits, 16 + 46, so that ones
column was never trained and held-out accuracy stalled at ~25% while training prompts reached ~60%.)

Pre-training text: questions `what is a + b?`, ANSWER_SEPARATOR, the sum (and optionally `a + b = c`
lines). The separator puts the answer where a chat reply's sits, so SFT only has to map the chat tokens
onto it (with a " " separator and 20% question lines SFT did not transfer: seed 0, 52% on plain-text
questions, 6.4% after SFT).

Teachers write the SFT replies: `exact` (a + b) or `no_carry` (the sloppy teacher who never carries,
16 + 46 = 52: right on the 55% of problems whose ones digits sum below 10).
"""
from __future__ import annotations

import random
import re

PAIRS = [(a, b) for a in range(10, 100) for b in range(10, 100)]
_HELD_OUT_UNORDERED = frozenset(random.Random(0).sample([(a, b) for a in range(10, 100) for b in range(a, 100)], 410))


def is_held_out(a: int, b: int) -> bool:
  return (min(a, b), max(a, b)) in _HELD_OUT_UNORDERED


TRAIN_PAIRS = [p for p in PAIRS if not is_held_out(*p)]
HELD_OUT_PAIRS = [p for p in PAIRS if is_held_out(*p)]


def question(a: int, b: int) -> str:
  return f"what is {a} + {b}?"


# What comes between a question and its answer in pre-training text. A chat reply's first digit sits 6
# tokens after the `?` (<|im_end|> \n <|im_start|> assistant \n); with this separator a plain-text one
# does too. It is still plain text, so the base model never sees the chat tokens.
ANSWER_SEPARATOR = "\nans\n"


def pretraining_records(n: int, *, seed: int, question_frac: float = 0.2, lines_per_record: int = 4) -> list[dict]:
  """`{"text"}` records of several arithmetic lines each."""
  rng = random.Random(seed)
  records = []
  for _ in range(n):
    lines = []
    for _ in range(lines_per_record):
      a, b = rng.choice(TRAIN_PAIRS)
      if rng.random() < question_frac:
        lines.append(f"{question(a, b)}{ANSWER_SEPARATOR}{a + b}")
      else:
        lines.append(f"{a} + {b} = {a + b}")
    records.append({"text": "\n".join(lines)})
  return records


def no_carry_sum(a: int, b: int) -> int:
  """Column addition that drops the carry: tens a1 + b1, ones (a0 + b0) mod 10 (16 + 46 -> 52)."""
  return (a // 10 + b // 10) * 10 + (a % 10 + b % 10) % 10


TEACHERS = {"exact": lambda a, b: a + b, "no_carry": no_carry_sum}


def chat_records(n: int, *, seed: int, teacher: str = "exact") -> list[dict]:
  """`{"messages"}` records: the user asks, the assistant answers with the number alone, as `teacher`
  (a TEACHERS name) computes it."""
  answer = TEACHERS[teacher]
  rng = random.Random(seed)
  records = []
  for _ in range(n):
    a, b = rng.choice(TRAIN_PAIRS)
    records.append({"messages": [{"role": "user", "content": question(a, b)},
                                 {"role": "assistant", "content": str(answer(a, b))}]})
  return records


def held_out_pairs(n: int, *, seed: int) -> list[tuple[int, int]]:
  """n <= 813 distinct (a, b) pairs from the held-out split, in a seeded random order."""
  return random.Random(seed).sample(HELD_OUT_PAIRS, min(n, len(HELD_OUT_PAIRS)))


def held_out_problems(n: int, *, seed: int) -> list[tuple[str, int]]:
  """(question, answer) for `held_out_pairs(n, seed=seed)`."""
  return [(question(a, b), a + b) for a, b in held_out_pairs(n, seed=seed)]


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
