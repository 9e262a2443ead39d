"""Reads the Hugging Face tokenizer side files of a checkpoint folder into one `HFTokenizerConfig`.

  tokenizer_config.json   bos/eos/pad/unk/... tokens (strings or AddedToken dicts), `added_tokens_decoder`,
                          `extra_special_tokens`, `add_bos_token` / `add_eos_token`, `chat_template`
                          (a string, or a list of {"name", "template"})
  chat_template.jinja     the default template (takes priority over `chat_template` in the config, as in
                          transformers); additional_chat_templates/NAME.jinja: named templates
  generation_config.json  `eos_token_id` (an int or a list: every one of them stops generation)

Every file is optional; a file that is present but not valid JSON is an error naming the file.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# The named special tokens that transformers exposes to chat templates as variables (`special_tokens_map`).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AddedToken:
  """One entry of `added_tokens_decoder`: a piece the tokenizer matches before splitting text."""
  id: int
  content: str
  special: bool = False
  lstrip: bool = False
  rstrip: bool = False
  normalized: bool = True
  single_word: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class HFTokenizerConfig:
  """What jaxpost reads from the side files; every field defaults to "absent".

  Attributes:
    special_tokens: {"bos_token": "<s>", ...}: the named special tokens that are set (strings).
    added_tokens: `added_tokens_decoder` entries, by id.
    add_bos_token / add_eos_token: the config's flags, None when absent.
    chat_templates: {"default": template, name: template, ...}; empty when the folder has none.
    generation_eos_ids: `generation_config.json`'s `eos_token_id` as a tuple (empty when absent).
  """
  special_tokens: dict[str, str] = dataclasses.field(default_factory=dict)
  added_tokens: tuple[AddedToken, ...] = ()
  add_bos_token: bool | None = None
  add_eos_token: bool | None = None
  chat_templates: dict[str, str] = dataclasses.field(default_factory=dict)
  generation_eos_ids: tuple[int, ...] = ()


def read_hf_config(folder: str) -> HFTokenizerConfig:
  """Reads tokenizer_config.json, chat_template.jinja, additional_chat_templates/ and generation_config.json."""
  config = _read_json(os.path.join(folder, TOKENIZER_CONFIG))
  special_tokens = {}
  for key in SPECIAL_TOKEN_KEYS:
    if (value := _token_content(config.get(key), f"{TOKENIZER_CONFIG}: {key}")) is not None:
      special_tokens[key] = value
  extra = config.get("extra_special_tokens")
  if isinstance(extra, dict):  # Named extras ({"image_token": "<image>"}) are template variables too.
    for key, value in extra.items():
      if (value := _token_content(value, f"{TOKENIZER_CONFIG}: extra_special_tokens.{key}")) is not None:
        special_tokens[key] = value
  return HFTokenizerConfig(
      special_tokens=special_tokens,
      added_tokens=_added_tokens(config.get("added_tokens_decoder") or {}),
      add_bos_token=config.get("add_bos_token"),
      add_eos_token=config.get("add_eos_token"),
      chat_templates=_chat_templates(folder, config.get("chat_template")),
      generation_eos_ids=_eos_ids(_read_json(os.path.join(folder, GENERATION_CONFIG)).get("eos_token_id")),
  )


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
  return obj


def _token_content(value: Any, where: str) -> str | None:
  """A special token is written as a string, or as an AddedToken dict {"content": ..., ...}."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  raise ValueError(f"{where}: expected a string or an AddedToken dict with `content`, got {value!r}")


def _added_tokens(decoder: dict[str, Any]) -> tuple[AddedToken, ...]:
  tokens = []
  fields = {f.name for f in dataclasses.fields(AddedToken)} - {"id"}
  for key, value in decoder.items():
    if not isinstance(value, dict) or not isinstance(value.get("content"), str) or not str(key).isdigit():
      raise ValueError(f"{TOKENIZER_CONFIG}: added_tokens_decoder[{key!r}] must map an id to an AddedToken dict, "
                       f"got {value!r}")
    tokens.append(AddedToken(id=int(key), **{k: v for k, v in value.items() if k in fields}))
  return tuple(sorted(tokens, key=lambda t: t.id))


def _chat_templates(folder: str, from_config: Any) -> dict[str, str]:
  """Named templates; a chat_template.jinja file or additional_chat_templates/ override the config's."""
  files = {}
  if os.path.isfile(path := os.path.join(folder, CHAT_TEMPLATE_FILE)):
    files["default"] = _read_text(path)
  if os.path.isdir(extra := os.path.join(folder, CHAT_TEMPLATE_DIR)):
    for name in sorted(os.listdir(extra)):
      if name.endswith(".jinja"):
        files[name[:-len(".jinja")]] = _read_text(os.path.join(extra, name))
  if files:
    return files
  if from_config is None:
    return {}
  if isinstance(from_config, str):
    return {"default": from_config}
  if isinstance(from_config, list) and all(isinstance(t, dict) and {"name", "template"} <= set(t) for t in from_config):
    return {t["name"]: t["template"] for t in from_config}
  raise ValueError(f"{TOKENIZER_CONFIG}: chat_template must be a string or a list of {{name, template}} dicts, "
                   f"got {type(from_config).__name__}")


def _read_text(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _eos_ids(value: Any) -> tuple[int, ...]:
  if value is None:
    return ()
  ids = value if isinstance(value, list) else [value]
  if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
    raise ValueError(f"{GENERATION_CONFIG}: eos_token_id must be an int or a list of ints, got {value!r}")
  return tuple(ids)
