"""JSONL sources whose every error names the file and line."""
from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import Any


class DataError(ValueError):
  """A problem in the training data; the message starts with `path:line:` where one applies."""


def split_paths(spec: str) -> list[str]:
  """`config.data.*_path`: comma-separated files or globs -> list."""
  return [p.strip() for p in spec.split(",") if p.strip()]


def expand_paths(pattern: str | list[str]) -> list[str]:
  """Expands one or more glob patterns (each sorted, in the given order); DataError if one matches nothing."""
  patterns = [pattern] if isinstance(pattern, str) else list(pattern)
  if not patterns:
    raise DataError("no data files given (empty list of paths)")
  paths = []
  for p in patterns:
    matches = sorted(glob.glob(os.path.expanduser(p)))
    if not matches:
      raise DataError(f"no file matches {p!r}")
    paths.extend(matches)
  return paths


def read_jsonl(pattern: str | list[str]) -> Iterator[tuple[str, int, Any]]:
  """Yields `(path, line, obj)` for each non-blank line of each matched file; `line` is 1-based.

  Raises:
    DataError: a pattern matches no file, or `"{path}:{line}: invalid JSON: ..."`.
  """
  for path in expand_paths(pattern):
    with open(path, "rb") as f:  # Bytes: a line that is not UTF-8 is an error naming its line, not a traceback.
      for line_no, raw in enumerate(f, start=1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise DataError(f"{path}:{line_no}: not UTF-8 text: byte {raw[e.start]:#04x} at column {e.start + 1}"
                          ) from None
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{path}:{line_no}: invalid JSON: {e}") from None
        yield path, line_no, obj
