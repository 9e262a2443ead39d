"""Benchmark token log-prob impls: ms for forward and forward+backward, peak device memory.

    python scripts/bench_logprobs.py            # N=8192 D=2048 V=128256 and N=16384 D=4096 V=151936, bf16
    python scripts/bench_logprobs.py --small    # CPU smoke run (Pallas in interpret mode)

Each (shape, impl) runs in a fresh subprocess so peak_bytes_in_use never mixes between impls.
Forward+backward is value_and_grad of sum(logps) w.r.t. hidden and W. 'naive' is the kernel
package's naive entry (the reference's formula, full [N, V] f32 logits, at default matmul precision since
2026-12; before, HIGHEST); 'baseline' is PERF.md's naive (default-precision matmul to f32 logits,
logsumexp, take_along_axis) as the model runs it (jaxpost.logprobs, which now calls that same entry), and
the ratios are against it. Peak memory includes the inputs (and, for fwd+bwd, the grads); the 'inputs'
column gives the bytes live before the first call. A failing variant prints an error row.
"""
import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = [(8192, 2048, 128256), (16384, 4096, 151936)]
SMALL_SHAPES = [(256, 128, 1000)]
IMPLS = ("pallas", "chunked", "naive", "baseline")


def _peak_bytes():
  import jax
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


def _in_use_bytes():
  import jax
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("bytes_in_use")


def _time_ms(fn, args, iters):
  import jax
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return sorted(times)[len(times) // 2]


def child(impl, n, d, v, iters):
  """Measure one impl at one shape; prints a JSON line."""
  import jax
  import jax.numpy as jnp
  from jaxpost.kernels.logprobs import token_logprobs

  interpret = jax.default_backend() == "cpu" and impl == "pallas"
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  h = jax.random.normal(k1, (n, d), jnp.bfloat16)
  w = (jax.random.normal(k2, (d, v), jnp.float32) / d**0.5).astype(jnp.bfloat16)
  y = jax.random.randint(k3, (n,), 0, v)
  jax.block_until_ready((h, w, y))
  inputs = _in_use_bytes()
  if impl == "baseline":  # PERF.md's naive: default-precision matmul to f32 logits, logsumexp, take.
    from jaxpost.logprobs import naive_token_logprobs
    logprobs = naive_token_logprobs
  else:
    logprobs = lambda h, w, y: token_logprobs(h, w, y, impl=impl, interpret=interpret)
  fwd = jax.jit(logprobs)
  loss = lambda h, w, y: jnp.sum(logprobs(h, w, y))
  fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  fwd_ms = _time_ms(fwd, (h, w, y), iters)
  peak_fwd = _peak_bytes()
  fwd_bwd_ms = _time_ms(fwd_bwd, (h, w, y), iters)
  print(json.dumps(dict(impl=impl, fwd_ms=fwd_ms, fwd_bwd_ms=fwd_bwd_ms, peak_fwd=peak_fwd,
                        peak_fwd_bwd=_peak_bytes(), inputs=inputs,
                        device=str(jax.devices()[0].device_kind))))


def _gib(x):
  return "n/a" if x is None else f"{x / 2**30:.2f}G"


def _ratio(x, base):
  return "n/a" if x is None or not base else f"{x / base:.2f}x"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="tiny shapes, CPU smoke run")
  parser.add_argument("--impls", default=",".join(IMPLS))
  parser.add_argument("--iters", type=int, default=None)
  parser.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
  parser.add_argument("--child", nargs=4, metavar=("IMPL", "N", "D", "V"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  iters = args.iters or (2 if args.small else 10)
  if args.child:
    impl, n, d, v = args.child
    return child(impl, int(n), int(d), int(v), iters)

  env = dict(os.environ)
  if args.small:
    env.setdefault("JAX_PLATFORMS", "cpu")
  print(f"{'N':>6} {'D':>5} {'V':>7} {'impl':>8} {'fwd ms':>16} {'fwd+bwd ms':>16} "
        f"{'peak fwd':>15} {'peak fwd+bwd':>15} {'inputs':>7}  device")
  for n, d, v in SMALL_SHAPES if args.small else SHAPES:
    results = {}
    for impl in args.impls.split(","):
      cmd = [sys.executable, __file__, "--child", impl, str(n), str(d), str(v), "--iters", str(iters)]
      try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        if proc.returncode or not lines:
          lines = proc.stderr.strip().splitlines() or ["no output"]
          err = next((l for l in reversed(lines) if "Error" in l), lines[-1])
          raise RuntimeError(f"rc={proc.returncode}: {err[:160]}")
        r = results[impl] = json.loads(lines[-1])
      except Exception as e:  # an error row, then the next variant
        print(f"{n:>6} {d:>5} {v:>7} {impl:>8}  ERROR {type(e).__name__}: {e}", flush=True)
        continue
      print(f"{n:>6} {d:>5} {v:>7} {impl:>8} {r['fwd_ms']:>16.2f} {r['fwd_bwd_ms']:>16.2f} "
            f"{_gib(r['peak_fwd']):>15} {_gib(r['peak_fwd_bwd']):>15} {_gib(r['inputs']):>7}  "
            f"{r['device']}", flush=True)
    base_name = "baseline" if "baseline" in results else "naive"
    base = results.get(base_name)
    for impl, r in results.items():
      if base and impl != base_name:
        ratios = " ".join(f"{k} {_ratio(r[k], base[k])}"
                          for k in ("fwd_ms", "fwd_bwd_ms", "peak_fwd", "peak_fwd_bwd"))
        print(f"{'':>12} {impl:>8} / {base_name} (lower is better): {ratios}", flush=True)

if __name__ == "__main__":
  main()
