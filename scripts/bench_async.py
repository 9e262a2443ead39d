"""Benchmark asynchronous rollouts (rl.max_staleness) against the synchronous loop, where host reward time
is a large part of a step.

    python scripts/bench_async.py                      # code sandbox reward, k = 0 vs 1, 30 steps each
    python scripts/bench_async.py --reward=judge --judge_ms=20   # a remote-judge stand-in: waits 20 ms a row
    python scripts/bench_async.py --staleness=0,1,2 --rollout_devices=0,2   # (rollout devices need several)

Each setting is one `python -m jaxpost.train --config=configs/grpo_tiny.py` run (its own process, eval off,
one checkpoint at the end) on prompts whose records carry `tests`, so `--reward=code` runs every completion
in the sandbox (jaxpost/rewards/code.py: a subprocess per row, namespaces where the OS allows). Prints per
setting: the median step time after `--warmup` steps (synchronous: rollout + train; asynchronous: the
trainer's wait for a batch + train), the host scoring share of a synchronous step, the run's wall time,
mean staleness and final reward, and the ratio to k = 0. Learning is not what this measures.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def judge(completion: str, example: dict) -> float:
  """A stand-in for a reward served elsewhere (an LLM judge, a remote sandbox): the host waits, idle,
  BENCH_JUDGE_MS per row (rows are scored on a few threads at once, see rewards/registry.py)."""
  time.sleep(float(os.environ.get("BENCH_JUDGE_MS", "40")) / 1000)
  return float(completion[:1].isdigit())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reward", default="code", choices=("code", "judge"))
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median (compiles)")
  parser.add_argument("--staleness", default="0,1", help="comma-separated rl.max_staleness values")
  parser.add_argument("--rollout_devices", default="0", help="comma-separated rl.rollout_devices values")
  parser.add_argument("--devices", type=int, default=0, help="JAX_NUM_CPU_DEVICES (0 = the default)")
  parser.add_argument("--judge_ms", type=float, default=40.0, help="--reward=judge: milliseconds of waiting a row")
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="bench_async_")
  prompts = os.path.join(work, "prompts.jsonl")
  with open(os.path.join(ROOT, "assets", "arithmetic", "prompts_train.jsonl")) as f, open(prompts, "w") as out:
    for line in f:  # The completion is the program: "12" then the test runs and passes; garbage fails.
      out.write(json.dumps({**json.loads(line), "tests": "assert True"}) + "\n")
  reward = "code" if args.reward == "code" else "bench_async:judge"
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "scripts"), os.environ.get("PYTHONPATH", "")])}
  env["BENCH_JUDGE_MS"] = str(args.judge_ms)
  if args.devices:
    env["JAX_NUM_CPU_DEVICES"] = str(args.devices)
  base = None
  for n in map(int, args.rollout_devices.split(",")):
    for k in map(int, args.staleness.split(",")):
      workdir = os.path.join(work, f"k{k}_n{n}")
      start = time.perf_counter()
      proc = subprocess.run(
          [sys.executable, "-m", "jaxpost.train", "--config=configs/grpo_tiny.py", f"--workdir={workdir}",
           f"--config.data.train_path={prompts}", "--config.data.eval_path=", f"--config.rl.reward_fns={reward}",
           f"--config.train.steps={args.steps}", "--config.train.log_every=1", "--config.train.checkpoint_every=0",
           "--config.train.progress=False", f"--config.rl.max_staleness={k}", f"--config.rl.rollout_devices={n}"],
          cwd=ROOT, env=env, capture_output=True, text=True)
      wall = time.perf_counter() - start
      if proc.returncode:
        print(f"k={k} rollout_devices={n}: failed\n{proc.stderr[-3000:]}", flush=True)
        continue
      records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
      steady = records[args.warmup:]
      asynchronous = "rollout_wait_time" in records[0]
      step = [r["train_time"] + (r["rollout_wait_time"] if asynchronous else r["rollout_time"]) for r in steady]
      median = float(np.median(step))
      base = base or median
      line = (f"reward={args.reward}{f' judge_ms={args.judge_ms:g}' if args.reward == 'judge' else ''} k={k} rollout_devices={n}: step_s={median:.3f} ({median / base:.2f}x k=0) "
              f"rollout_s={np.median([r['rollout_time'] for r in steady]):.3f} "
              f"score_s={np.median([r['score_time'] for r in steady]):.3f} "
              f"train_s={np.median([r['train_time'] for r in steady]):.3f} wall_s={wall:.1f} "
              f"reward={np.mean([r['reward/mean'] for r in records[-5:]]):.3f}")
      if asynchronous:
        line += f" staleness={np.mean([r['staleness/mean'] for r in steady]):.2f}"
      print(line, flush=True)


if __name__ == "__main__":
  main()
