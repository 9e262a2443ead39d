#!/usr/bin/env bash
# One prepared GPU session: install jaxpost over the machine's own jax, then run the kernel benchmarks.
# Usage (on a GPU machine with .whl/ filled by ../shared/device/wheels.sh):
#   bash scripts/gpu_bench_all.sh [attention] [logprobs] [train] [generate] [rl] ...  (names: see the case below)
# Owed as of 2026-11-26, in order of value (two calls of <= 600 s; the device budget is 900 s in all):
#   `generate attention_packed` (~450 s), then `train_packed rl` (~510 s); if time runs short, drop
#   attention_packed (train_packed's two variants must show equal losses, which checks the packed path).
#   Owed since 2026-12-07 (issue 21): `generate_heavy` (~300 s; the rollout engine vs static batches on
#   heavy-tailed budgets at 32 and 256 slots) and `rl`, whose last line is now the paged engine.
# Each benchmark has its own time limit and writes its table to ${OUT:-/tmp/jaxpost-bench}/NAME.txt.
# `--profile` runs print a device-time summary (scripts/profile_summary.py); the traces stay in /tmp.
# Budget: on a fresh H100 (2026-11-26) each Python process needed 60-90 s (JAX start-up, 1.24B param
# init, first compiles) before its first line; the limits below leave room for that.
set -uo pipefail
out=${OUT:-/tmp/jaxpost-bench}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-index --no-build-isolation . 2>&1 | tail -2
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$out/device.txt"
run() {  # run NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  echo "== $name (limit ${secs}s): $*"
  timeout "$secs" "$@" 2>&1 | tee "$out/$name.txt" | grep -v "^\s*$"
  echo "== $name exit ${PIPESTATUS[0]}"
}
[ $# -gt 0 ] || set -- attention logprobs
for what in "$@"; do
  case $what in
    attention) run attention 200 python3 scripts/bench_attention.py ;;
    attention_packed) run attention_packed 150 python3 scripts/bench_attention.py --impls cudnn,packed,xla ;;
    logprobs) run logprobs 200 python3 scripts/bench_logprobs.py --timeout 60 ;;
    logprobs_baseline) run logprobs_baseline 110 python3 scripts/bench_logprobs.py --timeout 50 --impls chunked,baseline ;;
    train) run train 200 python3 scripts/bench_train.py --time_budget_s 180 --json "$out/train.jsonl" ;;
    train_packed) run train_packed 250 python3 scripts/bench_train.py --no-hf --cudnn_max_segments 0,2 \
      --profile /tmp/jaxpost-prof/train --time_budget_s 240 --json "$out/train.jsonl" ;;  # equal losses = correct
    train_naive) run train_naive 150 python3 scripts/bench_train.py --no-hf --logprob_impl naive \
      --time_budget_s 140 --json "$out/train.jsonl" ;;
    sweep) run sweep 420 python3 scripts/bench_train.py --no-hf --sweep --time_budget_s 400 --json "$out/train.jsonl" ;;
    generate) run generate 300 python3 scripts/bench_generate.py --batches 1,256 --graphs --hf_batches 1 --iters 2 \
      --profile /tmp/jaxpost-prof/generate ;;  # 2 sampler compiles a batch; add --hlo FILE for the program
    generate_heavy) run generate_heavy 300 python3 scripts/bench_generate.py --heavy_tail --slots 32,256 ;;
    rl) run rl 320 python3 scripts/bench_rl.py --iters 2 --graphs ;;
  esac
done
