"""Shift and packing: hand-made layouts spelled out, overlong policies, and packed == unpacked content."""
import numpy as np
import pytest

from jaxpost.data import FIELDS, pack_examples, shift_example


def _ex(tokens, mask):
  return np.asarray(tokens, np.int32), np.asarray(mask, np.bool_)


def test_shift_puts_the_mask_on_targets():
  inputs, targets, loss_mask = shift_example(*_ex([2, 10, 11, 12, 3], [0, 0, 1, 1, 1]))
  assert inputs.tolist() == [2, 10, 11, 12]
  assert targets.tolist() == [10, 11, 12, 3]
  assert loss_mask.tolist() == [0, 1, 1, 1]  # the target 10 is prompt, 11, 12 and eos are trained


def test_first_fit_layout():
  examples = [
      _ex([2, 10, 11, 3], [0, 0, 1, 1]),  # A: shifted length 3 -> row 0 (free 2 left)
      _ex([2, 20, 21, 22, 3], [0, 1, 1, 1, 1]),  # B: length 4 -> no room in row 0 -> row 1 (free 1)
      _ex([2, 30], [0, 1]),  # C: length 1 -> first fit is row 0 (free 1)
      _ex([2, 40, 3], [0, 1, 1]),  # D: length 2 -> rows 0 and 1 have 1 free -> row 2
  ]
  rows, stats = pack_examples(examples, seq_len=5)
  np.testing.assert_array_equal(rows["inputs"], [[2, 10, 11, 2, 0],
                                                 [2, 20, 21, 22, 0],
                                                 [2, 40, 0, 0, 0]])
  np.testing.assert_array_equal(rows["targets"], [[10, 11, 3, 30, 0],
                                                  [20, 21, 22, 3, 0],
                                                  [40, 3, 0, 0, 0]])
  np.testing.assert_array_equal(rows["loss_mask"], [[0, 1, 1, 1, 0],
                                                    [1, 1, 1, 1, 0],
                                                    [1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 0, 0],
                                                    [0, 1, 2, 3, 0],
                                                    [0, 1, 0, 0, 0]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 2, 0],
                                                      [1, 1, 1, 1, 0],
                                                      [1, 1, 0, 0, 0]])
  assert all(rows[k].dtype == np.int32 for k in FIELDS)
  # 10 of 15 slots used; loss tokens 2 (A) + 4 (B) + 1 (C) + 2 (D) = 9.
  assert stats == dict(examples=4, truncated=0, dropped=0, empty=0, rows=3, loss_tokens=9, fill=10 / 15)


def test_no_packing_one_example_per_row():
  examples = [_ex([2, 10, 3], [0, 1, 1]), _ex([2, 30], [0, 1])]
  rows, stats = pack_examples(examples, seq_len=4, pack=False)
  np.testing.assert_array_equal(rows["inputs"], [[2, 10, 0, 0], [2, 0, 0, 0]])
  np.testing.assert_array_equal(rows["targets"], [[10, 3, 0, 0], [30, 0, 0, 0]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 0, 0], [1, 0, 0, 0]])
  assert stats["rows"] == 2 and stats["fill"] == 3 / 8


def test_overlong_truncate_vs_drop():
  examples = [
      _ex(np.arange(1, 8), np.ones(7)),  # shifted length 6 > 4: overlong
      _ex([1, 2, 3, 4, 5], [0, 0, 0, 0, 1]),  # shifted length 4: fits exactly
      _ex([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 1]),  # overlong, and its only loss token is cut off
      _ex([7], [1]),  # shifted length 0: nothing to predict
  ]
  rows, stats = pack_examples(examples, seq_len=4, overlong="truncate")
  assert stats == dict(examples=4, truncated=2, dropped=0, empty=2, rows=2, loss_tokens=5, fill=1.0)
  np.testing.assert_array_equal(rows["inputs"], [[1, 2, 3, 4], [1, 2, 3, 4]])
  np.testing.assert_array_equal(rows["targets"], [[2, 3, 4, 5], [2, 3, 4, 5]])
  np.testing.assert_array_equal(rows["loss_mask"], [[1, 1, 1, 1], [0, 0, 0, 1]])

  rows, stats = pack_examples(examples, seq_len=4, overlong="drop")
  assert stats == dict(examples=4, truncated=0, dropped=2, empty=1, rows=1, loss_tokens=1, fill=1.0)
  np.testing.assert_array_equal(rows["loss_mask"], [[0, 0, 0, 1]])


def test_bad_arguments():
  with pytest.raises(ValueError, match="overlong"):
    pack_examples([], 4, overlong="wrap")
  with pytest.raises(ValueError, match=r"examples\[0\]"):
    pack_examples([(np.zeros(3), np.zeros(2))], 4)
  rows, stats = pack_examples([], 4)
  assert rows["inputs"].shape == (0, 4) and stats["rows"] == 0


def _segments(rows):
  """Every (inputs, targets, loss_mask) segment of the rows, as tuples of lists."""
  out = []
  for r in range(len(rows["inputs"])):
    for s in range(1, rows["segment_ids"][r].max() + 1):
      where = rows["segment_ids"][r] == s
      assert rows["positions"][r][where].tolist() == list(range(where.sum()))  # contiguous from 0
      out.append(tuple(rows[k][r][where].tolist() for k in ("inputs", "targets", "loss_mask")))
  return out


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_equals_unpacked(seed):
  rng = np.random.default_rng(seed)
  examples = [_ex(rng.integers(4, 100, n), rng.random(n) < 0.7) for n in rng.integers(2, 17, 200)]
  packed, packed_stats = pack_examples(examples, seq_len=16)
  unpacked, unpacked_stats = pack_examples(examples, seq_len=16, pack=False)
  # Same segments (as a multiset), same loss tokens; packing only uses fewer rows.
  assert sorted(_segments(packed)) == sorted(_segments(unpacked))
  assert packed_stats["loss_tokens"] == unpacked_stats["loss_tokens"]
  assert packed_stats["rows"] < unpacked_stats["rows"] and packed_stats["fill"] > 0.9
  assert (packed["loss_mask"][packed["segment_ids"] == 0] == 0).all()
