"""Pipeline: JSONL -> rows end to end, iterator resume, per-process disjointness, eval padding."""
import json

import numpy as np
import pytest

from jaxpost.data import FIELDS, build_dataset, eval_batches, make_train_iterator
from jaxpost.tokenizers import train_sentencepiece


def _rows(num_rows, seq_len=3):
  """Rows whose every field holds the row id + 1 (so 0 means padding), [R, T]."""
  ids = np.arange(1, num_rows + 1, dtype=np.int32)[:, None].repeat(seq_len, 1)
  return {k: ids.copy() for k in FIELDS}


def _ids(batch):
  return batch["inputs"][:, 0].tolist()


def test_build_dataset_all_formats(tmp_path):
  tok = train_sentencepiece(["user assistant abcdefghijklmnopqrstuvwxyz 0123456789+=\n"], str(tmp_path / "tok"),
                            vocab_size=128)
  records = [
      {"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]},
      {"prompt": "2+2=", "completion": "4"},
      {"text": "abc"},
  ]
  (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n")
  (tmp_path / "b.jsonl").write_text(json.dumps(records[2]) + "\n")
  rows, stats = build_dataset(str(tmp_path / "*.jsonl"), tok, seq_len=64)
  # Lengths after the shift: chat 1+(1+4+1+3+1+1)+(1+9+1+1+1+1)-1 = 25, pc 1+4+1+1-1 = 6, text 1+3+1-1 = 4.
  # Loss tokens: chat "2" + <|im_end|> = 2, pc "4" + eos = 2, text "abc" + eos = 4.
  assert stats == dict(files=2, records=3, examples=3, truncated=0, dropped=0, empty=0, rows=1, loss_tokens=8,
                       fill=35 / 64)
  assert rows["segment_ids"][0].tolist() == [1] * 25 + [2] * 6 + [3] * 4 + [0] * 29
  assert set(rows) == set(FIELDS) and rows["inputs"].shape == (1, 64)


def test_iterator_batches_and_resume_from_json_state():
  rows = _rows(10)
  it = make_train_iterator(rows, batch_size=4, seed=3)
  for _ in range(3):  # crosses an epoch boundary (10 rows, 4 per batch)
    batch = next(it)
  assert set(batch) == set(FIELDS) and batch["inputs"].shape == (4, 3) and batch["inputs"].dtype == np.int32
  state = json.loads(json.dumps(it.get_state()))  # what orbax JsonSave stores
  expected = [next(it) for _ in range(4)]
  resumed = make_train_iterator(rows, batch_size=4, seed=3)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in FIELDS:
      np.testing.assert_array_equal(got[k], want[k])


def test_each_epoch_is_a_fresh_permutation():
  it = make_train_iterator(_rows(8), batch_size=4, seed=0)
  epochs = [_ids(next(it)) + _ids(next(it)) for _ in range(3)]
  assert all(sorted(e) == list(range(1, 9)) for e in epochs)
  assert len({tuple(e) for e in epochs}) == 3
  ordered = make_train_iterator(_rows(8), batch_size=4, seed=0, shuffle=False)
  assert _ids(next(ordered)) + _ids(next(ordered)) == list(range(1, 9))


def test_processes_never_share_a_row_within_an_epoch():
  num_rows, num_processes, batch_size = 12, 3, 2  # one epoch = 2 steps of 3 x 2 rows
  iterators = [make_train_iterator(_rows(num_rows), batch_size=batch_size, seed=7, process_index=p,
                                   process_count=num_processes) for p in range(num_processes)]
  single = make_train_iterator(_rows(num_rows), batch_size=batch_size * num_processes, seed=7)
  for _ in range(2):  # epochs
    seen = [_ids(next(it)) + _ids(next(it)) for it in iterators]
    assert sorted(sum(seen, [])) == list(range(1, num_rows + 1))  # disjoint and complete
  # Together the processes see, step by step, what one process with the global batch sees.
  iterators = [make_train_iterator(_rows(num_rows), batch_size=batch_size, seed=7, process_index=p,
                                   process_count=num_processes) for p in range(num_processes)]
  for _ in range(3):
    assert sorted(sum((_ids(next(it)) for it in iterators), [])) == sorted(_ids(next(single)))


def test_processes_disjoint_when_rows_do_not_divide():
  # 10 rows over 3 processes, batch 1: process p's step k is global index 3k + p.
  num_rows, num_processes = 10, 3
  seen = []
  for p in range(num_processes):
    it = make_train_iterator(_rows(num_rows), batch_size=1, seed=1, process_index=p, process_count=num_processes)
    seen += [_ids(next(it))[0] for k in range(4) if 3 * k + p < num_rows]
  assert sorted(seen) == list(range(1, num_rows + 1))


def test_iterator_argument_errors():
  with pytest.raises(ValueError, match="process_index"):
    make_train_iterator(_rows(4), batch_size=1, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="no row"):
    make_train_iterator(_rows(0), batch_size=1, seed=0)


def test_eval_batches_pad_the_last_batch():
  batches = eval_batches(_rows(5), batch_size=2)
  assert [_ids(b) for b in batches] == [[1, 2], [3, 4], [5, 0]]
  last = batches[-1]
  assert last["segment_ids"][1].tolist() == [0, 0, 0] and last["loss_mask"][1].tolist() == [0, 0, 0]
  assert eval_batches(_rows(5), batch_size=2)[0]["inputs"].tolist() == batches[0]["inputs"].tolist()


def test_eval_batches_per_process_cover_rows_once_in_lockstep():
  # 7 rows over 3 processes: process 0 gets rows 1, 4, 7; process 1: 2, 5; process 2: 3, 6.
  per_process = [eval_batches(_rows(7), batch_size=2, process_index=p, process_count=3) for p in range(3)]
  assert [[_ids(b) for b in batches] for batches in per_process] == [
      [[1, 4], [7, 0]], [[2, 5], [0, 0]], [[3, 6], [0, 0]]]
