"""Benchmark one GRPO iteration: rollout (P prompts x G samples with the KV-cache sampler) + update.

    python scripts/bench_rl.py                 # ~0.5B Llama shape (Qwen2.5-0.5B-like), bf16, 32 x 8 rollouts
    python scripts/bench_rl.py --small         # CPU smoke run on a tiny model

It times, after one warm-up iteration (which compiles), the median of `--iters` iterations of exactly
what `jaxpost/loops/online.py` does on the device: `sampling.generate` on the live params, then the
rollout rows (`rollout.rollout_batch`), then jitted GRPO updates (ppo_clip, token_mean) over them in
minibatches of `--minibatch` rows (`rl.minibatch_size`), one optimizer update each.
Rewards are random (host work is not what this measures). Prints rollout and train seconds,
tokens/s (sampled completion tokens / iteration time), and `rollout_x_roofline`: rollout time (prefill,
decode and the copy to the host) over the ideal decode time of its P*G rows (scripts/roofline.py; the
#11 goal is <= 2). `--graphs` then repeats the iterations with the sampler compiled with
sampling.CUDA_GRAPHS, and every run ends with the rollout engine (jaxpost/engine, `engine=paged`: one
request of G samples per prompt, P*G slots, the online loop's default) in its place (one result line per
engine). Random weights rarely stop early, so this is the equal-length case; `bench_generate.py
--heavy_tail` measures the heavy-tailed one.

Memory (defaults: 32-row minibatches, remat none, layers unrolled): the script used to update on all 256
rows x 767 tokens at once. bench_train's 1.24B step held ~33 GB of activations for 16k tokens on an H100;
per token this model needs ~0.8x that, so 196k tokens would need ~320 GB and 49k (64 rows) ~80 GB, while
32 rows need ~40 GB (an estimate, not a measurement). Layers stay unrolled because the sampler then
keeps one KV buffer per layer (a scanned model's stacked cache is copied per layer and step); remat
saves nothing without `--scan` in XLA's buffer plan (docs/performance.md).
"""
import argparse
import time

import jax
import numpy as np

from jaxpost import engine as engine_lib
from jaxpost import mesh as mesh_lib, optim, rollout, sampling, state as state_lib, step as step_lib
from jaxpost.algorithms import grpo
from jaxpost.config import REMAT_POLICIES, base_config
from jaxpost.models import ModelConfig
from engines import engines  # scripts/engines.py
from roofline import copy_bandwidth, ideal_decode_seconds  # scripts/roofline.py

HALF_B = dict(vocab_size=151936, d_model=896, num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
              mlp_dim=4864, tie_embeddings=True, qkv_bias=True, dtype="bfloat16", param_dtype="float32",
              attention="auto", logprob_impl="auto")
