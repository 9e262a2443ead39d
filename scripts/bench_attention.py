"""Benchmark jaxpost flash attention (Pallas) against cuDNN and XLA attention; prints one table.

  python scripts/bench_attention.py              # GPU: [4, 4096, 16, 128] causal bf16 and variants
  python scripts/bench_attention.py --small      # CPU smoke run: tiny shapes, Pallas interpret mode

Rows: causal MHA, GQA (32 query heads over 8 KV heads), and causal with 4 packed segments per row
(cuDNN / XLA get the segments as an explicit [B, 1, T, T] mask; `packed` is cuDNN given the rows as runs in its
packed layout instead, `model.cudnn_max_segments` = 4, on CPU its jnp reference). Times are the median of --iters
runs after --warmup runs, each ended by block_until_ready. FLOPs are the nominal causal count,
fwd = 4 * B * H * T * T * D / 2 (H = query heads) and bwd = 2.5 * fwd, also for the segment row
(so its TFLOP/s compare time, not useful work). "x cuDNN" = cuDNN time / this time (> 1: faster).
"err" = max |out - out_xla| of the forward; "grad err" = max over dq, dk, dv of max |g - g_xla| / max |g_xla|.
A variant that fails prints an ERROR row.
"""
import argparse
import statistics
import time
import traceback

import jax
import jax.numpy as jnp

from jaxpost.kernels.attention import BlockSizes, flash_attention


def _configs(small):
  B, T, D = (1, 256, 64) if small else (4, 4096, 128)
  heads = (4, 4) if small else (16, 16)
  gqa = (8, 2) if small else (32, 8)
  return [  # name, B, T, Nq, Nkv, D, segments per row
      ("causal", B, T, *heads, D, 1),
      (f"gqa {gqa[0]}/{gqa[1]}", B, T, *gqa, D, 1),
      ("4 segments", B, T, *heads, D, 4),
  ]


def _impl(name, segments, q_shape, args):
  """Returns attention(q, k, v) -> [B, T, Nq, D] for one implementation."""
  if name == "jaxpost":
    blocks = BlockSizes(64, 64) if args.small else None
    return lambda q, k, v: flash_attention(q, k, v, q_segment_ids=segments, causal=True,
                                           block_sizes=blocks, interpret=args.small)
  if name == "packed":  # cuDNN on packed runs (jaxpost.models.packed_attention), no mask
    from jaxpost.models.attention import dot_product_attention
    seg = jnp.ones(q_shape[:2], jnp.int32) if segments is None else segments
    return lambda q, k, v: dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True,
                                                 cudnn_max_segments=4)
  mask = None if segments is None else (segments[:, :, None] == segments[:, None, :])[:, None]
  return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                                      implementation=name)


def _median_ms(fn, *xs, warmup, iters):
  for _ in range(warmup):
    jax.block_until_ready(fn(*xs))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*xs))
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def _measure(attn, q, k, v, do, args):
  """(fwd ms, fwd+bwd ms, forward output, (dq, dk, dv))."""
  fwd = jax.jit(attn)

  @jax.jit
  def fwd_bwd(q, k, v):
    out, vjp = jax.vjp(attn, q, k, v)
    return out, vjp(do)

  fwd_ms = _median_ms(fwd, q, k, v, warmup=args.warmup, iters=args.iters)
  both_ms = _median_ms(fwd_bwd, q, k, v, warmup=args.warmup, iters=args.iters)
  return fwd_ms, both_ms, fwd(q, k, v), fwd_bwd(q, k, v)[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="tiny shapes + interpret mode (CPU)")
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--impls", default="jaxpost,cudnn,packed,xla")
  parser.add_argument("--configs", default=None, help="comma-separated row names to run (default: all), e.g. causal")
  args = parser.parse_args()
  if args.small:
    args.iters, args.warmup = min(args.iters, 3), 1
  impls = args.impls.split(",")
  print(f"jax {jax.__version__}, device: {jax.devices()[0].device_kind}, dtype bf16, causal")
  header = (f"{'config':<12} {'impl':<8} {'fwd ms':>9} {'TFLOP/s':>8} {'f+b ms':>9} {'TFLOP/s':>8} "
            f"{'fwd x cuDNN':>11} {'f+b x cuDNN':>11} {'err':>8} {'grad err':>9}")
  print(header)
  print("-" * len(header))
  configs = _configs(args.small)
  if args.configs:
    wanted = args.configs.split(",")
    configs = [c for c in configs if c[0] in wanted or c[0].split()[0] in wanted]
  for name, B, T, Nq, Nkv, D, n_seg in configs:
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (B, T, Nq, D), jnp.bfloat16)
    k = jax.random.normal(ks[1], (B, T, Nkv, D), jnp.bfloat16)
    v = jax.random.normal(ks[2], (B, T, Nkv, D), jnp.bfloat16)
    do = jax.random.normal(ks[3], (B, T, Nq, D), jnp.bfloat16)
    segments = None if n_seg == 1 else jnp.broadcast_to(
        jnp.arange(T, dtype=jnp.int32) * n_seg // T, (B, T))  # (B, T), equal-length segments
    fwd_tflop = 4 * B * Nq * T * T * D / 2 / 1e12
    results, reference_out, reference_grads = {}, None, None
    for impl in sorted(impls, key=lambda i: i != "xla"):  # xla first: its output is the reference
      try:
        fwd_ms, both_ms, out, grads = _measure(_impl(impl, segments, q.shape, args), q, k, v, do, args)
        grads = [g.astype(jnp.float32) for g in grads]
        if impl == "xla":
          reference_out, reference_grads = out.astype(jnp.float32), grads
        err = (float(jnp.max(jnp.abs(out.astype(jnp.float32) - reference_out)))
               if reference_out is not None else float("nan"))
        gerr = (max(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in zip(grads, reference_grads))
                if reference_grads is not None else float("nan"))
        results[impl] = (fwd_ms, both_ms, err, gerr)
      except Exception as e:  # one failing variant must not abort the table
        results[impl] = e
        if args.small is False:
          traceback.print_exc(limit=2)
    cudnn = results.get("cudnn")
    for impl in impls:
      r = results[impl]
      if isinstance(r, Exception):
        msg = f"{type(r).__name__}: {str(r).strip().splitlines()[0] if str(r).strip() else ''}"
        print(f"{name:<12} {impl:<8} ERROR {msg[:100]}")
        continue
      fwd_ms, both_ms, err, gerr = r
      ratio = lambda i: (f"{cudnn[i] / r[i]:.2f}" if isinstance(cudnn, tuple) else "-")
      print(f"{name:<12} {impl:<8} {fwd_ms:9.3f} {fwd_tflop / fwd_ms * 1e3:8.3g} {both_ms:9.3f} "
            f"{3.5 * fwd_tflop / both_ms * 1e3:8.3g} {ratio(0):>11} {ratio(1):>11} {err:8.1e} {gerr:9.1e}")


if __name__ == "__main__":
  main()
