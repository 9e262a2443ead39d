"""scripts/bench_rl.py end to end on a tiny model (timings not asserted)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_rl_small_runs_a_full_iteration():
  # One CPU device, and cheaper XLA:CPU codegen (as test_bench_train.py's run): compiles are most of the
  # run's time, and only counts and the report's format are asserted.
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
  proc = subprocess.run([sys.executable, "scripts/bench_rl.py", "--small", "--iters", "1", "--minibatch", "16"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  # No stop tokens: every one of 4 prompts x 8 samples runs its full 16 tokens -> 512 sampled tokens.
  assert re.search(r"sampled_tokens=512 ", proc.stdout), proc.stdout
  assert "2 updates of 16 rows" in proc.stdout, proc.stdout  # 4 x 8 rollout rows in minibatches of 16
  assert re.search(r"rollout_s=\d+\.\d+ train_s=\d+\.\d+", proc.stdout)
  assert re.search(r"rollout_x_roofline=\d+\.\d+$", proc.stdout.strip()), proc.stdout
