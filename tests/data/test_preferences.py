"""Preference records -> pair rows: layout and masks, KTO's mismatched pairs, overlong handling, file:line
errors, and an exactly resumable iterator."""
import json
import os

import numpy as np
import pytest

from jaxpost import tokenizers
from jaxpost.data import pipeline, preferences
from jaxpost.data.jsonl import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = tokenizers.load(os.path.join(ROOT, "assets", "arithmetic", "tokenizer.model"))


def _write(tmp_path, records, name="prefs.jsonl"):
  path = tmp_path / name
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return str(path)


def test_pair_rows_layout_and_masks(tmp_path):
  path = _write(tmp_path, [{"prompt": "what is 1 + 2?", "chosen": "3", "rejected": "12", "margin": 0.5},
                           {"messages": [{"role": "user", "content": "hi"}], "chosen": [
                               {"role": "assistant", "content": "hello"}], "rejected": "go away"}])
  rows, stats = preferences.build_paired(path, TOKENIZER, seq_len=40)
  assert rows["inputs"].shape == (2, 2, 40) and rows["margin"].tolist() == [0.5, 0.0]
  assert stats == dict(records=2, truncated=0, dropped=0, empty=0, pairs=2)
  # The loss covers exactly the reply and its <|im_end|>: decoding the masked targets gives "3" / "12".
  im_end = TOKENIZER.token_id("<|im_end|>")
  for col, reply in ((0, "3"), (1, "12")):
    targets = rows["targets"][0, col][rows["loss_mask"][0, col] == 1].tolist()
    assert targets[-1] == im_end and TOKENIZER.decode(targets[:-1]) == reply
  # The prompt part is identical in chosen and rejected; positions count 0, 1, ... over the real tokens.
  n = int(rows["segment_ids"][0, 0].sum())
  assert rows["positions"][0, 0, :n].tolist() == list(range(n)) and rows["segment_ids"][0, 0, n:].sum() == 0
  first_loss = int(np.argmax(rows["loss_mask"][0, 0]))
  np.testing.assert_array_equal(rows["inputs"][0, 0, :first_loss], rows["inputs"][0, 1, :first_loss])


def test_unpaired_rows_for_kto(tmp_path):
  """Paired records give two examples each; each example's second sequence is its own prompt with
  another example's completion."""
  path = _write(tmp_path, [{"prompt": "what is 1 + 2?", "chosen": "3", "rejected": "12"},
                           {"prompt": "what is 5 + 5?", "completion": "10", "label": True},
                           {"prompt": "what is 2 + 2?", "completion": "5", "label": False}])
  rows, stats = preferences.build_unpaired(path, TOKENIZER, seq_len=40, seed=0)
  assert rows["label"].tolist() == [1, 0, 1, 0] and stats["examples"] == 4 and stats["desirable"] == 2
  for i in range(4):
    start = int(np.argmax(rows["loss_mask"][i, 0]))  # prompt lengths equal within a row
    np.testing.assert_array_equal(rows["inputs"][i, 0, :start], rows["inputs"][i, 1, :start])
    assert rows["targets"][i, 0].tolist() != rows["targets"][i, 1].tolist()


def test_overlong_pairs_truncate_or_drop(tmp_path):
  path = _write(tmp_path, [{"prompt": "what is 1 + 2?", "chosen": "3", "rejected": "1234567890" * 3},
                           {"prompt": "what is 1 + 2?", "chosen": "3", "rejected": "4"}])
  _, stats = preferences.build_paired(path, TOKENIZER, seq_len=40, overlong="truncate")
  assert (stats["pairs"], stats["truncated"], stats["dropped"]) == (2, 1, 0)
  _, stats = preferences.build_paired(path, TOKENIZER, seq_len=40, overlong="drop")
  assert (stats["pairs"], stats["truncated"], stats["dropped"]) == (1, 0, 1)


@pytest.mark.parametrize("record,message", [
    ({"prompt": "q", "rejected": "a"}, "missing `chosen`"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "identical"),
    ({"prompt": "q", "chosen": "", "rejected": "a"}, "`chosen` is empty"),
    ({"prompt": "  ", "chosen": "b", "rejected": "a"}, "`prompt` is empty"),
    ({"prompt": "q", "chosen": 3, "rejected": "a"}, "`chosen` must be a string or a list of messages, got int"),
    ({"chosen": "b", "rejected": "a"}, "needs `prompt` or `messages`"),
    ({"prompt": "q", "chosen": "b", "rejected": "a", "margin": "big"}, "`margin` must be a finite number"),
    ({"prompt": "q", "chosen": [{"role": "bot", "content": "b"}], "rejected": "a"}, "unknown role"),
    ('["not", "an", "object"]', "must be a JSON object"),
    ('{"prompt": ', "invalid JSON")])
def test_bad_records_name_file_and_line(tmp_path, record, message):
  path = _write(tmp_path, [{"prompt": "q", "chosen": "b", "rejected": "a"}, record])
  with pytest.raises(DataError, match=rf"^{path}:2: .*{message}"):
    preferences.build_paired(path, TOKENIZER, seq_len=40)


def test_bad_unpaired_label_names_file_and_line(tmp_path):
  path = _write(tmp_path, [{"prompt": "q", "completion": "b", "label": "yes"}])
  with pytest.raises(DataError, match=rf"^{path}:1: `label` must be true"):
    preferences.build_unpaired(path, TOKENIZER, seq_len=40)


def test_iterator_resumes_exactly():
  """The SFT pipeline's iterator over (R, 2, T) rows: restored state gives the same next batches."""
  rows, _ = preferences.build_paired(os.path.join(ROOT, "assets", "preferences", "arithmetic_eval.jsonl"),
                                     TOKENIZER, seq_len=48)
  it = pipeline.make_train_iterator(rows, batch_size=8, seed=3)
  for _ in range(30):  # past one epoch of 200 pairs
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = pipeline.make_train_iterator(rows, batch_size=8, seed=3)
  resumed.set_state(state)
  for a in expected:
    b = next(resumed)
    assert a["inputs"].shape == (8, 2, 48)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
