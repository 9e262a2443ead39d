#!/usr/bin/env bash
# Re-resolves requirements/lock.txt from setup.py (runtime + test extras): `make lock`.
#
# One universal lock (uv pip compile --universal) for every Python >= 3.11 and platform, with the fewest
# versions of each package across them (--fork-strategy fewest: the same jax on 3.11 and 3.13). torch's
# CUDA libraries are left out: the tests use torch's CPU wheel, whose requirements are a subset.
# After refreshing: rm -rf .venv && make test, and commit the lock with the versions that moved.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-requirements/lock.txt}"
UV_VERSION=0.13.9
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q "uv==$UV_VERSION"
# Resolve once without exclusions to learn the names of torch's CUDA packages, then emit without them.
"$tools/venv/bin/uv" pip compile setup.py --extra test --universal --python-version 3.11 --fork-strategy fewest \
  --quiet --no-header -o "$tools/full.txt"
exclude=()
for name in $(grep -oE '^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==' "$tools/full.txt" | tr -d '='); do
  exclude+=(--no-emit-package "$name")
done
"$tools/venv/bin/uv" pip compile setup.py --extra test --universal --python-version 3.11 --fork-strategy fewest \
  --quiet --custom-compile-command "make lock" "${exclude[@]}" -o "$out"
echo "wrote $out: $(grep -c '^[a-zA-Z]' "$out") pinned packages"
