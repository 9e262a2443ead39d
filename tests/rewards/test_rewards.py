"""Reward functions (math, format, exact match, multiple choice), spec parsing and fault-tolerant scoring."""
import math
import sys
import threading
import time
import types

import numpy as np
import pytest

from jaxpost import rewards
from jaxpost.rewards import format as format_lib
from jaxpost.rewards import math as math_lib
from jaxpost.rewards import values as values_lib

try:
  import math_verify  # noqa: F401
  HAS_MATH_VERIFY = True
except ImportError:  # the `rl` extra; without it `math` compares plain numbers only.
  HAS_MATH_VERIFY = False


@pytest.mark.parametrize("completion,answer,expected", [
    (r"The answer is \boxed{\frac{3}{4}}", "0.75", 1.0),               # LaTeX fraction == decimal
    (r"so we get $\dfrac{1}{2}$", "1/2", 1.0),                          # \dfrac == plain fraction
    (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\sqrt 2}", r"\sqrt{2}", 1.0),                             # bare LaTeX gold is wrapped in $...$
    (r"\boxed{1 + x^{2}}", "x^2+1", 1.0),                               # symbolic equality
    (r"\boxed{1,000}", "1000", 1.0),                                    # thousands separator
    ("<think>3 + 4</think><answer>7</answer>", "7", 1.0),               # answer tag
    ("<think>the answer is 7</think><answer>8</answer>", "7", 0.0),     # only the answer tag counts
    (r"The length is \boxed{5 \text{ cm}}", "5", 1.0),                  # units stripped
    (r"\boxed{25\text{ cm}^2}", "25", 1.0),
    (r"The angle is $30^\circ$.", "30", 1.0),
    ("It weighs 12 kg.", "12", 1.0),
    (r"First 41. Then the final answer is \boxed{42}", "42", 1.0),     # the boxed answer wins
    (r"\boxed{3}", "2", 0.0),
    ("I do not know", "7", 0.0),
])
@pytest.mark.skipif(not HAS_MATH_VERIFY, reason="math-verify not installed (pip install -e '.[rl]')")
def test_math_reward(completion, answer, expected):
  assert math_lib.math_reward(completion, {"answer": answer}) == expected


@pytest.mark.parametrize("text,stripped", [
    (r"5 \text{ cm}", "5"), (r"25\text{ cm}^2", "25"), (r"5\,\mathrm{kg}", "5"), (r"30^\circ", "30"),
    (r"30^{\circ}", "30"), ("12 meters", "12"), ("3 dollars.", "3"), ("x = 4", "x = 4")])
def test_strip_units(text, stripped):
  assert values_lib.strip_units(text) == stripped


def test_math_without_math_verify_compares_exact_numbers(monkeypatch):
  """Without math-verify (the `rl` extra) both values must be plain numbers: 1,234.5 == 1234.5 and
  \\frac{3}{4} == 0.75 exactly; 41 != 42; a symbolic value cannot be compared, so it scores 0."""
  monkeypatch.setitem(sys.modules, "math_verify", None)  # `import math_verify` now raises ImportError.
  reward = rewards.REWARDS["math"]
  assert reward("we get 1,234.5 in total", {"answer": "1234.5"}) == 1.0
  assert reward(r"\boxed{\frac{3}{4}}", {"answer": "0.75"}) == 1.0
  assert reward("it is 42, no, 41", {"answer": "42"}) == 0.0
  assert reward(r"\boxed{\sqrt{2}}", {"answer": r"\sqrt{2}"}) == 0.0
  assert reward("no number", {"answer": "42"}) == 0.0


def test_math_when_math_verify_raises_compares_numbers(monkeypatch):
  def broken(text):
    raise RuntimeError("parser exploded")
  monkeypatch.setattr(math_lib, "_parse", broken)
  assert math_lib.math_reward("15 + 86 = 101", {"answer": "101"}) == 1.0
  assert math_lib.math_reward("15 + 86 = 100", {"answer": "101"}) == 0.0


