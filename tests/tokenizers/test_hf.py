"""HFTokenizer: ids equal transformers', specials and stop ids from the side files, backends, load errors."""
import json
import shutil

import numpy as np
import pytest

from hf_fixtures import GEMMA
from jaxpost import tokenizers
from jaxpost.tokenizers import HFTokenizer, SentencePieceTokenizer, train_sentencepiece

TEXTS = [
    "Hello world",
    "  two leading spaces,\ttab and trailing  ",
    "héllo wörld, naïve café; 日本語 🙂 and an unseen ☃ character\n\n",
    "<|im_start|>user\nhi<|im_end|>\n",
    "glued<|eot_id|>specials<start_of_turn>model\n<bos><eos>",
    "",
]


@pytest.mark.parametrize("style", ["qwen", "llama3", "gemma"])
def test_ids_and_decode_match_transformers(hf_folders, style):
  folder, hf = hf_folders[style]
  tok = tokenizers.load(folder)
  assert isinstance(tok, HFTokenizer) and tok.vocab_size == len(hf)
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False), text
    # transformers' default adds what the tokenizer.json post-processor adds: bos for llama3 and gemma.
    assert ([tok.bos_id] if tok.adds_bos else []) + ids == hf.encode(text), text
    assert tok.decode(ids) == hf.decode(ids) == text
  # Offsets are characters of the text, untrimmed (ByteLevel's trim_offsets would empty " " tokens).
  text = "a  b\n\n 日"  # 日 is 3 bytes, split over byte-level tokens that share its character.
  ids, offsets = tok.encode_with_offsets(text)
  assert len(ids) == len(offsets) and all(end > start for start, end in offsets)
  assert {i for start, end in offsets for i in range(start, end)} == set(range(len(text)))
  assert [start for start, _ in offsets] == sorted(start for start, _ in offsets)


def test_special_and_stop_ids(hf_folders):
  qwen, llama, gemma = (tokenizers.load(hf_folders[s][0]) for s in ("qwen", "llama3", "gemma"))
  tid = qwen.token_id
  # qwen: no bos; eos = <|im_end|>; generation_config lists <|im_end|> and <|endoftext|>.
  assert (qwen.bos_id, qwen.eos_id, qwen.pad_id, qwen.adds_bos) == (None, tid("<|im_end|>"), tid("<|endoftext|>"),
                                                                    False)
  assert qwen.chat_stop_ids == (tid("<|im_end|>"), tid("<|endoftext|>"))
  # llama3: bos from the post-processor; the template ends turns with <|eot_id|> (= eos), then generation_config.
  assert (llama.bos_id, llama.eos_id, llama.pad_id, llama.adds_bos) == (tid("<|begin_of_text|>"), tid("<|eot_id|>"),
                                                                        None, True)
  assert llama.chat_stop_ids == (tid("<|eot_id|>"), tid("<|endoftext|>"))
  # gemma: no generation_config; <end_of_turn> is found from the template, then eos.
  assert (gemma.bos_id, gemma.eos_id, gemma.pad_id) == (tid("<bos>"), tid("<eos>"), tid("<pad>"))
  assert gemma.chat_stop_ids == (tid("<end_of_turn>"), tid("<eos>"))
  with pytest.raises(KeyError, match="<tool>"):
    qwen.token_id("<tool>")


def test_handwritten_config_formats(hf_folders, tmp_path):
  """AddedToken dicts, added_tokens_decoder, a list of named templates, chat_template.jinja, an int eos id."""
  folder, hf = hf_folders["llama3"]
  shutil.copy(f"{folder}/tokenizer.json", tmp_path / "tokenizer.json")
  eot = hf.convert_tokens_to_ids("<|eot_id|>")
  config = {
      "bos_token": {"__type": "AddedToken", "content": "<|begin_of_text|>", "lstrip": False, "normalized": False,
                    "rstrip": False, "single_word": False, "special": True},
      "eos_token": "<|eot_id|>", "pad_token": None,
      "added_tokens_decoder": {str(eot): {"content": "<|eot_id|>", "special": True, "normalized": False}},
      "chat_template": [{"name": "default", "template": "{{ bos_token }}D{{ messages[0].content }}"},
                        {"name": "tool_use", "template": "T{{ messages[0].content }}{{ eos_token }}"}],
  }
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 0}))
  messages = [{"role": "user", "content": "x"}]
  tok = tokenizers.load(str(tmp_path))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (hf.bos_token_id, eot, None)
  assert tok.render_chat(messages) == "<|begin_of_text|>Dx"
  assert tokenizers.load(str(tmp_path), chat_template="tool_use").render_chat(messages) == "Tx<|eot_id|>"
  assert tok.chat_stop_ids == (0, eot)  # The probe finds no added token after "D" + reply: eos ids only.
  # A chat_template.jinja file takes priority over the config's templates (as in transformers).
  (tmp_path / "chat_template.jinja").write_text("J{{ messages[0].content }}")
  assert tokenizers.load(str(tmp_path / "tokenizer.json")).render_chat(messages) == "Jx"
  # Named templates and no "default": the caller has to pick one.
  (tmp_path / "chat_template.jinja").unlink()
  config["chat_template"] = config["chat_template"][1:] + [{"name": "rag", "template": "R"}]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"several named templates \['rag', 'tool_use'\] and none is 'default'"):
    tokenizers.load(str(tmp_path)).encode_chat(messages)
  assert tokenizers.load(str(tmp_path), chat_template="rag").render_chat(messages) == "R"


