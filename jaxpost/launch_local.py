"""Run N JAX processes on this machine, as N hosts would: multi-host development and tests on one box.

  python -m jaxpost.launch_local --num_processes=2 --devices_per_process=4 -- \\
      --config=configs/sft_tiny.py:sharded --workdir=/tmp/sft_2proc

Everything after `--` goes to `python -m jaxpost.train` (or `--module`). Process i gets
JAXPOST_COORDINATOR_ADDRESS=localhost:PORT, JAXPOST_NUM_PROCESSES=N, JAXPOST_PROCESS_ID=i (read by
`jaxpost.distributed`) and, on CPU, JAX_NUM_CPU_DEVICES=devices_per_process; cross-process collectives
then run over gloo. Output lines are prefixed `[pI]`. The first process to fail stops the others
(SIGTERM, then SIGKILL after --grace_s) and its exit status is the launcher's; a SIGTERM or Ctrl-C to the
launcher is passed on to every process, so they all stop after the same step and checkpoint.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

# gloo prints one line per peer connection; nothing a user needs.
_NOISE = ("[Gloo] Rank ",)
# Exit statuses of a process that saved a checkpoint and stopped on SIGTERM / SIGINT (jaxpost.preemption).
PREEMPTED = (143, 130)


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(base: dict, *, process_id: int, num_processes: int, port: int, devices_per_process: int,
                platform: str) -> dict:
  """The environment of process `process_id`: coordinator settings plus its share of CPU devices."""
  env = dict(base)
  env.update(JAXPOST_COORDINATOR_ADDRESS=f"localhost:{port}", JAXPOST_NUM_PROCESSES=str(num_processes),
             JAXPOST_PROCESS_ID=str(process_id), PYTHONUNBUFFERED="1")
  if platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUM_CPU_DEVICES"] = str(devices_per_process)
    # An inherited --xla_force_host_platform_device_count (e.g. the test suite's 8) would override it.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
  else:  # Process i gets GPUs (or TPU chips) i*d .. i*d+d-1; jax.distributed.initialize reads this.
    first = process_id * devices_per_process
    env["JAX_LOCAL_DEVICE_IDS"] = ",".join(str(first + d) for d in range(devices_per_process))
  return env


def _stream(proc: subprocess.Popen, prefix: str, lock: threading.Lock) -> None:
  for line in proc.stdout:
    if line.startswith(_NOISE):
      continue
    with lock:
      sys.stdout.write(prefix + line)
      sys.stdout.flush()


def launch(args: list[str], *, num_processes: int, devices_per_process: int = 1, module: str = "jaxpost.train",
           platform: str = "cpu", port: int = 0, grace_s: float = 30.0, cwd: str | None = None) -> int:
  """Starts the processes, streams their output and returns the run's exit status (0 if all succeed)."""
  if num_processes < 1:
    raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
  port = port or free_port()
  lock = threading.Lock()
  procs, threads = [], []
  for i in range(num_processes):
    env = process_env(os.environ, process_id=i, num_processes=num_processes, port=port,
                      devices_per_process=devices_per_process, platform=platform)
    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    procs.append(proc)
    threads.append(threading.Thread(target=_stream, args=(proc, f"[p{i}] ", lock), daemon=True))
    threads[-1].start()

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    status = _wait(procs, grace_s)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    for t in threads:
      t.join(timeout=5)
  return status


def _wait(procs: list[subprocess.Popen], grace_s: float) -> int:
  """Polls until all exit; on the first non-zero status, stops the rest and returns that status."""
  while True:
    codes = [p.poll() for p in procs]
    failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
    if failed:
      i, code = failed[0]
      running = [p for p in procs if p.poll() is None]
      if code in PREEMPTED:  # The others agreed to stop at the same step: let them finish their save.
        _wait_for(running, grace_s)
        running = [p for p in procs if p.poll() is None]
      if running:
        print(f"launch_local: process {i} exited with {code}; stopping the others", file=sys.stderr, flush=True)
      _stop(running, grace_s)
      return 128 - code if code < 0 else code  # Killed by signal N: report it as a shell would (128 + N).
    if all(c == 0 for c in codes):
      return 0
    time.sleep(0.1)


def _wait_for(procs: list[subprocess.Popen], timeout_s: float) -> None:
  deadline = time.monotonic() + timeout_s
  for p in procs:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      pass


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
  for p in procs:
    p.send_signal(signal.SIGTERM)
  _wait_for(procs, grace_s)
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
  parser = argparse.ArgumentParser(prog="python -m jaxpost.launch_local", description=__doc__.split("\n\n")[0],
                                   epilog="Arguments after -- are passed to every process.")
  parser.add_argument("--num_processes", type=int, required=True, help="processes to start (simulated hosts)")
  parser.add_argument("--devices_per_process", type=int, default=1, help="devices in each process (on CPU: simulated)")
  parser.add_argument("--module", default="jaxpost.train", help="module run as `python -m MODULE ARGS`")
  parser.add_argument("--platform", default="cpu", choices=("cpu", "gpu", "tpu"),
                      help="cpu: simulated devices; gpu/tpu: process i uses local devices "
                           "i*devices_per_process ... (JAX_LOCAL_DEVICE_IDS)")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--grace_s", type=float, default=30.0, help="seconds between SIGTERM and SIGKILL")
  opts = parser.parse_args(own)
  return launch(rest, num_processes=opts.num_processes, devices_per_process=opts.devices_per_process,
                module=opts.module, platform=opts.platform, port=opts.port, grace_s=opts.grace_s)


if __name__ == "__main__":
  sys.exit(main())
