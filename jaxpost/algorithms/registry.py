"""The algorithms by name: `config.algorithm` picks one here, and nothing else dispatches on the name.

Adding an algorithm means one module of math ending in `ALGORITHM = base.Algorithm(...)` (see base.py),
its line below, and a config.
"""
from __future__ import annotations

from jaxpost.algorithms import distill, dpo, grpo, ppo, rm, sft
from jaxpost.algorithms.base import Algorithm

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (sft.ALGORITHM, rm.ALGORITHM, dpo.ALGORITHM,
                                                        grpo.ALGORITHM, ppo.ALGORITHM, distill.ALGORITHM)}


def get(name: str) -> Algorithm:
  if name not in ALGORITHMS:
    raise KeyError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
  return ALGORITHMS[name]
