"""Verifiable rewards on the host: `fn(completion, example) -> float`, registered by name in REWARDS.

  rewards, metrics = score_batch(combine("math:1.0,format:0.2"), completions, examples, timeout_s=10)

Registered: math (math-verify), exact_match, format (<think>/<answer> tags), multiple_choice (A-E),
code (sandboxed subprocess); a user function is named by import path, "my_pkg.rewards:fn=0.5".
"""
from jaxpost.rewards.registry import (REWARDS, WeightedReward, combine, is_verifier, parse_item, register, resolve,
                                      score_batch, score_rows)
from jaxpost.rewards import math as _math  # noqa: F401  (registers math)
from jaxpost.rewards import format as _format  # noqa: F401  (registers format, exact_match, multiple_choice)
from jaxpost.rewards import code as _code

register("code")(_code.code)
_code.code.verifier = True  # 1.0: the tests passed.

__all__ = ["REWARDS", "WeightedReward", "combine", "is_verifier", "parse_item", "register", "resolve", "score_batch",
           "score_rows"]