@pytest.mark.parametrize("completion,expected", [
    ("<think>2 + 2 is 4</think><answer>4</answer>", 1.0),
    ("  <think>\nstep 1\nstep 2\n</think>\n<answer>4</answer>\n", 1.0),   # newlines and surrounding space ok
    ("<answer>4</answer>", 0.0),                                           # no reasoning
    ("<think>x</think>", 0.0),                                             # no answer
    ("<answer>4</answer><think>x</think>", 0.0),                           # wrong order
    ("<think></think><answer>4</answer>", 0.0),                            # empty reasoning
    ("Sure! <think>x</think><answer>4</answer>", 0.0),                     # text outside the tags
    ("<think>x</think><answer>4</answer> more text", 0.0),
    ("<think>x</think><answer>4</answer><answer>5</answer>", 0.0),           # two answers
    ("<think>x</think><answer> </answer>", 0.0),                           # blank answer
    ("<think>a<think>b</think><answer>4</answer>", 0.0),                   # a tag inside a tag
])
def test_format_reward(completion, expected):
  assert rewards.REWARDS["format"](completion, {}) == expected


def test_custom_format_pattern():
  fn = format_lib.make_format_reward(r"Answer: \d+")
  assert fn("Answer: 12", {}) == 1.0 and fn("Answer: 12 apples", {}) == 0.0


@pytest.mark.parametrize("completion,answer,expected", [
    ("<answer> Paris. </answer>", "paris", 1.0), (r"I think \boxed{Paris}", "Paris", 1.0),
    ("Paris", "Paris", 1.0), ("London", "Paris", 0.0), ("<answer>Paris, France</answer>", "Paris", 0.0),
    (r"\boxed{London} or \boxed{Paris}", "Paris", 0.0),                     # boxes that disagree: a hedge
    (r"\boxed{Paris}, yes: \boxed{Paris}", "Paris", 1.0), ("<answer>Paris", "Paris", 0.0)])
def test_exact_match(completion, answer, expected):
  assert rewards.REWARDS["exact_match"](completion, {"answer": answer}) == expected


@pytest.mark.parametrize("completion,answer,expected", [
    ("B", "B", 1.0), ("(C)", "C", 1.0), ("<answer>D</answer>", "(D)", 1.0), (r"\boxed{e}", "E", 0.0),
    ("A cat ate it, so the answer is (C).", "C", 1.0),                     # the article "A" is not a choice
    ("Answer: B", "b", 1.0), ("The answer is B, not A", "A", 0.0), ("A long story", "A", 0.0),
    ("The answer is F", "F", 0.0)])                                         # only A-E are choices
def test_multiple_choice(completion, answer, expected):
  assert rewards.REWARDS["multiple_choice"](completion, {"answer": answer}) == expected


@pytest.fixture
def user_module(monkeypatch):
  """A user reward module importable as `user_rewards_for_test`."""
  module = types.ModuleType("user_rewards_for_test")
  module.length = lambda completion, example: len(completion) / 10
  module.nested = types.SimpleNamespace(fn=module.length)
  monkeypatch.setitem(sys.modules, "user_rewards_for_test", module)
  return module


def test_combine_spec_syntax(user_module):
  specs = rewards.combine("math:1.0, format:0.2,user_rewards_for_test:length=0.5,"
                          "user_rewards_for_test:nested.fn:-2,exact_match")
  assert [(r.name, r.weight) for r in specs] == [
      ("math", 1.0), ("format", 0.2), ("user_rewards_for_test:length", 0.5),
      ("user_rewards_for_test:nested.fn", -2.0), ("exact_match", 1.0)]
  assert specs[2].fn is user_module.length and specs[0].fn is rewards.REWARDS["math"]
  listed = rewards.combine(["math", ("format", 0.5), user_module.length], weights=[1.0, 0.1, 3.0])
  assert [(r.name, r.weight) for r in listed] == [("math", 1.0), ("format", 0.1), ("<lambda>", 3.0)]
  modes = rewards.combine("math:boxed:0.5,math:gsm8k=2,math:flexible")
  assert [(r.name, r.weight, r.fn.mode) for r in modes] == [
      ("math:boxed", 0.5, "boxed"), ("math:gsm8k", 2.0, "gsm8k"), ("math:flexible", 1.0, "flexible")]
  assert rewards.REWARDS["math"].mode == "flexible"  # The default mode (see jaxpost/rewards/math.py).


