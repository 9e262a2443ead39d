"""Rollout rows for the policy losses, and prompt records (jaxpost/rollout.py, jaxpost/data/prompts.py)."""
import json
import os

import numpy as np
import pytest

from jaxpost import rollout, tokenizers
from jaxpost.data.jsonl import DataError
from jaxpost.data.prompts import load_prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "assets", "arithmetic", "tokenizer.model")


def test_rollout_batch_layout():
  # Prompt [5, 6, 7] with two samples [8, 9] and [10]; T = 5, one extra padding row.
  out = rollout.rollout_batch([[5, 6, 7]], [[8, 9], [10]], np.array([[-0.5, -0.25], [-1.0, 0.0]], np.float32),
                              num_samples=2, seq_len=5, rows=3)
  np.testing.assert_array_equal(out["inputs"], [[5, 6, 7, 8, 0], [5, 6, 7, 0, 0], [0] * 5])
  np.testing.assert_array_equal(out["targets"], [[6, 7, 8, 9, 0], [6, 7, 10, 0, 0], [0] * 5])
  # Column 2 predicts the first completion token (8 or 10), column 3 the second (9).
  np.testing.assert_array_equal(out["loss_mask"], [[0, 0, 1, 1, 0], [0, 0, 1, 0, 0], [0] * 5])
  np.testing.assert_array_equal(out["old_logps"], [[0, 0, -0.5, -0.25, 0], [0, 0, -1.0, 0, 0], [0] * 5])
  np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0] * 5])
  np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 3, 0], [0, 1, 2, 0, 0], [0] * 5])


def test_rollout_batch_rejects_rows_longer_than_the_buffer():
  with pytest.raises(ValueError, match="row 0: prompt 3 \\+ completion 4 tokens exceed"):
    rollout.rollout_batch([[1, 2, 3]], [[4, 5, 6, 7]], None, num_samples=1, seq_len=5)


def _write(tmp_path, lines):
  path = tmp_path / "prompts.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_prompt_records_and_overlong_count(tmp_path):
  tok = tokenizers.load(TOKENIZER)
  path = _write(tmp_path, [json.dumps({"prompt": "what is 1 + 2?", "answer": "3"}),
                           json.dumps({"messages": [{"role": "user", "content": "hi"}], "answer": "x"}),
                           json.dumps({"prompt": "x" * 100, "answer": "y"})])
  examples, stats = load_prompts(path, tok, max_prompt_len=40)
  assert stats == {"prompts": 2, "dropped_overlong_prompts": 1}
  expected = [tok.bos_id] + tokenizers.tokenize_chat([{"role": "user", "content": "what is 1 + 2?"}], tok,
                                                     add_generation_prompt=True)[0].tolist()
  assert examples[0]["tokens"] == expected
  assert tok.decode(examples[0]["tokens"]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("record,message", [
    ({"answer": "3"}, "needs a non-empty 'prompt' string or 'messages'"),
    ({"prompt": "what?"}, "needs an 'answer'"),
    ({"messages": [{"role": "robot", "content": "hi"}], "answer": "1"}, "robot"),
])
def test_bad_prompt_records_name_file_and_line(tmp_path, record, message):
  tok = tokenizers.load(TOKENIZER)
  path = _write(tmp_path, [json.dumps({"prompt": "ok", "answer": "1"}), json.dumps(record)])
  with pytest.raises(DataError, match=rf"prompts\.jsonl:2: .*{message}"):
    load_prompts(path, tok, max_prompt_len=64)


def test_gsm8k_records_become_prompt_and_answer():
  from jaxpost.data.prompts import normalize_record
  record = {"question": "Natalia sold 48 clips...", "answer": "48/2 = 24\n48+24 = 72\n#### 1,072"}
  assert normalize_record(record)["prompt"] == "Natalia sold 48 clips..."
  assert normalize_record(record)["answer"] == "1072"  # thousands separators dropped


def test_shared_gsm8k_file_loads_when_present():
  path = os.path.join(ROOT, "..", "shared", "data", "gsm8k", "test.jsonl")
  if not os.path.exists(path):
    pytest.skip("GSM8K not found at ../shared/data/gsm8k (get it from github.com/openai/grade-school-math)")
  from jaxpost.data.jsonl import read_jsonl
  from jaxpost.data.prompts import normalize_record
  records = [normalize_record(r) for _, _, r in read_jsonl(path)]
  assert len(records) == 1319
  assert all(r["answer"].lstrip("-").replace(".", "").isdigit() for r in records)
