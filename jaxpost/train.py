"""Entry point: python -m jaxpost.train --config=configs/NAME.py[:ARG] --workdir=DIR [--config.a.b=v ...]

Loads the (locked) config, validates it, and hands it to the loop that `config.algorithm` names.
Bad input ends with one line naming the key or file:line, and exit status 2.
"""
from __future__ import annotations

import difflib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxpost import bundled, distributed  # Defines --distributed, --coordinator_address, --num_processes, --process_id.

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/sft_tiny.py[:ARG].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, tb/.")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _check_override_keys(argv: list[str]) -> None:
  """Names a misspelt `--config.a.b` key (with a suggestion) before absl turns it into a traceback."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return
  try:
    config = config_flags.config_flags._LoadConfigModule("config", spec.split(":", 1)[0])  # noqa: SLF001
    config = config.get_config(*spec.split(":", 1)[1:])
  except Exception:  # Reported (with the file) by absl's own parse below.
    return
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node, walked = config, []
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        known = list(node.keys()) if hasattr(node, "keys") else []
        close = difflib.get_close_matches(part, known, n=1)
        hint = f" (did you mean {'.'.join(walked + close)}?)" if close else ""
        _fail(f"--config.{key}: config.{'.'.join(walked + [part])} does not exist{hint}")
      node, walked = node[part], walked + [part]


def _parse(argv: list[str]) -> list[str]:
  try:
    argv = bundled.resolve_config_flag(argv)
  except FileNotFoundError as e:
    _fail(str(e))
  _check_override_keys(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).strip().splitlines()[-1] if str(e).strip() else repr(e))


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax and XLA are chatty at INFO.
  try:  # Before anything touches a device.
    distributed.initialize_from_flags()
  except distributed.DistributedError as e:
    _fail(str(e))
  import jax
  from jaxpost import config as config_lib
  from jaxpost import preemption
  from jaxpost.algorithms import registry
  from jaxpost.data.jsonl import DataError
  from jaxpost.loops import common, offline, online

  config = _CONFIG.value
  if os.path.exists(_WORKDIR.value) and not os.path.isdir(_WORKDIR.value):
    _fail(f"--workdir={_WORKDIR.value}: is a file, not a directory")
  try:
    config_lib.validate(config, num_devices=jax.device_count())
    loop = {"offline": offline, "online": online}[registry.get(config.algorithm).loop]
    loop.run(config, _WORKDIR.value)
  except (config_lib.ConfigError, DataError, FileNotFoundError, common.NonFiniteLossError) as e:
    _fail(str(e))
  except preemption.Preempted as e:
    print(f"{e}; re-run the same command to resume (exit {e.code})", file=sys.stderr, flush=True)
    raise


def run() -> None:
  def parse(argv):
    argv = _parse(argv)
    if flags.FLAGS.config is None or flags.FLAGS.workdir is None:
      _fail("--config and --workdir are required")
    return argv
  app.run(main, flags_parser=parse)


if __name__ == "__main__":
  run()