@pytest.mark.parametrize("spec,error,match", [
    ("maths", KeyError, "unknown reward 'maths'"), ("math=abc", ValueError, "not a number"),
    ("math:bxoed", KeyError, r"unknown mode 'bxoed' of reward 'math': its modes are \['anchored'"),
    ("no_such_module_xyz:fn", ImportError, "cannot import"), ("math,math:0.5", ValueError, "repeat"),
    ("user_rewards_for_test:missing", AttributeError, "no attribute"), ("", ValueError, "no reward")])
def test_combine_errors(user_module, spec, error, match):
  with pytest.raises(error, match=match):
    rewards.combine(spec)


def test_score_batch_weighted_sum():
  """math 1.0 + format 0.2: completion 1 is right and well formatted: 1 + 0.2 = 1.2; completion 2 is
  wrong but formatted: 0.2; completion 3 is right, unformatted: 1.0."""
  completions = ["<think>t</think><answer>4</answer>", "<think>t</think><answer>5</answer>", r"\boxed{4}"]
  out, metrics = rewards.score_batch("math:1.0,format:0.2", completions, [{"answer": "4"}] * 3)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [1.2, 0.2, 1.0], rtol=1e-6)
  assert metrics["reward/math"] == pytest.approx(2 / 3) and metrics["reward/format"] == pytest.approx(2 / 3)
  assert metrics["reward/errors"] == 0 and metrics["reward/timeouts"] == 0


def test_accuracy_comes_from_the_verifiers_of_nonzero_weight():
  """math (a verifier) + format 0.2 (shaping): rows 1-3 as in test_score_batch_weighted_sum, rewards 1.2,
  0.2, 1.0, all > 0, but only rows 1 and 3 are correct: accuracy 2/3 = 66.7%, correct = [T, F, T]. With
  math at weight 0 (a monitor) nothing defines correctness: no accuracy, correct None; format alone is
  not a verifier either, so a shaped "> 0" is never reported as accuracy."""
  completions = ["<think>t</think><answer>4</answer>", "<think>t</think><answer>5</answer>", r"\boxed{4}"]
  records = [{"answer": "4"}] * 3
  out, metrics, correct = rewards.score_rows("math,format:0.2", completions, records)
  assert (out > 0).all() and metrics["accuracy"] == pytest.approx(200 / 3)
  np.testing.assert_array_equal(correct, [True, False, True])
  for spec in ("math:0,format:0.2", "format"):
    _, metrics, correct = rewards.score_rows(spec, completions, records)
    assert correct is None and "accuracy" not in metrics
  assert all(rewards.is_verifier(rewards.REWARDS[n]) for n in ("math", "math:boxed", "exact_match", "multiple_choice",
                                                               "code"))


def test_a_reward_at_weight_zero_is_logged_not_trained_on():
  """format at weight 0 beside math: the totals are math's alone (1, 0, 1), while format's mean raw score
  (2 of 3 completions formatted: 2/3) is still logged, so a second reward can watch the first."""
  completions = ["<think>t</think><answer>4</answer>", "<think>t</think><answer>5</answer>", r"\boxed{4}"]
  out, metrics = rewards.score_batch("math,format:0", completions, [{"answer": "4"}] * 3)
  np.testing.assert_array_equal(out, [1.0, 0.0, 1.0])
  assert metrics["reward/format"] == pytest.approx(2 / 3) and metrics["reward/math"] == pytest.approx(2 / 3)


def test_score_batch_survives_errors_and_timeouts():
  """A reward that raises, returns NaN or hangs scores 0 for that call and is counted; the others count."""
  release = threading.Event()

  def flaky(completion, example):
    if completion == "raise":
      raise ValueError("boom")
    if completion == "nan":
      return math.nan
    if completion == "hang":
      release.wait(30)
    return 1.0

  start = time.monotonic()
  try:
    out, metrics = rewards.score_batch([rewards.WeightedReward("flaky", flaky, 2.0)],
                                       ["ok", "raise", "nan", "hang", "ok"], [{}] * 5, timeout_s=0.5, max_workers=2)
  finally:
    release.set()
  assert time.monotonic() - start < 5.0
  np.testing.assert_allclose(out, [2.0, 0.0, 0.0, 0.0, 2.0])
  assert metrics["reward/flaky/errors"] == 2 and metrics["reward/flaky/timeouts"] == 1
  assert metrics["reward/errors"] == 2 and metrics["reward/timeouts"] == 1
