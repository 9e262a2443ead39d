"""Hugging Face tokenizer folders: `tokenizer.json` (or `tokenizer.model`) plus the side files.

`HFTokenizer.from_folder(path)` reads the vocabulary from `tokenizer.json` with the `tokenizers`
library (or, without one, from a sentencepiece `tokenizer.model`), and the special tokens, chat
template and stop ids from `tokenizer_config.json`, `chat_template.jinja` and
`generation_config.json` (see hf_config.py). `transformers` is not needed.

Deviations from transformers, on purpose:
  * `encode` never adds bos/eos (the `Tokenizer` contract); `adds_bos` says whether a plain text
    sequence starts with bos: with tokenizer.json, whether its post-processor adds one (transformers
    ignores `add_bos_token` when tokenizer.json exists); with tokenizer.model, `add_bos_token`.
  * `encode_chat` returns the ids of the rendered template with no bos added (the template writes
    the bos it wants, as `apply_chat_template(tokenize=True)` does) and the assistant loss mask of
    chat_mask.py.
  * `chat_stop_ids` = the end-of-turn token the template writes after a reply (found by rendering a
    one-turn probe conversation), every `eos_token_id` of generation_config.json, and eos.
  * The tokenizer.model backend splits out added tokens and encodes the rest with sentencepiece as
    the model file says; it does not reproduce transformers' legacy/non-legacy prefix-space rules.
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sentencepiece
import tokenizers

from jaxpost.tokenizers.base import Tokenizer
from jaxpost.tokenizers.chat_mask import assistant_spans, token_mask
from jaxpost.tokenizers.hf_chat_template import ChatTemplateError, render_chat_template
from jaxpost.tokenizers.hf_config import CHAT_TEMPLATE_FILE, TOKENIZER_CONFIG, HFTokenizerConfig, read_hf_config

Offsets = list[tuple[int, int]]
_PROBE = ({"role": "user", "content": "1"}, {"role": "assistant", "content": "2"})


class _JsonBackend:
  """tokenizer.json via `tokenizers`; ids without post-processing, offsets in characters."""

  def __init__(self, path: str, config: HFTokenizerConfig):
    try:
      self.tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON or an unknown model.
      raise ValueError(f"{path}: cannot read tokenizer.json: {str(e).splitlines()[0]}") from None
    for added in config.added_tokens:  # transformers adds config-only added tokens too.
      if self.tok.token_to_id(added.content) is None:
        self.tok.add_tokens([tokenizers.AddedToken(added.content, single_word=added.single_word, lstrip=added.lstrip,
                                                   rstrip=added.rstrip, normalized=added.normalized,
                                                   special=added.special)])
      if (got := self.tok.token_to_id(added.content)) != added.id:
        raise ValueError(f"{TOKENIZER_CONFIG}: added_tokens_decoder[{added.id}] = {added.content!r} has id {got} in "
                         f"{path}")
    self.with_specials = self.tok.encode("", add_special_tokens=True).ids  # What the post-processor adds.
    self.tok.post_processor = None  # Offsets untrimmed (ByteLevel trims spaces off them); ids are unchanged.
    self.added_ids = frozenset(self.tok.get_added_tokens_decoder())
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> tuple[list[int], Offsets]:
    encoding = self.tok.encode(text, add_special_tokens=False)
    return encoding.ids, encoding.offsets

  def decode(self, ids: list[int]) -> str:
    return self.tok.decode(ids, skip_special_tokens=False)

  def token_to_id(self, piece: str) -> int | None:
    return self.tok.token_to_id(piece)


class _SentencePieceBackend:
  """tokenizer.model via sentencepiece, with the config's added tokens split out first."""

  def __init__(self, path: str, config: HFTokenizerConfig):
    self.sp = sentencepiece.SentencePieceProcessor()
    try:
      self.sp.Load(path)
    except (OSError, RuntimeError) as e:
      raise ValueError(f"{path}: cannot read the sentencepiece model: {e}") from None
    self.added = {t.content: t.id for t in config.added_tokens}
    for token in config.special_tokens.values():  # bos/eos/... are matched in text, as transformers does.
      if token not in self.added and self.sp.IdToPiece(piece_id := self.sp.PieceToId(token)) == token:
        self.added[token] = piece_id
    self.added_by_id = {i: content for content, i in self.added.items()}
    longest_first = sorted(self.added, key=len, reverse=True)
    self.split_re = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if longest_first else None
    n = self.sp.GetPieceSize()
    self.added_ids = frozenset(self.added.values()) | {i for i in range(n) if self.sp.IsControl(i)}
    self.vocab_size = max([n, *[i + 1 for i in self.added_by_id]])
    self.with_specials = None

  def encode(self, text: str) -> tuple[list[int], Offsets]:
    ids, offsets, pos = [], [], 0
    for k, part in enumerate(self.split_re.split(text) if self.split_re else [text]):
      if k % 2:  # An added token.
        ids.append(self.added[part])
        offsets.append((pos, pos + len(part)))
      elif part:
        char_starts = np.cumsum([0] + [len(c.encode("utf-8")) for c in part])  # byte offset of each char
        for piece in self.sp.encode(part, return_type="proto").pieces:  # begin/end are byte offsets
          # The characters the bytes touch (a byte-fallback piece may hold part of one character).
          start = np.searchsorted(char_starts, piece.begin, side="right") - 1
          end = np.searchsorted(char_starts, piece.end, side="left")
          ids.append(piece.id)
          offsets.append((pos + int(start), pos + int(end)))
      pos += len(part)
    return ids, offsets

  def decode(self, ids: list[int]) -> str:
    text, run, n = [], [], self.sp.GetPieceSize()
    for i in ids:
      if i in self.added_by_id and (i >= n or self.sp.IsControl(i)):  # sentencepiece decodes these as "".
        text.append(self.sp.DecodeIds(run))
        text.append(self.added_by_id[i])
        run = []
      else:
        run.append(i)
    return "".join(text) + self.sp.DecodeIds(run)

  def token_to_id(self, piece: str) -> int | None:
    if piece in self.added:
      return self.added[piece]
    token = self.sp.PieceToId(piece)
    return None if self.sp.IdToPiece(token) != piece else token