def test_sentencepiece_folder_with_config(tmp_path):
  """tokenizer.model + tokenizer_config.json: specials, added tokens and the template come from the config."""
  sp = train_sentencepiece(["model user hello there, how are you? fine 2+2=4\n"] * 3, str(tmp_path / "tokenizer"),
                           vocab_size=60, model_type="bpe", user_defined_symbols=["<start_of_turn>"])
  size = sp.vocab_size
  config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": True,
            "chat_template": GEMMA,
            "added_tokens_decoder": {str(sp.token_id("<start_of_turn>")): {"content": "<start_of_turn>"},
                                     str(size): {"content": "<end_of_turn>", "special": True}}}
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  tok = tokenizers.load(str(tmp_path))
  assert isinstance(tok, HFTokenizer) and tok.vocab_size == size + 1
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.adds_bos) == (2, 3, 0, True)
  assert tok.chat_stop_ids == (size, 3)  # <end_of_turn> (an added id past the model's pieces), eos
  assert tok.encode("hi<end_of_turn>there") == sp.encode("hi") + [size] + sp.encode("there")
  messages = [{"role": "user", "content": "how are you?"}, {"role": "assistant", "content": " fine "}]
  tokens, loss_mask = tok.encode_chat(messages)
  # The template writes bos as text; it is split out as an added token, like <start_of_turn>.
  assert tok.decode(tokens) == ("<s><start_of_turn>user\nhow are you?<end_of_turn>\n"
                                "<start_of_turn>model\nfine<end_of_turn>\n")
  assert tokens[0] == 2 and tokens[1] == sp.token_id("<start_of_turn>")
  assert tok.decode(tokens[loss_mask]) == "fine<end_of_turn>"
  # Without tokenizer_config.json the folder is a plain sentencepiece tokenizer with built-in ChatML.
  (tmp_path / "tokenizer_config.json").unlink()
  assert isinstance(tokenizers.load(str(tmp_path)), SentencePieceTokenizer)


def test_load_errors(hf_folders, tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer path not found"):
    tokenizers.load(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="neither tokenizer.json nor tokenizer.model"):
    tokenizers.load(str(tmp_path))
  (tmp_path / "vocab.txt").write_text("a\n")
  with pytest.raises(ValueError, match="expected a folder with tokenizer.json"):
    tokenizers.load(str(tmp_path / "vocab.txt"))
  (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')  # truncated
  with pytest.raises(ValueError, match=r"tokenizer.json: cannot read tokenizer.json"):
    tokenizers.load(str(tmp_path))
  shutil.copy(f"{hf_folders['qwen'][0]}/tokenizer.json", tmp_path / "tokenizer.json")
  (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>",')
  with pytest.raises(ValueError, match=r"tokenizer_config.json: not valid JSON"):
    tokenizers.load(str(tmp_path))
  (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|nope|>"}')
  with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<\|nope\|>' is not in the vocabulary"):
    tokenizers.load(str(tmp_path))
  (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}')
  tok = tokenizers.load(str(tmp_path))
  with pytest.raises(ValueError, match="has no `chat_template` and there is no chat_template.jinja"):
    tok.encode_chat([{"role": "user", "content": "hi"}])
  assert tok.chat_stop_ids == (tok.eos_id,)
  np.testing.assert_array_equal(tok.encode("hi"), hf_folders["qwen"][1].encode("hi"))
