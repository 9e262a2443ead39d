"""A jaxpost wheel built from this checkout and installed into a fresh virtual environment, so that tests can
run jaxpost as a user who ran `pip install <clone>` would: from another folder, with no checkout on sys.path.

The new environment sees this one's dependencies through a .pth file (no second jax install), but not its
jaxpost: that is an editable install whose import hook lives in a .pth file of this environment's
site-packages, and a directory added by a .pth line does not have its own .pth files processed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.py", "jaxpost", "kernels", "configs", "assets")  # What setup.py packages.


def _run(args: list[str], **kwargs) -> str:
  result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
  if result.returncode:
    raise RuntimeError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result.stdout


def install(work: str) -> str:
  """Builds the wheel (from a copy of the sources, so no build/ lands in the checkout), installs it into a
  new venv under `work`, and returns that venv's python."""
  src = os.path.join(work, "src")
  for name in SOURCES:
    path = os.path.join(ROOT, name)
    if os.path.isdir(path):
      shutil.copytree(path, os.path.join(src, name), ignore=shutil.ignore_patterns("__pycache__"))
    else:
      os.makedirs(src, exist_ok=True)
      shutil.copy(path, src)
  dist = os.path.join(work, "dist")
  _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation", "-w", dist,
        src])
  [wheel] = [os.path.join(dist, f) for f in os.listdir(dist) if f.endswith(".whl")]
  venv = os.path.join(work, "venv")
  _run([sys.executable, "-m", "venv", "--without-pip", venv])
  python = os.path.join(venv, "bin", "python")
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
  paths = sysconfig.get_paths()
  with open(os.path.join(site, "_jaxpost_test_dependencies.pth"), "w") as f:
    f.write("\n".join(dict.fromkeys([paths["purelib"], paths["platlib"]])) + "\n")
  _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", site, wheel])
  return python
