"""On-policy distillation vs GRPO from the same start, on the demo's task: prints one row per seed and student.

  python scripts/bench_distill.py --root=/tmp/bench_distill --seeds=0,1,2 [--small] [--reuse_demo]

Per seed: `python -m jaxpost.demo` (base -> SFT -> GRPO; its GRPO stage is the GRPO row and its GRPO model is
the teacher), then configs/demo.py:distill from the same SFT checkpoint, the same prompts, steps and schedule.
Both are scored as the demo scores (greedy, the demo's held-out problems). `--small` adds a second student: a
quarter-size model (d_model 64) from random weights, distilled for the same steps (no SFT start: GRPO from
random weights has no reward to learn from on this task, as the base model's 0-7% chat accuracy shows).
Wall times are each stage's whole run (compiles, sampling, updates, the final evaluation) on this machine.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time


def _demo(root: str, seed: int, reuse: bool) -> dict:
  """The demo's SFT and GRPO accuracies and its GRPO stage's time; with `reuse`, from the log an earlier run of
  this script kept beside the demo's workdir."""
  log = root.rstrip("/") + ".demo.log"
  if not (reuse and os.path.exists(log)):
    out = subprocess.run([sys.executable, "-m", "jaxpost.demo", f"--workdir={root}", f"--seed={seed}"],
                         capture_output=True, text=True, check=True).stdout
    with open(log, "w") as f:
      f.write(out)
  with open(log) as f:
    out = f.read()
  sft_t = float(re.search(r"sft accuracy .*\[(\d+)s\]", out).group(1))
  grpo_t = float(re.search(r"grpo accuracy .*\[(\d+)s\]", out).group(1))
  acc = dict(re.findall(r"(\w+)=([\d.]+)", out.strip().splitlines()[-1]))
  return {"sft": float(acc["sft"]), "grpo": float(acc["grpo"]), "grpo_s": grpo_t - sft_t}


def _distill(root: str, seed: int, small: bool) -> tuple[float, float]:
  """(accuracy %, wall s) of configs/demo.py:distill from the demo's SFT model (or, small, a fresh quarter-size
  student) with its GRPO model as the teacher."""
  from jaxpost import demo, mesh as mesh_lib, tokenizers
  from jaxpost.loops import online
  from jaxpost.tasks import arithmetic
  start = time.perf_counter()
  c = demo.load_config("distill")
  c.train.seed = seed
  c.data.train_path = os.path.join(root, "data", "prompts.jsonl")
  c.data.eval_path = os.path.join(root, "data", "eval_prompts.jsonl")
  c.distill.teacher = os.path.join(root, "grpo")
  name = "distill_small" if small else "distill"
  if small:
    c.model.d_model, c.model.num_heads, c.model.num_kv_heads, c.model.mlp_dim = 64, 2, 2, 192
  else:
    c.model.init_checkpoint = os.path.join(root, "sft")
  online.run(c, os.path.join(root, name))
  pairs = arithmetic.held_out_pairs(500, seed=seed + 2)  # The demo's held-out problems (jaxpost/demo.py).
  problems = [(arithmetic.question(a, b), a + b) for a, b in pairs]
  tokenizer = tokenizers.load(c.tokenizer.path)
  acc, _, _ = demo.evaluate(os.path.join(root, name), c, problems, tokenizer, mesh_lib.make_mesh(c))
  return acc, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="/tmp/bench_distill")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--small", action="store_true")
  parser.add_argument("--reuse_demo", action="store_true", help="keep the demo runs of an earlier call (same root)")
  args = parser.parse_args()
  print("seed  student              start          sft    GRPO acc  GRPO s   distill acc  distill s", flush=True)
  for seed in map(int, args.seeds.split(",")):
    root = os.path.join(args.root, f"seed{seed}")
    d = _demo(root, seed, args.reuse_demo)
    acc, wall = _distill(root, seed, small=False)
    print(f"{seed:>4}  demo size (0.4M)     demo SFT   {d['sft']:>8.1f}  {d['grpo']:>8.1f}  {d['grpo_s']:>6.0f}  "
          f"{acc:>11.1f}  {wall:>9.0f}", flush=True)
    if args.small:
      acc, wall = _distill(root, seed, small=True)
      print(f"{seed:>4}  d_model 64 (0.1M)    random          -         -       -  {acc:>11.1f}  {wall:>9.0f}",
            flush=True)


if __name__ == "__main__":
  main()
