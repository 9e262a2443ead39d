"""Every verifiable reward on the adversarial corpus (tests/rewards/data/adversarial.jsonl).

Each row is a prompt record as stored (arithmetic, GSM8K `question`/`answer ... #### N`, or MATH
`problem`/`solution`), read by the data pipeline's `normalize_record`, and a completion, with the score
each reward must give and why. The rows are of three kinds: restatements (the question handed back, as
text or inside an anchor) must score 0 under every math mode and exact_match; honest answers must score
1 under `math:flexible` and under every mode that reads the anchor they use; the others (cut off,
contradicted, hedged, the gold inside a larger number) score 0.
"""
import json
import os
import sys

import pytest

from jaxpost import rewards
from jaxpost.data.prompts import normalize_record
from jaxpost.rewards import extract

CORPUS = os.path.join(os.path.dirname(__file__), "data", "adversarial.jsonl")
ROWS = [json.loads(line) for line in open(CORPUS)]
MATH_KEYS = tuple(extract.MODES)
KEYS = MATH_KEYS + ("exact_match", "format")

try:
  import math_verify  # noqa: F401
  HAS_MATH_VERIFY = True
except ImportError:
  HAS_MATH_VERIFY = False


def reward_fn(key: str):
  return rewards.REWARDS[key if key in ("exact_match", "format") else f"math:{key}"]


def test_corpus_is_complete():
  """Every row names all rewards; ids are unique; the issue's cases are all present (by id prefix)."""
  assert len({r["id"] for r in ROWS}) == len(ROWS)
  for r in ROWS:
    assert set(r["expected"]) == set(KEYS), r["id"]
    assert r["kind"] in ("restatement", "honest", "other") and r["why"], r["id"]
  ids = " ".join(r["id"] for r in ROWS)
  for case in ("restate_bare", "restate_cut", "restate_echo", "cut_mid_number", "contradict_", "boxed_several",
               "boxed_empty", "_units_", "_fraction_", "_thousands_", "_latex_", "larger_", "_gsm8k_record",
               "_math_record"):
    assert case in ids, case


def test_restatements_expect_zero_and_honest_answers_expect_one():
  """The done-when of issue 28, as stated in the data: no mode rewards a restatement; flexible (the
  default) and the mode of each honest answer's own anchor reward it."""
  for r in ROWS:
    e = r["expected"]
    if r["kind"] == "restatement":
      assert not any(e[k] for k in MATH_KEYS + ("exact_match",)), r["id"]
    elif r["kind"] == "honest":
      assert e["flexible"] == 1, r["id"]
    else:
      assert not any(e[k] for k in MATH_KEYS + ("exact_match",)), r["id"]


@pytest.mark.parametrize("with_math_verify", [
    pytest.param(True, marks=pytest.mark.skipif(not HAS_MATH_VERIFY, reason="math-verify not installed")), False])
@pytest.mark.parametrize("key", KEYS)
def test_corpus_scores(monkeypatch, key, with_math_verify):
  """All rows under one reward. Without math-verify, rows equal only symbolically are left out (their
  math expectations need it); every other row scores the same both ways."""
  if not with_math_verify:
    monkeypatch.setitem(sys.modules, "math_verify", None)
  fn = reward_fn(key)
  wrong = []
  for r in ROWS:
    if not with_math_verify and r.get("symbolic") and key in MATH_KEYS:
      continue
    score = fn(r["completion"], normalize_record(r["record"]))
    if score != r["expected"][key]:
      wrong.append((r["id"], r["completion"], r["expected"][key], score))
  assert not wrong, wrong


def test_record_readers_extract_the_gold():
  """GSM8K's `#### 1,072` -> "1072" (worked solution kept); MATH's last box, nested braces whole."""
  by_id = {r["id"]: normalize_record(r["record"]) for r in ROWS}
  assert by_id["honest_gsm8k_thousands"]["answer"] == "1072"
  assert by_id["honest_gsm8k_record"]["answer"] == "72"
  assert by_id["honest_gsm8k_record"]["solution"].endswith("#### 72")
  assert by_id["honest_math_record"]["answer"] == r"\frac{3}{4}"
  assert by_id["honest_math_nested"]["answer"] == r"\frac{\sqrt{3}}{2}"
  assert by_id["honest_math_nested"]["prompt"].startswith("What is")


GSM8K_TEST = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "gsm8k", "test.jsonl")


@pytest.mark.skipif(not os.path.exists(GSM8K_TEST), reason="GSM8K not found at ../shared/data/gsm8k")
def test_gsm8k_echoes_score_zero_and_reference_solutions_one():
  """On the real GSM8K test split (1319 records): the question cut after each of its numbers ("So " in
  front, or the next 12 characters kept, cut mid-word or mid-number as a budget cuts) and the whole
  question score 0 under every math mode; the reference solution scores 1 under `math:gsm8k` and `math`."""
  import re
  fns = {m: rewards.REWARDS[f"math:{m}"] for m in MATH_KEYS}
  paid, unpaid = [], []
  for line in open(GSM8K_TEST):
    record = json.loads(line)
    example, question = normalize_record(record), record["question"]
    echoes = [question] + [c for m in re.finditer(r"\d+", question)
                           for c in (question[:m.end()], "So " + question[:m.end()], question[:m.end() + 12])]
    paid += [(m, c) for c in echoes for m in MATH_KEYS if fns[m](c, example)]
    unpaid += [(m, record["answer"][-40:]) for m in ("gsm8k", "flexible") if fns[m](record["answer"], example) != 1]
  assert not paid and not unpaid, (paid[:5], unpaid[:5])