class HFTokenizer(Tokenizer):
  """A `Tokenizer` over a Hugging Face tokenizer folder, with its chat template."""

  def __init__(self, backend: _JsonBackend | _SentencePieceBackend, config: HFTokenizerConfig, *, path: str,
               chat_template: str | None = None):
    self.path, self.config, self._backend = path, config, backend
    templates = config.chat_templates
    if chat_template is None:  # As transformers: the "default" template, or the only one.
      chat_template = "default" if "default" in templates else next(iter(templates)) if len(templates) == 1 else None
    if chat_template in templates:
      self._template_name, self._template = chat_template, templates[chat_template]
    else:  # None, or the source of a template that replaces the folder's.
      self._template_name, self._template = None, chat_template
    for key, token in config.special_tokens.items():
      if backend.token_to_id(token) is None:
        raise ValueError(f"{os.path.join(path, TOKENIZER_CONFIG)}: {key} {token!r} is not in the vocabulary")

  @classmethod
  def from_folder(cls, folder: str, chat_template: str | None = None) -> HFTokenizer:
    """Loads `folder`/tokenizer.json, else `folder`/tokenizer.model, with the side files.

    Args:
      chat_template: a template name (from a list of named templates) or a template source that
        replaces the folder's; default: the folder's "default" (or only) template.
    """
    config = read_hf_config(folder)
    if os.path.isfile(path := os.path.join(folder, "tokenizer.json")):
      backend = _JsonBackend(path, config)
    else:
      backend = _SentencePieceBackend(os.path.join(folder, "tokenizer.model"), config)
    return cls(backend, config, path=folder, chat_template=chat_template)

  def __repr__(self) -> str:
    return (f"HFTokenizer(path={self.path!r}, vocab_size={self.vocab_size}, "
            f"backend={type(self._backend).__name__.strip('_')})")

  # ------------------------------------------------------------------ Tokenizer interface
  def encode(self, text: str) -> list[int]:
    return self._backend.encode(text)[0]

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Returns the ids [L] of `text` (no bos/eos) and each id's character range [start, end) [L, 2]."""
    return self._backend.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    pad = self.pad_id
    return self._backend.decode([int(i) for i in np.asarray(ids).reshape(-1) if int(i) != pad])

  @property
  def vocab_size(self) -> int:
    return self._backend.vocab_size

  @property
  def bos_id(self) -> int | None:
    return self._special_id("bos_token")

  @property
  def eos_id(self) -> int | None:
    return self._special_id("eos_token")

  @property
  def pad_id(self) -> int | None:
    return self._special_id("pad_token")

  @property
  def unk_id(self) -> int | None:
    return self._special_id("unk_token")

  @property
  def adds_bos(self) -> bool:
    if self.bos_id is None:
      return False
    if self._backend.with_specials is not None:
      return self._backend.with_specials[:1] == [self.bos_id]
    return self.config.add_bos_token is not False

  def token_id(self, piece: str) -> int:
    token = self._backend.token_to_id(piece)
    if token is None:
      raise KeyError(f"{self!r} has no token {piece!r}")
    return token

  def _special_id(self, key: str) -> int | None:
    token = self.config.special_tokens.get(key)
    return None if token is None else self._backend.token_to_id(token)

  # ------------------------------------------------------------------ chat
  @property
  def chat_template(self) -> str | None:
    """The template source in use, or None when the folder has none."""
    return self._template

  def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                  **kwargs) -> str:
    """The string `apply_chat_template(messages, tokenize=False, add_generation_prompt=..., **kwargs)` gives."""
    return self._render(messages, add_generation_prompt, **kwargs)[0]

  def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False, *,
                  loss_from: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the rendered conversation (bos only if the template writes it) and the assistant mask.

    `loss_from`: as in `Tokenizer.encode_chat`.

    Returns:
      tokens: int32 [L].
      loss_mask: bool [L], True on each assistant reply and the end-of-turn token(s) after it
        (see chat_mask.py); False on the generation prompt.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
      raise ValueError(f"`messages` must be a non-empty list of {{role, content}} dicts, got {messages!r:.80}")
    text, spans = assistant_spans(self._render, messages, add_generation_prompt, loss_from)
    ids, offsets = self._backend.encode(text)
    return np.asarray(ids, np.int32).reshape(-1), token_mask(offsets, spans)

  @functools.cached_property
  def chat_stop_ids(self) -> tuple[int, ...]:
    stop = []
    if self._template is not None:
      try:  # The first added token the template writes after a reply ends the turn.
        before = self.render_chat(_PROBE[:1], add_generation_prompt=True)
        after = self.render_chat(_PROBE, add_generation_prompt=False)
        if after.startswith(before):
          stop += [i for i in self.encode(after[len(before):]) if i in self._backend.added_ids][:1]
      except ValueError:
        pass  # A template that rejects the probe conversation: rely on generation_config and eos.
    stop += self.config.generation_eos_ids
    stop += [] if self.eos_id is None else [self.eos_id]
    return tuple(dict.fromkeys(stop))

  def _render(self, messages, add_generation_prompt: bool, **kwargs) -> tuple[str, list[tuple[int, int]]]:
    if self._template is None:
      names = sorted(self.config.chat_templates)
      raise ValueError(f"{self.path}: no chat template to use: " + (
          f"several named templates {names} and none is 'default'; pass chat_template=NAME" if names else
          f"{TOKENIZER_CONFIG} has no `chat_template` and there is no {CHAT_TEMPLATE_FILE}"))
    try:
      return render_chat_template(self._template, messages, add_generation_prompt=add_generation_prompt,
                                  special_tokens=self.config.special_tokens, **kwargs)
    except ChatTemplateError as e:
      name = f" {self._template_name!r}" if self._template_name else ""
      raise ChatTemplateError(f"{self.path}{name}: {e}") from None
