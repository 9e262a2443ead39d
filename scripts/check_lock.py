"""Checks that this Python environment holds exactly the lock: every pinned distribution whose marker
applies at its pinned version, and nothing else but jaxpost and pip.

  python scripts/check_lock.py requirements/lock.txt

A local version label is allowed on top of the pin (torch==2.13.0 is satisfied by the CPU wheel
2.13.0+cpu). Exit status 1 with one line per difference; `make install` runs it after installing.
"""
from __future__ import annotations

import importlib.metadata
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ALLOWED_EXTRA = {"jaxpost", "pip"}


def read_lock(path: str) -> dict[str, str]:
  """{canonical name: pinned version} of the lock's entries whose environment marker holds here."""
  pins = {}
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      line = line.split("#", 1)[0].strip()
      if not line:
        continue
      req = Requirement(line)
      spec = list(req.specifier)
      if len(spec) != 1 or spec[0].operator != "==":
        raise SystemExit(f"{path}:{lineno}: {line!r} is not an exact pin (name==version)")
      if req.marker is None or req.marker.evaluate():
        pins[canonicalize_name(req.name)] = spec[0].version
  return pins


def differences(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
  """One line per missing, mismatched or unlocked distribution."""
  out = []
  for name, version in sorted(pins.items()):
    if name not in installed:
      out.append(f"missing: {name}=={version}")
    elif Version(installed[name]).public != Version(version).public:
      out.append(f"version: {name} is {installed[name]}, the lock says {version}")
  out += [f"not in the lock: {name}=={v}" for name, v in sorted(installed.items())
          if name not in pins and name not in ALLOWED_EXTRA]
  return out


def main(path: str) -> int:
  installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
  problems = differences(read_lock(path), installed)
  for line in problems:
    print(f"{path}: {line}", file=sys.stderr)
  if not problems:
    print(f"{path}: the environment matches the lock ({len(installed)} distributions)")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "requirements/lock.txt"))
