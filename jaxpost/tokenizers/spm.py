"""SentencePiece backend: load a `.model` file, or train a small one in seconds.

Trained models keep text byte-exact: identity normalisation, no collapsing of whitespace, no dummy
prefix, "\\n" as a user-defined symbol (always one id, so newlines survive and chat segments split
cleanly), and the chat special tokens as single ids. Fixed ids: pad=0, unk=1, bos=2, eos=3.

Note: a user-defined symbol is matched anywhere in the text, so a literal "<|im_end|>" inside a
message also becomes the special id (as with most chat tokenizers).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece

from jaxpost.tokenizers.base import Tokenizer
from jaxpost.tokenizers.chat_template import CHAT_SPECIAL_TOKENS

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class SentencePieceTokenizer(Tokenizer):
  """A `Tokenizer` over a sentencepiece model (file path or serialized proto bytes)."""

  def __init__(self, model: str | bytes):
    self.path = model if isinstance(model, str) else None
    self._sp = sentencepiece.SentencePieceProcessor()
    if isinstance(model, str):
      self._sp.Load(model)
    else:
      self._sp.LoadFromSerializedProto(model)

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer(path={self.path!r}, vocab_size={self.vocab_size})"

  def encode(self, text: str) -> list[int]:
    return self._sp.EncodeAsIds(text)

  def decode(self, ids: Sequence[int]) -> str:
    pad = self.pad_id
    return self._sp.DecodeIds([int(i) for i in np.asarray(ids).reshape(-1) if int(i) != pad])

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  @property
  def bos_id(self) -> int | None:
    return _optional(self._sp.bos_id())

  @property
  def eos_id(self) -> int | None:
    return _optional(self._sp.eos_id())

  @property
  def pad_id(self) -> int | None:
    return _optional(self._sp.pad_id())

  def token_id(self, piece: str) -> int:
    token = self._sp.PieceToId(piece)
    if token == self._sp.unk_id() and piece != self._sp.IdToPiece(token):
      raise KeyError(f"{self!r} has no piece {piece!r}; train it with user_defined_symbols={piece!r}")
    return token


def _optional(token: int) -> int | None:
  return None if token < 0 else token  # sentencepiece reports a disabled special as -1


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str,
    *,
    vocab_size: int,
    model_type: str = "char",
    user_defined_symbols: Sequence[str] = CHAT_SPECIAL_TOKENS,
    byte_fallback: bool = False,
    split_by_whitespace: bool = True,
) -> SentencePieceTokenizer:
  """Trains a sentencepiece model on `texts`, writes `{model_prefix}.model` / `.vocab`, loads it.

  Args:
    texts: training documents; newlines inside a document are kept.
    model_prefix: output path without extension; parent folders are created.
    vocab_size: for 'char', an upper bound (the vocabulary is the specials plus every character
      seen, and too small a bound is an error rather than a silent unk); for 'bpe'/'unigram', the
      target size (smaller if the texts cannot fill it).
    model_type: 'char' (the demo's character vocabulary), 'bpe' or 'unigram'.
    user_defined_symbols: pieces that always get a single id; "\\n" is always added.
    byte_fallback: add 256 byte pieces so unseen characters round-trip instead of becoming unk
      (needs vocab_size > 263 + specials).
    split_by_whitespace: False lets 'bpe'/'unigram' pieces span spaces (text repeated verbatim, such as
      a tool schema in every prompt, then takes a few pieces).
  """
  if model_type not in ("char", "bpe", "unigram"):
    raise ValueError(f"model_type must be 'char', 'bpe' or 'unigram', got {model_type!r}")
  texts = list(texts)
  if not texts:
    raise ValueError(f"train_sentencepiece({model_prefix!r}): no training texts")
  symbols = list(dict.fromkeys([*user_defined_symbols, "\n"]))
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  sentencepiece.SentencePieceTrainer.Train(
      sentence_iterator=iter(texts),
      model_prefix=model_prefix,
      model_type=model_type,
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      user_defined_symbols=symbols,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      split_digits=True,
      character_coverage=1.0,
      byte_fallback=byte_fallback,
      split_by_whitespace=split_by_whitespace,
      max_sentence_length=1 << 24,
      input_sentence_size=0,
      minloglevel=2,
  )
  tokenizer = SentencePieceTokenizer(model_prefix + ".model")
  if model_type == "char":
    missing = sorted({c.replace(" ", "\u2581") for t in texts for c in t} - _pieces(tokenizer))  # " " is "▁"
    if missing and not byte_fallback:
      raise ValueError(f"train_sentencepiece({model_prefix!r}): vocab_size={vocab_size} leaves out "
                       f"{len(missing)} characters seen in the texts (e.g. {missing[:5]}); raise vocab_size")
  return tokenizer


def _pieces(tokenizer: SentencePieceTokenizer) -> set[str]:
  sp = tokenizer._sp  # pylint: disable=protected-access
  return {sp.IdToPiece(i) for i in range(sp.GetPieceSize())}
