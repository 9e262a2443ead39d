"""Tokenizers: sentencepiece training/loading, exact round trips, specials as single ids, chat masks."""
import numpy as np
import pytest

from jaxpost import tokenizers
from jaxpost.tokenizers import IM_END, IM_START, render_chat, tokenize_chat, train_sentencepiece

CORPUS = [
    "Hello, world! What is 12 + 30?\nThe answer: 42.\n",
    "  indented line\twith a tab; (parens) [brackets] {braces} 'quotes' \"double\" - _ * / = < > | ~ # @ $ % & ^ `\n\n",
    "system user assistant ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 ... !?:",
]
ROUND_TRIP = [
    "Hello\nworld",
    "  two leading spaces, trailing  ",
    "digits 0123456789 and 12+30=42?\n\n\n",
    "\n starts with a newline; ends with tab\t",
    "punctuation !\"#$%&'()*+,-./:;<=>?@[]^_`{|}~",
    "<|im_start|>user\nhi<|im_end|>\n",
]


@pytest.fixture(scope="module")
def char_tok(tmp_path_factory):
  return train_sentencepiece(CORPUS, str(tmp_path_factory.mktemp("tok") / "char"), vocab_size=256)


def test_fixed_special_ids(char_tok):
  assert (char_tok.pad_id, char_tok.bos_id, char_tok.eos_id) == (0, 2, 3)
  assert char_tok.vocab_size < 256  # 'char': the bound is not filled, only seen characters + specials


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_char_round_trip(char_tok, text):
  assert char_tok.decode(char_tok.encode(text)) == text


def test_decode_skips_pad_and_accepts_arrays(char_tok):
  ids = char_tok.encode("a b\n")
  assert char_tok.decode(np.asarray([0, 0] + ids + [0], np.int32)) == "a b\n"


def test_chat_specials_and_newline_are_single_ids(char_tok):
  for piece in (IM_START, IM_END, "\n"):
    (token,) = char_tok.encode(piece)
    assert char_tok.token_id(piece) == token
  # Specials split cleanly even when glued to text.
  assert char_tok.encode("x<|im_end|>y") == char_tok.encode("x") + [char_tok.token_id(IM_END)] + char_tok.encode("y")
  assert tokenizers.chat_eos_id(char_tok) == char_tok.token_id(IM_END)
  with pytest.raises(KeyError, match="<tool>"):
    char_tok.token_id("<tool>")


def test_bpe_byte_fallback_round_trips_unseen_characters(tmp_path):
  tok = train_sentencepiece(CORPUS * 5, str(tmp_path / "bpe"), vocab_size=400, model_type="bpe", byte_fallback=True)
  for text in ROUND_TRIP + ["unseen: héllo ☃ 日本"]:
    assert tok.decode(tok.encode(text)) == text
  (token,) = tok.encode(IM_START)
  assert token == tok.token_id(IM_START)


def test_char_vocab_too_small_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="raise vocab_size"):
    train_sentencepiece(["abcdefghijklmnopqrstuvwxyz"], str(tmp_path / "small"), vocab_size=12)


def test_load(char_tok, tmp_path):
  loaded = tokenizers.load(char_tok.path)
  assert loaded.encode("Hello\n") == char_tok.encode("Hello\n")
  with pytest.raises(FileNotFoundError):
    tokenizers.load(str(tmp_path / "tokenizer.json"))
  with pytest.raises(FileNotFoundError):
    tokenizers.load(str(tmp_path / "missing.model"))


CONVERSATION = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": "a"},
    {"role": "user", "content": "r"},
    {"role": "assistant", "content": "bc"},
]


def test_render_chat():
  assert render_chat(CONVERSATION[:3], add_generation_prompt=False) == (
      "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n")
  assert render_chat(CONVERSATION[:2], add_generation_prompt=True).endswith(
      "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")


def test_chat_loss_mask_positions(char_tok):
  tokens, loss_mask = tokenize_chat(CONVERSATION, char_tok)
  # Char vocabulary: one id per character; a message takes 1 (<|im_start|>) + len(role) + 1 ("\n")
  # + len(content) + 1 (<|im_end|>) + 1 ("\n") ids:
  #   system    0..10   (1+6+1+1+1+1 = 11)
  #   user     11..19   (9)
  #   assistant 20..33: <|im_start|> 20, "assistant" 21..29, "\n" 30, "a" 31, <|im_end|> 32, "\n" 33
  #   user     34..42
  #   assistant 43..57: <|im_start|> 43, "assistant" 44..52, "\n" 53, "bc" 54..55, <|im_end|> 56, "\n" 57
  assert tokens.dtype == np.int32 and loss_mask.dtype == np.bool_
  assert tokens.shape == loss_mask.shape == (58,)
  assert np.flatnonzero(loss_mask).tolist() == [31, 32, 54, 55, 56]
  assert tokens[32] == tokens[56] == char_tok.token_id(IM_END)
  # Segment-wise ids equal those of the rendered string.
  assert tokens.tolist() == char_tok.encode(render_chat(CONVERSATION))


def test_chat_generation_prompt_has_no_loss(char_tok):
  tokens, loss_mask = tokenize_chat(CONVERSATION[:2], char_tok, add_generation_prompt=True)
  assert char_tok.decode(tokens).endswith("<|im_start|>assistant\n")
  assert not loss_mask.any()


@pytest.mark.parametrize("messages, match", [
    ([{"role": "bot", "content": "x"}], "unknown role 'bot'"),
    ([{"role": "user", "content": 3}], "must be a string"),
    (["hi"], r"messages\[0\] must be a dict"),
    ([], "empty"),
])
def test_chat_rejects_malformed(char_tok, messages, match):
  with pytest.raises(ValueError, match=match):
    tokenize_chat(messages, char_tok)
