"""scripts/profile_summary.py: interval arithmetic by hand, and a real CPU trace read back."""
import os
import re
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import profile_summary  # noqa: E402


def test_busy_time_is_the_union_of_intervals():
  # [0, 10) and [5, 15) overlap -> 15; [20, 30) adds 10; [22, 25) lies inside it -> 25 in all.
  assert profile_summary._union_ns([(20, 30), (0, 10), (5, 15), (22, 25)]) == 25


def test_a_traced_cpu_program_is_summarised(tmp_path):
  f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
  x = jnp.ones((64, 64))
  f(x).block_until_ready()  # compiled before the trace
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(3):
      f(x).block_until_ready()
  text = profile_summary.summarize(str(tmp_path), steps=3)
  m = re.search(r"(\d+) kernels, span ([0-9.]+) ms, busy ([0-9.]+) ms", text)
  assert m, text
  kernels, span, busy = int(m.group(1)), float(m.group(2)), float(m.group(3))
  assert kernels >= 3 and 0 < busy <= span, text  # at least one XLA op per call; busy within the span
  assert "per step (3)" in text
