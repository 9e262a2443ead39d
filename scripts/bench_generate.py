"""Benchmark the KV-cache sampler: tokens/s and fraction of the HBM roofline, vs HF `generate` if present.

    python scripts/bench_generate.py            # ~1.2B Llama shape (Llama-3.2-1B), bf16, batch 1/64/256
    python scripts/bench_generate.py --hf_batches 1 --hlo sampler.hlo   # HF at batch 1 only; dump the program
    python scripts/bench_generate.py --no_hf --graphs  # each batch also with the decode loop as a CUDA graph
    python scripts/bench_generate.py --batches 1 --no_hf --profile /tmp/prof  # where a decode step's time goes
    python scripts/bench_generate.py --small    # CPU smoke run on a tiny model

Each batch row gets a 128-token prompt and samples exactly 128 new tokens (temperature 1, no stop
token). tokens/s = B * N / (prefill + decode time). The roofline is for decode: each step must read
every weight once and the filled KV cache of every row (scripts/roofline.py), with the bandwidth
measured here by timing a large device copy (read + write). `roofline` = ideal /
measured decode time (decode = total - prefill, prefill timed alone). At large batch decode becomes
compute-bound and the fraction falls for that reason, not only for waste. HF rows (torch +
transformers, same shape, random weights, bf16, sdpa attention) run only when both import.
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost import sampling, state, streaming
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
    # The sampler's prefill jitted alone (the CLI's streaming loop has it as a step of its own).
    jax.block_until_ready(streaming._prefill_jit(graphdef, params, tokens, segment_ids, max_len=max_len))  # noqa: SLF001

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
