"""The configs and assets that ship with jaxpost, found the same way in a checkout and once installed.

In a checkout they are the repository's top-level `configs/` and `assets/` folders; setup.py installs them as
package data, `jaxpost/configs` and `jaxpost/assets`, keeping the same relative layout (a config finds its
assets at `../assets` from its own file either way). So the documented commands work from any folder after a
plain `pip install`: `--config=configs/sft_tiny.py` names the bundled config when no such file exists
relative to the current directory (a user's own file of that path always wins).
"""
from __future__ import annotations

import os

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def root() -> str:
  """The folder that holds `configs/` and `assets/`: the package itself when installed, else the checkout."""
  return _PACKAGE if os.path.isdir(os.path.join(_PACKAGE, "configs")) else os.path.dirname(_PACKAGE)


def config_path(name: str) -> str:
  """Path of the bundled config file `name` (e.g. "demo.py")."""
  return os.path.join(root(), "configs", name)


def resolve_config_spec(spec: str) -> str:
  """`configs/NAME.py[:ARG]` -> the bundled file when `configs/NAME.py` is not a file here; else unchanged.

  Only a path spelt `configs/NAME.py` (the README's form) falls back, and only to a config that ships, so a
  typo still reaches absl's own "file not found" error with the path the user gave.
  """
  path, sep, arg = spec.partition(":")
  if os.path.exists(path):
    return spec
  head, name = os.path.split(os.path.normpath(path))
  if head == "configs" and os.path.isfile(config_path(name)):
    return config_path(name) + sep + arg
  return spec


def resolve_config_flag(argv: list[str]) -> list[str]:
  """argv with a `--config=configs/NAME.py[:ARG]` (or `--config configs/...`) resolved by resolve_config_spec.

  Raises FileNotFoundError (one line, naming the flag) when the file is neither here nor bundled, instead of
  ml_collections' traceback at the first read of the config.
  """
  out = list(argv)
  for i, arg in enumerate(out):
    at = i if arg.startswith("--config=") else i + 1 if arg == "--config" and i + 1 < len(out) else None
    if at is None:
      continue
    given = out[at][len("--config="):] if at == i else out[at]
    spec = resolve_config_spec(given)
    if not os.path.isfile(spec.partition(":")[0]):
      raise FileNotFoundError(f"--config={given}: {spec.partition(':')[0]} is not a file (bundled configs: "
                              f"{', '.join(sorted(f for f in os.listdir(os.path.join(root(), 'configs')) if f.endswith('.py')))})")
    out[at] = "--config=" + spec if at == i else spec
  return out
