"""Benchmark the KV-cache sampler: tokens/s and fraction of the HBM roofline, vs HF `generate` if present.

    python scripts/bench_generate.py            # ~1.2B Llama shape (Llama-3.2-1B), bf16, batch 1/64/256
    python scripts/bench_generate.py --hf_batches 1 --hlo sampler.hlo   # HF at batch 1 only; dump the program
    python scripts/bench_generate.py --no_hf --graphs  # each batch also with the decode loop as a CUDA graph
    python scripts/bench_generate.py --batches 1 --no_hf --profile /tmp/prof  # where a decode step's time goes
    python scripts/bench_generate.py --small    # CPU smoke run on a tiny model
    python scripts/bench_generate.py --heavy_tail --small   # engine v2 vs static batches, RL-like budgets

--heavy_tail (issue 21): requests with lognormal budgets (median 64, sigma 1, capped at 512; prompts 8-32
tokens; fixed seed) at 32 and 256 slots, through the continuous-batching paged engine (jaxpost/engine) and
through today's static batches (`sampling.generate`, `slots` requests per batch, each batch decoding to its
longest budget). Reports useful tokens/s, occupancy (useful tokens / decode row-steps computed: the static
batch's rows x its longest budget; the engine's decode rows, live samples in a power-of-two bucket, x
steps, plus its prefill rows) and KV memory
(tokens of cache allocated: the static batch's rows x longest sequence vs the engine's page pool, sized to
--pool_fraction of the static cache). `occupancy` counts the whole run, the drain included (the last long
samples decoding with few slots busy); `queued occ` only the decode chunks that began with samples still
waiting for a slot, i.e. how full continuous batching keeps the slots while there is work. Each engine runs the workload once to compile, then once timed.

Each batch row gets a 128-token prompt and samples exactly 128 new tokens (temperature 1, no stop
token). tokens/s = B * N / (prefill + decode time). The roofline is for decode: each step must read
every weight once and the filled KV cache of every row (scripts/roofline.py), with the bandwidth
measured here by timing a large device copy (read + write). `roofline` = ideal /
measured decode time (decode = total - prefill, prefill timed alone). At large batch decode becomes
compute-bound and the fraction falls for that reason, not only for waste. HF rows (torch +
transformers, same shape, random weights, bf16, sdpa attention) run only when both import.
"""
import argparse
import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost import engine as engine_lib
from jaxpost import sampling, state
from jaxpost.models import ModelConfig
from engines import engines  # scripts/engines.py
from profile_summary import summarize  # scripts/profile_summary.py
from roofline import copy_bandwidth, ideal_decode_seconds  # scripts/roofline.py

LLAMA_1B = dict(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                mlp_dim=8192, rope_theta=500000.0, tie_embeddings=True, dtype="bfloat16", param_dtype="bfloat16",
                attention="auto")
SMALL = dict(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128)


def _median_time(fn, iters: int) -> float:
  fn()  # compile + warm-up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _prompts(cfg: ModelConfig, batch: int, prompt_len: int) -> list[list[int]]:
  return np.random.default_rng(0).integers(3, cfg.vocab_size, size=(batch, prompt_len)).tolist()


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def _prefill_jit(graphdef, params, tokens, segment_ids, *, max_len):
  """The static sampler's prefill jitted alone: prompts (B, P) -> (next-token logits, cache of max_len)."""
  positions = sampling._positions(segment_ids)  # noqa: SLF001
  return sampling._prefill(nnx.merge(graphdef, params), tokens, segment_ids, positions, max_len)  # noqa: SLF001


def bench_jaxpost(cfg: ModelConfig, params, graphdef, batch: int, prompt_len: int, new: int, iters: int,
                  compiler_options: tuple = ()):
  prompts = _prompts(cfg, batch, prompt_len)
  sample_cfg = sampling.SamplingConfig(max_new_tokens=new, temperature=1.0)

  def run():
    out = sampling.generate(graphdef, params, prompts, sample_cfg, compiler_options=compiler_options)
    assert (out.lengths == new).all(), out.lengths  # No early stop: every row decodes N tokens.

  shadow = [prompts[-1]] * max(sampling.MIN_MODEL_ROWS - batch, 0)  # the rows the sampler's prefill runs
  tokens, segment_ids = sampling._left_pad(prompts + shadow, 0)  # noqa: SLF001 (time the prefill alone)
  tokens, segment_ids = jnp.asarray(tokens), jnp.asarray(segment_ids)
  max_len = tokens.shape[1] + new

  def prefill():
    jax.block_until_ready(_prefill_jit(graphdef, params, tokens, segment_ids, max_len=max_len))

  total = _median_time(run, iters)
  return total, _median_time(prefill, iters)


