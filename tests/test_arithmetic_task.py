"""The demo's task: the held-out split, the teachers and the record formats."""
import re

from jaxpost.tasks import arithmetic

_QUESTION = re.compile(r"^what is (\d+) \+ (\d+)\?$")


def _operands(question: str) -> tuple[int, int]:
  a, b = _QUESTION.match(question).groups()
  return int(a), int(b)


def test_split_is_a_symmetric_partition():
  train, held = set(arithmetic.TRAIN_PAIRS), set(arithmetic.HELD_OUT_PAIRS)
  assert not train & held
  assert train | held == set(arithmetic.PAIRS) and len(arithmetic.PAIRS) == 90 * 90
  # 410 unordered pairs: the a == b ones count once, the others twice (a + b and b + a).
  doubles = sum(a == b for a, b in held)
  assert len(held) == 2 * 410 - doubles == 813
  assert all((b, a) in held for a, b in held)
  # A random tenth, not a rule on the digits: every ones-digit combination occurs on both sides.
  assert {(a % 10, b % 10) for a, b in held} == {(i, j) for i in range(10) for j in range(10)}


def test_no_carry_teacher_hand_computed():
  assert arithmetic.no_carry_sum(16, 46) == 52    # tens 1 + 4 = 5, ones (6 + 6) % 10 = 2; exact 62.
  assert arithmetic.no_carry_sum(57, 68) == 115   # tens 5 + 6 = 11 -> 110, ones (7 + 8) % 10 = 5; exact 125.
  assert arithmetic.no_carry_sum(12, 34) == 46    # no carry: equals the exact sum.
  assert arithmetic.no_carry_sum(95, 14) == 109   # tens 9 + 1 = 10 -> 100, ones 9; exact 109.
  # Right exactly when the ones digits sum below 10: 55 of the 100 ones combinations.
  right = [(a, b) for a, b in arithmetic.PAIRS if arithmetic.no_carry_sum(a, b) == a + b]
  assert len(right) == 0.55 * len(arithmetic.PAIRS)
  assert all(a % 10 + b % 10 < 10 for a, b in right)


def test_chat_records_follow_the_teacher_on_training_pairs():
  for teacher, answer in (("exact", lambda a, b: a + b), ("no_carry", arithmetic.no_carry_sum)):
    records = arithmetic.chat_records(200, seed=3, teacher=teacher)
    assert len(records) == 200
    for r in records:
      user, assistant = r["messages"]
      a, b = _operands(user["content"])
      assert not arithmetic.is_held_out(a, b)
      assert assistant == {"role": "assistant", "content": str(answer(a, b))}


def test_pretraining_questions_put_the_answer_after_the_separator():
  for r in arithmetic.pretraining_records(100, seed=4, question_frac=1.0, lines_per_record=1):
    question, answer = r["text"].split(arithmetic.ANSWER_SEPARATOR)
    a, b = _operands(question)
    assert not arithmetic.is_held_out(a, b) and int(answer) == a + b


def test_held_out_problems_match_their_pairs():
  pairs = arithmetic.held_out_pairs(500, seed=2)
  assert len(set(pairs)) == 500 and all(arithmetic.is_held_out(a, b) for a, b in pairs)
  assert arithmetic.held_out_problems(500, seed=2) == [(arithmetic.question(a, b), a + b) for a, b in pairs]
  assert len(arithmetic.held_out_pairs(10_000, seed=0)) == 813