SMALL = dict(vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true")
  parser.add_argument("--prompts", type=int, default=None, help="P prompts per iteration (32; 4 with --small)")
  parser.add_argument("--generations", type=int, default=8, help="G samples per prompt")
  parser.add_argument("--prompt_len", type=int, default=None, help="tokens per prompt (256; 16 with --small)")
  parser.add_argument("--new_tokens", type=int, default=None, help="completion tokens (512; 16 with --small)")
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--graphs", action="store_true", help="also time the sampler with sampling.CUDA_GRAPHS")
  parser.add_argument("--minibatch", type=int, default=None, help="rows per update (32; P*G with --small)")
  parser.add_argument("--remat", default="none", choices=REMAT_POLICIES)
  parser.add_argument("--scan", action=argparse.BooleanOptionalAction, default=False, help="scan over layers")
  args = parser.parse_args()
  p = args.prompts or (4 if args.small else 32)
  g = args.generations
  prompt_len = args.prompt_len or (16 if args.small else 256)
  new = args.new_tokens or (16 if args.small else 512)

  minibatch = args.minibatch or (p * g if args.small else 32)
  if (p * g) % minibatch:
    raise SystemExit(f"--minibatch {minibatch} does not divide the rollout batch of {p} x {g} rows")
  cfg = ModelConfig(**(SMALL if args.small else HALF_B), remat=args.remat, scan_layers=args.scan)
  config = base_config()
  mesh = mesh_lib.make_mesh(config)
  with jax.set_mesh(mesh):
    graphdef, shapes, _ = state_lib.abstract_model(cfg)
    tx, schedule = optim.make_optimizer(config.optim, 1000)
    shardings = state_lib.state_shardings(shapes, state_lib.param_shardings(cfg, mesh), tx, mesh)
    train_state = state_lib.create_state(state_lib.init_params(cfg, mesh, 0), tx, shardings)
    loss_fn, normalizer = grpo.make_loss_fn(graphdef, aggregation="token_mean", logprob_impl=cfg.logprob_impl)
    train_step = jax.jit(step_lib.make_train_step(loss_fn, normalizer, tx, schedule),
                         in_shardings=(shardings, mesh_lib.batch_sharding(mesh), None),
                         out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, cfg.vocab_size, size=(p, prompt_len)).tolist()
    bandwidth = copy_bandwidth((64 << 20) if args.small else (2 << 30))
    ideal_s = ideal_decode_seconds(cfg, p * g, prompt_len, new, bandwidth)
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, jax {jax.__version__}; model "
          f"{cfg.num_params() / 1e6:.1f}M params; {p} prompts x {g} samples, prompt {prompt_len} + {new} new "
          f"tokens; {p * g // minibatch} updates of {minibatch} rows (remat {cfg.remat}, scan {cfg.scan_layers}); "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; decode roofline {ideal_s:.3f} s", flush=True)
    paged = engine_lib.Engine(graphdef, cfg, engine_lib.EngineConfig(
        num_slots=p * g, page_size=16, num_pages=p * g * -(-(prompt_len + new - 1) // 16),
        max_seq_len=prompt_len + new, steps_per_check=16, prefill_bucket=64))
    for engine, options in engines(args.graphs) + [("paged", None)]:  # One process: the train step compiles once.
      times = []
      for it in range(args.iters + 1):
        t0 = time.perf_counter()
        if engine == "paged":
          requests = [engine_lib.Request(prompt=x, num_samples=g, max_new_tokens=new, seed=it * p + k)
                      for k, x in enumerate(prompts)]
          out = rollout.sample_output(paged.generate(train_state["params"], requests,
                                                     sampling.SamplingConfig(temperature=1.0)), new, 0)
        else:
          out = sampling.generate(graphdef, train_state["params"], prompts, sampling.SamplingConfig(
              max_new_tokens=new, temperature=1.0, num_samples=g, seed=it), compiler_options=options)
        t1 = time.perf_counter()
        batch = rollout.rollout_batch(prompts, out.completions(), out.logps, num_samples=g,
                                      seq_len=prompt_len + new - 1)
        rewards = rng.random((p, g)).astype(np.float32)
        batch["advantages"] = np.asarray(grpo.compute_advantages(rewards, None, "grpo")).reshape(-1)
        for i in range(0, p * g, minibatch):  # As online.py: one optimizer update per minibatch.
          rows = {k: v[i:i + minibatch] for k, v in batch.items()}
          train_state, metrics = train_step(train_state, mesh_lib.global_batch(rows, mesh), None)
        jax.block_until_ready(metrics["loss"])
        t2 = time.perf_counter()
        print(f"{engine} iteration {it}{' (compiles)' if it == 0 else ''}: rollout {t1 - t0:.2f} s, "
              f"train {t2 - t1:.2f} s", flush=True)  # Progress, so a run cut short still says something.
        if it:  # The first iteration compiles.
          times.append((t1 - t0, t2 - t1, int(out.lengths.sum())))
      rollout_s = float(np.median([t[0] for t in times]))
      train_s = float(np.median([t[1] for t in times]))
      tokens = float(np.median([t[2] for t in times]))
      print(f"engine={engine} rollout_s={rollout_s:.3f} train_s={train_s:.3f} iteration_s={rollout_s + train_s:.3f} "
            f"sampled_tokens={tokens:.0f} tokens/s={tokens / (rollout_s + train_s):.1f} "
            f"rollout_share={rollout_s / (rollout_s + train_s):.0%} peak_GiB={_peak_gib()} "
            f"rollout_x_roofline={rollout_s / ideal_s:.2f}", flush=True)


def _peak_gib() -> str:
  """Peak device memory of the process so far (GPU/TPU; n/a where the backend keeps no stats)."""
  stats = jax.devices()[0].memory_stats() or {}
  return f"{stats['peak_bytes_in_use'] / 2**30:.1f}" if "peak_bytes_in_use" in stats else "n/a"


if __name__ == "__main__":
  main()