def bench_hf(shape: dict, batch: int, prompt_len: int, new: int, iters: int):
  """Seconds for HF generate (sampling, exactly `new` tokens), or None when torch/transformers are absent."""
  try:
    import torch
    from transformers.models.llama import LlamaConfig, LlamaForCausalLM
  except ImportError:
    return None
  device = "cuda" if torch.cuda.is_available() else "cpu"
  config = LlamaConfig(
      vocab_size=shape["vocab_size"], hidden_size=shape["d_model"], num_hidden_layers=shape["num_layers"],
      num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"], head_dim=shape["head_dim"],
      intermediate_size=shape["mlp_dim"], rope_theta=shape.get("rope_theta", 10000.0),
      tie_word_embeddings=shape.get("tie_embeddings", True), attn_implementation="sdpa")
  dtype = torch.bfloat16 if shape.get("dtype") == "bfloat16" else torch.float32
  model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
  ids = torch.randint(3, shape["vocab_size"], (batch, prompt_len), device=device)

  def run():
    with torch.no_grad():
      model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                     do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0, eos_token_id=None)
    if device == "cuda":
      torch.cuda.synchronize()

  seconds = _median_time(run, iters)
  model = None  # Frees the GPU memory before the next JAX batch (the closure holds the name, not a copy).
  if device == "cuda":
    torch.cuda.empty_cache()
  return seconds


