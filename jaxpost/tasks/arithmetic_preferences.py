"""Procedural preference pairs on the arithmetic task: the correct sum is chosen, a wrong answer rejected.

Two kinds of mistake:
  difference  the rejected answer is a - b (the wrong operation). A tiny model learns to rank these from
              coarse cues (a sign, a magnitude below a) in ~50 CPU steps: the bundled toy set, a check of
              the reward-model and DPO pipelines rather than of arithmetic skill.
  near_miss   a + b + d with d in +-1..+-9 (kept >= 0): only the units digit tells, so ranking it means
              computing (a + b) mod 10. A 0.4M-parameter model trained from scratch stayed at chance here
              for 300 steps (measured); it is the harder set for larger models.
Pairs are drawn without repetition from the train or held-out split of `jaxpost.tasks.arithmetic`.
"""
from __future__ import annotations

import random

from jaxpost.tasks.arithmetic import HELD_OUT_PAIRS, TRAIN_PAIRS, question

MISTAKES = ("difference", "near_miss")


def wrong_answer(a: int, b: int, mistake: str, rng: random.Random) -> int:
  if mistake == "difference":
    return a - b if a != b else 0  # a == b would give 0 anyway; a + b > 0 always differs.
  if mistake == "near_miss":
    while True:
      wrong = a + b + rng.choice([d for d in range(-9, 10) if d])
      if wrong >= 0:
        return wrong
  raise ValueError(f"mistake {mistake!r} is not one of {MISTAKES}")


def preference_records(n: int, *, seed: int, held_out: bool = False, mistake: str = "difference") -> list[dict]:
  """`{"prompt", "chosen", "rejected"}` records on distinct (a, b) pairs of the train or held-out split."""
  rng = random.Random(seed)
  pool = HELD_OUT_PAIRS if held_out else TRAIN_PAIRS
  return [{"prompt": question(a, b), "chosen": str(a + b), "rejected": str(wrong_answer(a, b, mistake, rng))}
          for a, b in rng.sample(pool, min(n, len(pool)))]
