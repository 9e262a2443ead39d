"""Compiled temp memory of the teacher-student divergence: naive ([N, V] logits) vs chunked, forward+backward.

    python scripts/bench_divergence.py                 # N=T=8192 D=2048 V=128256 and N=2048 D=1024 V=32000, bf16
    python scripts/bench_divergence.py --block_v=8192  # another chunk width

Nothing runs: each program is value_and_grad w.r.t. (h_s, w_s) of sum(loss), lowered on ShapeDtypeStruct
inputs and compiled for the default backend, and the numbers are its memory_analysis(): temp = scratch XLA
allocates beyond the arguments (h_s, w_s, h_t, w_t) and outputs (loss, dh_s, dw_s). beta = 0 takes one
chunked forward pass, 0 < beta < 1 two (see kernels/divergence/chunked.py). On CPU these are XLA:CPU's
buffer assignment, a GPU / TPU compile gives that backend's. XLA:CPU runs bf16 dots in f32 and hoists the
convert of each whole W out of the chunk loop, so on CPU the chunked temp holds f32 copies of w_s and w_t
(2 * 4 D V bytes: 1.96 GiB at D = 2048, V = 128256) beside its [N, block_v] tiles; the W-f32 column shows it.
"""
import argparse
import time

import jax
import jax.numpy as jnp

from jaxpost.kernels.divergence import DEFAULT_BLOCK_V, token_divergence

SHAPES = [(8192, 2048, 128256), (2048, 1024, 32000)]  # (N = T tokens, D_s = D_t, V)
BETAS = (0.0, 0.5)
IMPLS = ("naive", "chunked")


def memory(impl, n, d, v, beta, block_v, dtype=jnp.bfloat16):
  """memory_analysis() of the compiled fwd+bwd, and the compile seconds."""
  loss = lambda *xs: jnp.sum(token_divergence(*xs, beta=beta, impl=impl, block_v=block_v))
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  args = [jax.ShapeDtypeStruct(s, dtype) for s in ((n, d), (d, v), (n, d), (d, v))]
  t0 = time.perf_counter()
  analysis = fn.lower(*args).compile().memory_analysis()
  return analysis, time.perf_counter() - t0


def _gib(x):
  return f"{x / 2**30:.3f}G"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--block_v", type=int, default=DEFAULT_BLOCK_V)
  args = parser.parse_args()
  print(f"backend {jax.default_backend()}, block_v {args.block_v}, bf16 inputs; [N, V] f32 = 4 N V bytes")
  print(f"{'N':>6} {'D':>5} {'V':>7} {'beta':>5} {'impl':>8} {'temp':>10} {'args':>9} {'outputs':>9} "
        f"{'[N,V] f32':>10} {'W-f32':>8} {'compile s':>10}")
  for n, d, v in SHAPES:
    for beta in BETAS:
      temps = {}
      for impl in IMPLS:
        m, seconds = memory(impl, n, d, v, beta, args.block_v)
        temps[impl] = m.temp_size_in_bytes
        print(f"{n:>6} {d:>5} {v:>7} {beta:>5} {impl:>8} {_gib(m.temp_size_in_bytes):>10} "
              f"{_gib(m.argument_size_in_bytes):>9} {_gib(m.output_size_in_bytes):>9} {_gib(4 * n * v):>10} "
              f"{_gib(2 * 4 * d * v):>8} {seconds:>10.1f}", flush=True)
      print(f"{'':>27} chunked / naive temp: {temps['chunked'] / temps['naive']:.4f}", flush=True)


if __name__ == "__main__":
  main()