def lora_variants(cfg: ModelConfig, mesh, params, rank: int) -> dict:
  """{"lora separate": (graphdef, params with adapters), "lora merged": (plain graphdef, folded params)};
  the adapters are random (B != 0) so neither path can be optimised away."""
  import dataclasses
  from jaxpost.models import lora
  lcfg = dataclasses.replace(cfg, lora_rank=rank)
  graphdef, _, _ = state.abstract_model(lcfg)
  adapters = lora.split(state.init_params(lcfg, mesh, seed=1))[1]
  leaves, treedef = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  adapters = jax.tree.unflatten(treedef, [0.01 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
  full = lora.join(params, adapters)
  plain_graphdef, _, _ = state.abstract_model(cfg)
  return {"lora separate": (graphdef, full), "lora merged": (plain_graphdef, jax.jit(lambda p: lora.merged(p, lcfg))(full))}


def heavy_tail_workload(cfg: ModelConfig, num_requests: int, seed: int = 0):
  """(prompts, budgets): prompts of 8-32 random tokens, budgets lognormal (median 64, sigma 1) in [1, 512]."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(8, 33, size=num_requests)
  prompts = [rng.integers(3, cfg.vocab_size, size=n).tolist() for n in lengths]
  budgets = np.clip(np.round(rng.lognormal(np.log(64.0), 1.0, size=num_requests)), 1, 512).astype(int)
  return prompts, budgets.tolist()


def bench_heavy_tail(cfg, graphdef, params, slots: int, num_requests: int, pool_fraction: float,
                     steps_per_check: int):
  """Rows (engine, slots, tokens/s, occupancy, KV tokens, seconds) for the static batches and engine v2."""
  prompts, budgets = heavy_tail_workload(cfg, num_requests)
  useful = sum(budgets)
  cfg_sampled = sampling.SamplingConfig(temperature=1.0)

  def static():
    slot_steps, kv = 0, 0
    for i in range(0, num_requests, slots):
      batch, n = prompts[i:i + slots], max(budgets[i:i + slots])
      out = sampling.generate(graphdef, params, batch, dataclasses.replace(cfg_sampled, max_new_tokens=n, seed=i))
      assert (out.lengths == n).all()  # No stop ids: every row decodes to the batch's longest budget.
      width = -(-max(map(len, batch)) // sampling.PROMPT_BUCKET) * sampling.PROMPT_BUCKET
      slot_steps += max(len(batch), sampling.MIN_MODEL_ROWS) * n
      kv = max(kv, max(len(batch), sampling.MIN_MODEL_ROWS) * (width + n))
    return slot_steps, kv

  max_len = 32 + 512
  static_kv = slots * (-(-32 // sampling.PROMPT_BUCKET) * sampling.PROMPT_BUCKET + 512)
  page_size = 16
  config = engine_lib.EngineConfig(num_slots=slots, page_size=page_size, max_seq_len=max_len,
                                   num_pages=int(pool_fraction * static_kv) // page_size,
                                   steps_per_check=steps_per_check, prefill_bucket=16)
  engine = engine_lib.Engine(graphdef, cfg, config)
  requests = [engine_lib.Request(prompt=p, max_new_tokens=n, seed=i) for i, (p, n) in enumerate(zip(prompts, budgets))]

  def paged():
    out = engine.generate(params, requests, cfg_sampled)
    assert [len(c.tokens) for c in out] == budgets

  rows = []
  for name, fn in (("static", static), ("engine", paged)):
    fn()  # compile (every batch shape) + warm-up
    engine.stats = dict.fromkeys(engine.stats, 0)
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    if name == "static":
      slot_steps, kv = result
    else:
      s = engine.stats
      slot_steps, kv = s["decode_rows"] * steps_per_check + s["prefill_rows"], config.num_pages * page_size
    steady = float("nan")
    if name == "engine":
      steady = s["queued_decode_tokens"] / max(s["queued_decode_rows"] * steps_per_check, 1)
    rows.append((name, slots, useful / seconds, useful / slot_steps, steady, kv, seconds))
    print_heavy_row(rows[-1])
  print(f"  engine peak pages {engine.peak_pages} of {config.num_pages} ({engine.peak_pages * page_size} tokens); "
        f"prefill calls {engine.stats['prefill_calls']} for {engine.stats['prefill_rows']} rows", flush=True)
  return rows


HEAVY_HEADER = ("engine", "slots", "tokens/s", "occupancy", "queued occ", "KV tokens", "seconds")


def print_heavy_row(row) -> None:
  if row is None:
    print(" | ".join(f"{h:>10}" for h in HEAVY_HEADER), flush=True)
    return
  engine, slots, tps, occ, steady, kv, seconds = row
  print(" | ".join([f"{engine:>10}", f"{slots:>10d}", f"{tps:>10.1f}", f"{occ:>10.1%}", f"{steady:>10.1%}", f"{kv:>10d}",
                    f"{seconds:>10.2f}"]), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--small", action="store_true", help="tiny model, CPU-sized batches")
  parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,64,256)")
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--no_hf", action="store_true", help="skip the HF generate rows")
  parser.add_argument("--hf_batches", default=None, help="batch sizes that also get an HF row (default: all)")
  parser.add_argument("--hlo", default=None, help="write the optimised HLO of the first batch's sampler here")
  parser.add_argument("--attention", default=None, help="prefill attention impl (default: auto; xla with --small)")
  parser.add_argument("--profile", default=None,
                      help="trace one generate call at the first batch into this directory and print where the "
                           "device time went (scripts/profile_summary.py); with --graphs, the graph sampler too")
  parser.add_argument("--graphs", action="store_true",
                      help="also time each batch with sampling.CUDA_GRAPHS (the decode loop as one CUDA graph)")
  parser.add_argument("--lora_rank", type=int, default=0,
                      help="also time LoRA adapters on every projection: as separate (x A) B matmuls "
                           "(what the sampler does) vs merged into the weights beforehand")
  parser.add_argument("--heavy_tail", action="store_true",
                      help="engine v2 vs static batches on heavy-tailed budgets (see the module docstring)")
  parser.add_argument("--slots", default="32,256", help="--heavy_tail: decode slots (= static batch size)")
  parser.add_argument("--requests", type=int, default=0, help="--heavy_tail: requests (default 8 x slots)")
  parser.add_argument("--pool_fraction", type=float, default=0.5,
                      help="--heavy_tail: the engine's page pool as a fraction of the static cache")
  parser.add_argument("--steps_per_check", type=int, default=16, help="--heavy_tail: decode steps per host check")
  args = parser.parse_args()

  shape = SMALL if args.small else LLAMA_1B
  prompt_len, new = (16, 16) if args.small else (128, 128)
  batches = [int(b) for b in (args.batches or ("1,4,16" if args.small else "1,64,256")).split(",")]
  hf_batches = batches if args.hf_batches is None else [int(b) for b in args.hf_batches.split(",") if b]
  cfg = ModelConfig(**{**shape, **({"attention": args.attention} if args.attention else {})})
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=jax.devices()[:1])
  graphdef, _, _ = state.abstract_model(cfg)
  params = state.init_params(cfg, mesh, seed=0)
  if args.heavy_tail:
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; model: {cfg.num_params() / 1e6:.1f}M "
          f"params ({cfg.param_dtype}); heavy-tailed budgets", flush=True)
    rows = []
    for slots in [int(x) for x in args.slots.split(",")]:
      print_heavy_row(None)
      rows += bench_heavy_tail(cfg, graphdef, params, slots, args.requests or 8 * slots, args.pool_fraction,
                               args.steps_per_check)
    print("summary:")
    print_heavy_row(None)
    for row in rows:
      print_heavy_row(row)
    for slots in sorted({r[1] for r in rows}):
      static, paged = [r for r in rows if r[1] == slots]
      print(f"slots {slots}: engine/static tokens/s {paged[2] / static[2]:.2f}x, KV {paged[5] / static[5]:.2f}x")
    return
  bandwidth = copy_bandwidth((64 << 20) if args.small else (2 << 30))
  print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; model: {cfg.num_params() / 1e6:.1f}M params "
        f"({cfg.param_dtype}); prompt {prompt_len} + {new} new tokens; copy bandwidth {bandwidth / 1e9:.0f} GB/s",
        flush=True)
  if args.hlo:
    write_hlo(args.hlo, graphdef, params, _prompts(cfg, batches[0], prompt_len), new)

  rows = []
  for batch in batches:
    ideal = ideal_decode_seconds(cfg, batch, prompt_len, new, bandwidth)

    def measure(engine, g, p, compiler_options=()):
      """Times one jaxpost engine at this batch and prints its row."""
      total, prefill = bench_jaxpost(cfg, p, g, batch, prompt_len, new, args.iters, compiler_options)
      decode = max(total - prefill, 1e-9)
      rows.append((engine, batch, batch * new / total, 1e3 * prefill, 1e3 * decode / (new - 1), ideal / decode))
      print_row(rows[-1])

    measure("jaxpost", graphdef, params)
    if args.graphs:
      try:
        measure("+cuda graphs", graphdef, params, sampling.CUDA_GRAPHS)
      except Exception as e:  # An unsupported XLA option must not cost the other rows.
        print(f"+cuda graphs batch {batch}: {type(e).__name__}: {str(e).strip().splitlines()[:1]}", flush=True)
    if args.lora_rank:
      for engine, (g, p) in lora_variants(cfg, mesh, params, args.lora_rank).items():
        measure(engine, g, p)
    if not args.no_hf and batch in hf_batches:
      try:
        hf = bench_hf(shape, batch, prompt_len, new, args.iters)
      except Exception as e:  # A baseline failure must not cost the jaxpost rows of a one-shot device run.
        print(f"hf generate batch {batch}: {type(e).__name__}: {str(e).strip().splitlines()[:1]}", flush=True)
        hf = None
      if hf is not None:
        rows.append(("hf generate", batch, batch * new / hf, float("nan"), 1e3 * hf / new, ideal / hf))
        print_row(rows[-1])

  if args.profile:
    profile(args.profile, cfg, params, graphdef, batches[0], prompt_len, new, args.graphs)
  print("summary:")
  print_row(None)
  for row in rows:
    print_row(row)


HEADER = ("engine", "batch", "tokens/s", "prefill ms", "ms/step", "roofline")


def print_row(row) -> None:
  """One table line (the header for None), printed as soon as it is measured."""
  if row is None:
    print(" | ".join(f"{h:>12}" for h in HEADER), flush=True)
    return
  engine, batch, tps, pre, step, frac = row
  print(" | ".join([f"{engine:>12}", f"{batch:>12d}", f"{tps:>12.1f}", f"{pre:>12.1f}", f"{step:>12.2f}",
                    f"{frac:>12.1%}"]), flush=True)


def profile(trace_dir: str, cfg, params, graphdef, batch: int, prompt_len: int, new: int, graphs: bool) -> None:
  """Traces one (already compiled) generate call per engine and prints its device-time summary."""
  prompts = _prompts(cfg, batch, prompt_len)
  sample_cfg = sampling.SamplingConfig(max_new_tokens=new, temperature=1.0)
  for engine, options in engines(graphs):
    try:
      sampling.generate(graphdef, params, prompts, sample_cfg, compiler_options=options)  # compiled, warm
      path = os.path.join(trace_dir, engine)
      with jax.profiler.trace(path):
        sampling.generate(graphdef, params, prompts, sample_cfg, compiler_options=options)
      print(f"profile of generate, {engine}, batch {batch} ({new} steps, prefill included):\n"
            + summarize(path, steps=new), flush=True)
    except Exception as e:  # Diagnostics must not cost the table.
      print(f"profile {engine}: {type(e).__name__}: {str(e).strip().splitlines()[:1]}", flush=True)


def write_hlo(path: str, graphdef, params, prompts, new: int) -> None:
  """The compiled sampler's optimised HLO (what XLA runs: fusions, loops, copies) for inspection."""
  tokens, segment_ids = sampling._left_pad(prompts, 0)  # noqa: SLF001
  cfg = sampling.SamplingConfig(max_new_tokens=new, temperature=1.0)
  compiled = sampling.generate_jit().lower(graphdef, params, jnp.asarray(tokens), jnp.asarray(segment_ids),
                                           sampling._traced(cfg), sampling=sampling._static(cfg),  # noqa: SLF001
                                           pad_id=0).compile()
  with open(path, "w") as f:
    f.write(compiled.as_text())
  print(f"optimised HLO of the sampler (batch {len(prompts)}) -> {path}", flush=True)


if __name__ == "__main__":
  main()
