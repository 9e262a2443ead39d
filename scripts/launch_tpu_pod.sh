#!/usr/bin/env bash
# Run `python -m jaxpost.train ...` on every host of a Cloud TPU VM slice (a v5e-8 or a v5p-64 pod alike).
#
#   scripts/launch_tpu_pod.sh --tpu=my-pod --zone=us-east5-a --accelerator=v5p-64 [--project=P] \
#       [--create [--spot] [--runtime=VERSION]] [--dry-run] -- \
#       --config=configs/grpo_gsm8k.py --workdir=/mnt/shared/runs/grpo
#
# Steps (each one a gcloud command; --dry-run prints them all instead of running them):
#   1. --create: request the slice as a queued resource (--spot: spot capacity) and wait until ACTIVE;
#   2. copy this checkout (without .git, .venv, runs/) to ~/jaxpost on all workers and pip-install it
#      with the `tpu` extra (--skip-install: only copy);
#   3. start the same command on all workers, detached (nohup), output in ~/jaxpost/train.log; each
#      process finds its peers with `jax.distributed.initialize()` (--distributed=on);
#   4. stream worker 0's log (Ctrl-C stops the streaming only; training goes on).
# Other actions: --stop sends SIGTERM to the trainer on all workers (it checkpoints the current step and
# exits 143; launching again resumes), --logs only streams worker 0's log, --delete deletes the slice.
#
# The workdir must be shared by all workers (a gcsfuse-mounted bucket or Filestore at the same path):
# every process writes its shards of each checkpoint there. Metrics and TensorBoard come from process 0.
set -euo pipefail

TPU="" ZONE="" ACCEL="" PROJECT="" RUNTIME="" CREATE=0 SPOT=0 DRY=0 ACTION=run INSTALL=1
REMOTE_DIR='~/jaxpost'
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRAIN_ARGS=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "launch_tpu_pod.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --runtime=*) RUNTIME="${1#*=}" ;;
    --create) CREATE=1 ;;
    --spot) SPOT=1 ;;
    --skip-install) INSTALL=0 ;;
    --dry-run) DRY=1 ;;
    --stop) ACTION=stop ;;
    --logs) ACTION=logs ;;
    --delete) ACTION=delete ;;
    -h|--help) usage 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[[ -n "$TPU" ]] || die "--tpu=NAME is required"
[[ -n "$ZONE" ]] || die "--zone=ZONE is required"

# v5e-N is what people say; gcloud calls it v5litepod-N.
ACCEL="${ACCEL/#v5e-/v5litepod-}"
if [[ -z "$RUNTIME" && -n "$ACCEL" ]]; then
  case "$ACCEL" in
    v5litepod-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    v4-*|v3-*|v2-*) RUNTIME=tpu-ubuntu2204-base ;;
    *) die "no default runtime for --accelerator=$ACCEL; pass --runtime=VERSION" ;;
  esac
fi

# Hosts in the slice, for the log only (gcloud's --worker=all needs no count). Names count TensorCores
# for v2-v5p (2 per chip, 4 chips a host; 8 cores a host for v2/v3) and chips for v5e/v6e (4 a host, or
# one host up to 8).
hosts() {
  local n="${ACCEL##*-}"
  case "$ACCEL" in
    v5litepod-*|v6e-*) ((n <= 8)) && echo 1 || echo $((n / 4)) ;;
    v4-*|v5p-*) echo $(((n + 7) / 8)) ;;
    v2-*|v3-*) echo $(((n + 7) / 8)) ;;
    *) echo "?" ;;
  esac
}

# One word per argument, quoted only when the shell needs it, so printed commands can be pasted back.
quote() {
  if [[ "$1" =~ ^[][A-Za-z0-9_./:=,@%+~-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
quote_all() { local out="" a; for a in "$@"; do out+="${out:+ }$(quote "$a")"; done; printf '%s' "$out"; }
run() { if ((DRY)); then echo "$(quote_all "$@")"; else "$@"; fi; }

GC=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && GC+=(--project="$PROJECT")
ssh_all() { run gcloud compute tpus tpu-vm ssh "$TPU" "${GC[@]}" --worker=all --command="$1"; }
LOG="$REMOTE_DIR/train.log"
stream_log() { run gcloud compute tpus tpu-vm ssh "$TPU" "${GC[@]}" --worker=0 --command="tail -n +1 -F $LOG"; }

case "$ACTION" in
  stop) ssh_all "kill -TERM \$(cat $REMOTE_DIR/train.pid) 2>/dev/null || true"; exit 0 ;;
  logs) stream_log; exit 0 ;;
  delete)
    run gcloud compute tpus queued-resources delete "$TPU" "${GC[@]}" --force --quiet; exit 0 ;;
esac
((${#TRAIN_ARGS[@]})) || die "nothing to run: pass the train arguments after --, e.g. -- --config=configs/sft_tiny.py --workdir=DIR"

if ((CREATE)); then
  [[ -n "$ACCEL" ]] || die "--create needs --accelerator=TYPE"
  echo "# creating $TPU: $ACCEL ($(hosts) host(s)), runtime $RUNTIME$( ((SPOT)) && echo ', spot')" >&2
  create=(gcloud compute tpus queued-resources create "$TPU" "${GC[@]}" --node-id="$TPU"
          --accelerator-type="$ACCEL" --runtime-version="$RUNTIME")
  ((SPOT)) && create+=(--spot)
  run "${create[@]}"
  describe=(gcloud compute tpus queued-resources describe "$TPU" "${GC[@]}" --format='value(state.state)')
  if ((DRY)); then
    echo "# then poll until ACTIVE:" >&2
    run "${describe[@]}"
  else
    until [[ "$("${describe[@]}")" == ACTIVE ]]; do echo "# waiting for $TPU to be ACTIVE" >&2; sleep 30; done
  fi
elif [[ -n "$ACCEL" ]]; then
  echo "# $TPU: $ACCEL ($(hosts) host(s))" >&2
fi

# Copy this checkout to every worker (the same code everywhere), then install it.
ARCHIVE="${TMPDIR:-/tmp}/jaxpost-$TPU.tar.gz"
run tar -czf "$ARCHIVE" -C "$REPO" --exclude=.git --exclude=.venv --exclude=runs --exclude='*.egg-info' \
  --exclude=__pycache__ .
run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU:jaxpost.tar.gz" "${GC[@]}" --worker=all
# Unpacked over the previous copy (never deleted: a relative --workdir may live there).
setup="mkdir -p $REMOTE_DIR && tar -xzf ~/jaxpost.tar.gz -C $REMOTE_DIR"
((INSTALL)) && setup+=" && cd $REMOTE_DIR && python3 -m pip install -q -U pip && python3 -m pip install -q -e .[tpu]"
ssh_all "$setup"

# The same command on every worker; detached, so a dropped ssh session does not stop the run.
train="cd $REMOTE_DIR && nohup python3 -m jaxpost.train --distributed=on $(quote_all "${TRAIN_ARGS[@]}")"
train+=" > $LOG 2>&1 < /dev/null & echo \$! > $REMOTE_DIR/train.pid"
ssh_all "$train"
stream_log
