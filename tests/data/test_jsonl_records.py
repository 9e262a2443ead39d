"""JSONL reading and record tokenisation: formats, masks, and file:line errors."""
import json

import numpy as np
import pytest

from jaxpost.data import DataError, build_dataset, read_jsonl, tokenize_record
from jaxpost.tokenizers import IM_END, train_sentencepiece

CORPUS = ["system user assistant abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,!?+=\n"]
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return train_sentencepiece(CORPUS, str(tmp_path_factory.mktemp("tok") / "char"), vocab_size=256)


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def test_read_jsonl_glob_sorted_blank_lines_skipped(tmp_path):
  _write(tmp_path / "b.jsonl", ['{"i": 3}'])
  _write(tmp_path / "a.jsonl", ['{"i": 1}', "", "   ", '{"i": 2}'])
  got = [(p.rsplit("/", 1)[1], line, obj["i"]) for p, line, obj in read_jsonl(str(tmp_path / "*.jsonl"))]
  assert got == [("a.jsonl", 1, 1), ("a.jsonl", 4, 2), ("b.jsonl", 1, 3)]
  # A list of patterns is read in the given order.
  got = [obj["i"] for _, _, obj in read_jsonl([str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl")])]
  assert got == [3, 1, 2]


def test_read_jsonl_errors(tmp_path):
  with pytest.raises(DataError, match="no file matches .*nothing-\\*.jsonl"):
    list(read_jsonl(str(tmp_path / "nothing-*.jsonl")))
  path = _write(tmp_path / "file.jsonl", ['{"ok": 1}', "", '{"broken": '])
  with pytest.raises(DataError, match="file.jsonl:3: invalid JSON"):
    list(read_jsonl(path))


def test_read_jsonl_names_the_line_that_is_not_utf8(tmp_path):
  """UTF-8 text reads as text (é is 2 bytes, \u00e9 after JSON decoding); a line holding bytes \xff\xfe (no
  UTF-8 sequence starts with 0xff, column 8 after the 7 characters {"t": ") is the one-line error naming
  file:line, not a UnicodeDecodeError."""
  path = tmp_path / "latin.jsonl"
  path.write_bytes('{"t": "café"}\n'.encode() + b'{"t": "\xff\xfe"}\n')
  with pytest.raises(DataError, match=r"^.*latin.jsonl:2: not UTF-8 text: byte 0xff at column 8$"):
    for _, line, obj in read_jsonl(str(path)):
      assert (line, obj) == (1, {"t": "caf\u00e9"})


def test_chat_record_mask_with_bos(tok):
  tokens, loss_mask = tokenize_record(GOOD, tok, where="f:1")
  # bos 0 | <|im_start|> 1, "user" 2..5, "\n" 6, "hi" 7..8, <|im_end|> 9, "\n" 10
  #       | <|im_start|> 11, "assistant" 12..20, "\n" 21, "yo" 22..23, <|im_end|> 24, "\n" 25 ; no eos
  assert tokens[0] == tok.bos_id and len(tokens) == 26
  assert np.flatnonzero(loss_mask).tolist() == [22, 23, 24]
  assert tokens[24] == tok.token_id(IM_END) and tokens[-1] != tok.eos_id


def test_prompt_completion_record(tok):
  tokens, loss_mask = tokenize_record({"prompt": "1+1=", "completion": "2"}, tok, where="f:1")
  # bos, "1+1=" (4 ids, no loss), "2" (loss), eos (loss)
  assert tokens.tolist() == [tok.bos_id] + tok.encode("1+1=") + tok.encode("2") + [tok.eos_id]
  assert loss_mask.tolist() == [False, False, False, False, False, True, True]


def test_text_record(tok):
  tokens, loss_mask = tokenize_record({"text": "abc", "source": "ignored"}, tok, where="f:1")
  assert tokens.tolist() == [tok.bos_id] + tok.encode("abc") + [tok.eos_id]
  assert loss_mask.tolist() == [False, True, True, True, True]
  tokens, loss_mask = tokenize_record({"text": "abc"}, tok, where="f:1", add_bos=False, add_eos=False)
  assert tokens.tolist() == tok.encode("abc") and loss_mask.all()
  assert tokens.dtype == np.int32 and loss_mask.dtype == np.bool_


BAD_RECORDS = {
    "no messages key": ({"msgs": []}, r"unknown record format with keys \['msgs'\]"),
    "empty messages": ({"messages": []}, "`messages` is empty"),
    "messages not a list": ({"messages": "hi"}, "must be a list"),
    "message not a dict": ({"messages": ["hi"]}, r"messages\[0\] must be a dict"),
    "unknown role": ({"messages": [{"role": "bot", "content": "x"}]}, "unknown role 'bot'"),
    "non-string content": ({"messages": [{"role": "user", "content": None}]}, "must be a string"),
    "empty assistant": ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
                        r"messages\[1\] \(assistant\) has empty content"),
    "no assistant": ({"messages": [{"role": "user", "content": "q"}]}, "no assistant message"),
    "prompt without completion": ({"prompt": "q"}, "unknown record format"),
    "non-string completion": ({"prompt": "q", "completion": 1}, "`completion` must be a string"),
    "empty completion": ({"prompt": "q", "completion": ""}, "`completion` is empty"),
    "non-string text": ({"text": ["a"]}, "`text` must be a string"),
    "not an object": ([1, 2], "must be a JSON object"),
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_malformed_record_names_file_and_line(tok, tmp_path, name):
  record, match = BAD_RECORDS[name]
  # The bad record is on line 4: a good line, a blank line, a good line, then it.
  path = _write(tmp_path / "file.jsonl", [json.dumps(GOOD), "", json.dumps(GOOD), json.dumps(record)])
  with pytest.raises(DataError, match=r"file\.jsonl:4: .*" + match):
    build_dataset(path, tok, seq_len=64)
