"""Benchmark the jaxpost SFT train step: tokens/s, MFU, peak memory, compilations; and HF transformers + torch.

    python scripts/bench_train.py                              # 1.24B Llama-shaped, 4 x 4096, bf16, attention auto
    python scripts/bench_train.py --sweep --time_budget_s 480  # memory plans: remat none/full/dots/offload x scan
    python scripts/bench_train.py --remat dots --scan --no-hf  # one plan, no HF baseline
    python scripts/bench_train.py --small --no-hf              # CPU smoke run (tiny model)

What is timed: the jitted `step.make_train_step(sft loss)` exactly as `loops/offline.py` builds it (state
from `state.py`, optax chain from `optim.py`: clip + AdamW, explicit in/out shardings, donated state, under
`jax.set_mesh`), on random token batches (full rows, one segment, every token in the loss), a fresh batch
every step. Step time = median over --steps calls after --warmup calls (the first compiles), each ended by
`block_until_ready`. Compilations = XLA backend compiles seen (via `jax.monitoring`) over all step calls:
1 means the step never retraced.

FLOP convention (PERF.md): FLOPs/step = 6 * N * B*T + 6 * L * (H*hd) * T * B*T, i.e. 6 x params x tokens
plus causal attention at 12*L*d*T/2 per token (d = H*hd = d_model for these shapes), where N counts all
parameters with the tied embedding once. MFU = FLOPs/step / step time / (devices x --peak_tflops), the
datasheet dense bf16 peak (989 TFLOP/s for H100/H200 SXM). Recomputation (remat) is not counted as work.

HF baseline (--hf; by default on when torch + transformers import and CUDA is present): LlamaForCausalLM of
the same shape, bf16 weights, attn_implementation='sdpa', tied embeddings, f32 cross-entropy over all T
targets, clip_grad_norm_(1.0) and AdamW(fused=True) (jaxpost clips too), same batch shape; the ratio printed
is jaxpost tokens/s / HF tokens/s. Every variant and the HF run are separate subprocesses, so peak memory
never mixes, an OOM only fails its own row, and torch never competes with JAX's preallocated GPU pool
(children get XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 unless set). A failing variant prints an ERROR row.
--time_budget_s: no variant starts once less than 20 s of the budget is left; a running one is stopped at it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if importlib.util.find_spec("jaxpost") is None:  # Not installed: run from the checkout (jaxpost.kernels
  sys.path.insert(0, _ROOT)                      # then needs an editable install's path mapping).
from jaxpost import config as config_lib  # noqa: E402  (imports JAX, starts no backend in the parent)

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # Stable name since jax 0.4.
RESULT_PREFIX = "BENCH_RESULT "
FULL = dict(d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192, vocab=128256,
            batch=4, seq=4096, steps=10, warmup=2)  # The 1.24B Llama-shaped model of PERF.md.
SMALL = dict(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128, vocab=256,
             batch=8, seq=64, steps=3, warmup=1)
MIN_VARIANT_S = 20.0  # Under this much budget left, a variant cannot even import and compile: not started.
SWEEP = [(remat, scan) for remat in ("none", "full", "dots", "offload") for scan in (False, True)]


def train_flops(num_params: int, num_layers: int, attn_width: int, batch: int, seq: int) -> float:
  """FLOPs of one train step (fwd + bwd) by the PERF.md convention; see the module docstring."""
  tokens = batch * seq
  return 6.0 * num_params * tokens + 6.0 * num_layers * attn_width * seq * tokens


# ================================================================ jaxpost variant (child process)

_ACTIVE_COUNTERS: list[list[str]] = []
_LISTENING = False


class CompileCounter:
  """Counts XLA backend compilations while active: `with CompileCounter() as c: ...; c.count`.

  One process-wide `jax.monitoring` duration listener (registered once: listeners cannot all be removed
  on every jax version) appends the compiled function's name to every active counter."""

  def __enter__(self):
    global _LISTENING
    import jax
    if not _LISTENING:
      def listener(event, duration_secs, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
          for names in _ACTIVE_COUNTERS:
            names.append(str(kwargs.get("fun_name", "?")))
      jax.monitoring.register_event_duration_secs_listener(listener)
      _LISTENING = True
    self.names = []
    _ACTIVE_COUNTERS.append(self.names)
    return self

  def __exit__(self, *exc):
    _ACTIVE_COUNTERS.remove(self.names)

  @property
  def count(self) -> int:
    return len(self.names)


def make_config(spec: dict):
  """The locked base config with the benchmark's model, batch, optimizer and mesh; validated."""
  config = config_lib.base_config()
  m = config.model
  m.vocab_size, m.d_model, m.num_layers = spec["vocab"], spec["d_model"], spec["num_layers"]
  m.num_heads, m.num_kv_heads, m.head_dim, m.mlp_dim = (spec["num_heads"], spec["num_kv_heads"], spec["head_dim"],
                                                        spec["mlp_dim"])
  m.tie_embeddings, m.dtype, m.param_dtype = spec["tie"], spec["dtype"], spec["param_dtype"]
  m.attention, m.logprob_impl, m.remat, m.scan_layers = (spec["attention"], spec["logprob_impl"], spec["remat"],
                                                         spec["scan"])
  m.cudnn_max_segments = spec.get("cudnn_max_segments", 0)
  config.data.seq_len = spec["seq"]
  config.train.batch_size, config.train.grad_accum = spec["batch"], spec["grad_accum"]
  config.train.steps = spec["warmup"] + spec["steps"]
  for axis, size in zip(config_lib.MESH_AXES, spec["mesh"]):
    config.mesh[axis] = size
  return config


def random_batch(rng, batch: int, seq: int, vocab: int) -> dict:
  """Full rows of random tokens, one segment each, every target in the loss; numpy (B, T) int32."""
  import numpy as np
  tokens = rng.integers(0, vocab, (batch, seq + 1), dtype=np.int32)  # (B, T+1)
  ones = np.ones((batch, seq), np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": ones,
          "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(), "segment_ids": ones}


def build_train_step(config, mesh):
  """(model_cfg, sharded state, jitted step, batch sharding) the way `loops/offline.py` builds them."""
  import jax
  from jaxpost import mesh as mesh_lib, optim, state as state_lib, step as step_lib
  from jaxpost.algorithms import sft
  from jaxpost.models import ModelConfig
  model_cfg = ModelConfig.from_config(config.model)
  graphdef, param_shapes, _ = state_lib.abstract_model(model_cfg)
  tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
  param_shardings = state_lib.param_shardings(model_cfg, mesh)
  shardings = state_lib.state_shardings(param_shapes, param_shardings, tx, mesh)
  state = state_lib.create_state(state_lib.init_params(model_cfg, mesh, config.train.seed), tx, shardings)
  loss_fn, normalizer = sft.make_loss_fn(graphdef, model_cfg.logprob_impl)
  train_step = jax.jit(
      step_lib.make_train_step(loss_fn, normalizer, tx, schedule, grad_accum=config.train.grad_accum),
      in_shardings=(shardings, mesh_lib.batch_sharding(mesh), None),
      out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
  return model_cfg, state, train_step


def _compiled_memory(train_step, state, batch) -> dict:
  """XLA's buffer plan for the step, per device (its compile is the one the calls then reuse): argument
  bytes (the resident state shard plus the batch: what FSDP divides), temp bytes on the device (activations,
  gradients in flight: what remat, scan and microbatching cut) and in host memory (remat offload). Any
  backend, CPU included."""
  analysis = train_step.lower(state, batch, None).compile().memory_analysis()
  if analysis is None:
    return {}
  return dict(argument_bytes=analysis.argument_size_in_bytes, temp_bytes=analysis.temp_size_in_bytes,
              host_temp_bytes=getattr(analysis, "host_temp_size_in_bytes", 0))


def _peak_bytes():
  import jax
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


def time_jaxpost(spec: dict) -> dict:
  """Builds and times one variant; returns a JSON-able dict (times in ms)."""
  import jax
  import numpy as np
  from jaxpost import mesh as mesh_lib
  config = make_config(spec)
  config_lib.validate(config, jax.device_count())
  mesh = mesh_lib.make_mesh(config)
  with jax.set_mesh(mesh):  # As in loops/offline.py: kernels inside the step find the mesh here.
    model_cfg, state, train_step = build_train_step(config, mesh)
    rng = np.random.default_rng(config.train.seed)
    calls = spec["warmup"] + spec["steps"]
    batches = [mesh_lib.global_batch(random_batch(rng, spec["batch"], spec["seq"], spec["vocab"]), mesh)
               for _ in range(calls)]
    jax.block_until_ready((state, batches))
    times, losses = [], []
    with CompileCounter() as compiles:
      # The step's compile, shared with the calls below (so still one compilation), when asked for its plan.
      extra = _compiled_memory(train_step, state, batches[0]) if spec.get("compiled_memory") else {}
      for batch in batches:
        t0 = time.perf_counter()
        state, metrics = train_step(state, batch, None)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
        losses.append(metrics["loss"])
    losses = [float(x) for x in losses]  # Read back after the timed loop: no host sync inside it.
    if spec.get("profile"):  # Two more steps under the profiler, after the timed ones.
      from profile_summary import summarize  # scripts/profile_summary.py
      trace_dir = os.path.join(spec["profile"], _variant_name(spec).replace(" ", "_").replace("=", "-"))
      with jax.profiler.trace(trace_dir):
        for batch in batches[:2]:
          state, metrics = train_step(state, batch, None)
        jax.block_until_ready((state, metrics))
      extra["profile"] = summarize(trace_dir, steps=2)
  cache_size = train_step._cache_size() if hasattr(train_step, "_cache_size") else None
  timed = times[spec["warmup"]:]
  return dict(step_ms=1e3 * statistics.median(timed), min_ms=1e3 * min(timed), first_call_s=times[0],
              compilations=compiles.count, compiled=sorted(set(compiles.names)), jit_cache_size=cache_size,
              loss_first=losses[0], loss_last=losses[-1], num_params=model_cfg.num_params(),
              peak_bytes=_peak_bytes(), num_devices=jax.device_count(), device=jax.devices()[0].device_kind,
              jax=jax.__version__, **extra)


# ================================================================ HF transformers + torch (child process)

def time_hf(spec: dict) -> dict:
  """The same model and batch shape in transformers + torch: bf16, sdpa, fused AdamW."""
  # Off the path first: the checkout's kernels/ folder would pass for the PyPI `kernels` package that
  # transformers probes for (it is importable only as jaxpost.kernels once installed).
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _ROOT]
  import torch
  import torch.nn.functional as F
  import transformers
  from transformers.models.llama import LlamaConfig, LlamaForCausalLM  # Direct: a lazy-import failure names its cause.
  cuda = torch.cuda.is_available()
  if not cuda and not spec["hf_force"]:
    return {"skipped": "no CUDA device (pass --hf to run on CPU)"}
  device = torch.device("cuda" if cuda else "cpu")
  cfg = LlamaConfig(
      vocab_size=spec["vocab"], hidden_size=spec["d_model"], intermediate_size=spec["mlp_dim"],
      num_hidden_layers=spec["num_layers"], num_attention_heads=spec["num_heads"],
      num_key_value_heads=spec["num_kv_heads"], head_dim=spec["head_dim"], tie_word_embeddings=spec["tie"],
      rms_norm_eps=1e-5, max_position_embeddings=max(spec["seq"], 2048), attention_bias=False, mlp_bias=False)
  cfg._attn_implementation = "sdpa"
  torch.manual_seed(0)
  default_dtype = torch.get_default_dtype()
  torch.set_default_dtype(torch.bfloat16)  # Weights created in bf16 directly on the device.
  try:
    with device:
      model = LlamaForCausalLM(cfg)
  finally:
    torch.set_default_dtype(default_dtype)
  model.train()
  num_params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once.
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                          fused=cuda)
  gen = torch.Generator().manual_seed(0)
  calls = spec["warmup"] + spec["steps"]
  batches = [torch.randint(0, spec["vocab"], (spec["batch"], spec["seq"] + 1), generator=gen).to(device)
             for _ in range(calls)]  # (B, T+1)
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  times, losses = [], []
  for tokens in batches:
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=tokens[:, :-1]).logits  # (B, T, V) bf16
    loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    del logits  # Backward does not need the bf16 logits; holding them into the next step would add 2*B*T*V bytes.
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sync()
    times.append(time.perf_counter() - t0)
    losses.append(loss.detach())
  timed = times[spec["warmup"]:]
  return dict(step_ms=1e3 * statistics.median(timed), min_ms=1e3 * min(timed), first_call_s=times[0],
              loss_first=float(losses[0]), loss_last=float(losses[-1]), num_params=num_params,
              peak_bytes=torch.cuda.max_memory_allocated() if cuda else None, num_devices=1,
              device=torch.cuda.get_device_name() if cuda else "cpu", fused_adamw=cuda,
              torch=torch.__version__, transformers=transformers.__version__)


def child_main(kind: str, spec: dict) -> None:
  """Runs one measurement and prints it as one RESULT_PREFIX + JSON line (an `error` key on failure)."""
  try:
    result = time_jaxpost(spec) if kind == "jaxpost" else time_hf(spec)
  except Exception as e:  # Reported as an ERROR row by the parent; the traceback goes to stderr.
    import traceback
    traceback.print_exc()
    result = {"error": f"{type(e).__name__}: {_first_line(str(e))}"}
  print(RESULT_PREFIX + json.dumps(result), flush=True)


def _first_line(text: str, limit: int = 300) -> str:
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  line = next((l for l in lines if "RESOURCE_EXHAUSTED" in l or "Out of memory" in l), lines[0] if lines else "")
  return line[:limit]


# ================================================================ parent: variants, subprocesses, table

def run_child(kind: str, spec: dict, timeout: float, verbose: bool) -> dict:
  """Runs `kind` ('jaxpost' | 'hf') in a fresh interpreter; returns its result dict (or an error)."""
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")  # Default 0.75 would cap JAX at ~60 of 80 GB.
  cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(spec)]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"stopped after {timeout:.0f} s (--timeout / --time_budget_s)"}
  if verbose and proc.stderr:
    sys.stderr.write(proc.stderr)
  lines = [l[len(RESULT_PREFIX):] for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
  if lines:
    result = json.loads(lines[-1])
  else:
    err = [l for l in proc.stderr.splitlines() if l.strip()]
    key = next((l for l in reversed(err) if "Error" in l or "RESOURCE_EXHAUSTED" in l), err[-1] if err else "no output")
    result = {"error": f"rc={proc.returncode}: {key.strip()[:300]}"}
  if "error" in result:
    result["stderr_tail"] = proc.stderr[-4000:]  # Kept in --json records for debugging a one-shot run.
  return result


def _gib(x) -> str:
  return "n/a" if x is None else f"{x / 2**30:.2f}"


def format_row(name: str, spec: dict, r: dict, flops: float, peak_tflops: float) -> str:
  """One table row, `key=value` fields (parsed by tests and easy to grep)."""
  if "skipped" in r:
    return f"{name:<44} SKIPPED {r['skipped']}"
  if "error" in r:
    return f"{name:<44} ERROR {r['error']}"
  tokens = spec["batch"] * spec["seq"]
  seconds = r["step_ms"] / 1e3
  mfu = flops / seconds / (r["num_devices"] * peak_tflops * 1e12)
  row = (f"{name:<44} step_ms={r['step_ms']:.2f} tokens/s={tokens / seconds:.0f} MFU={100 * mfu:.1f}% "
         f"peak_GiB={_gib(r['peak_bytes'])} first_call_s={r['first_call_s']:.1f}")
  if "temp_bytes" in r:
    row += (f" args_GiB={_gib(r['argument_bytes'])} temp_GiB={_gib(r['temp_bytes'])}"
            f" host_temp_GiB={_gib(r['host_temp_bytes'])}")
  if "compilations" in r:
    row += f" compilations={r['compilations']}"
  return row + f" loss={r['loss_first']:.3f}->{r['loss_last']:.3f}"


def _variant_name(spec: dict) -> str:
  return (f"jaxpost remat={spec['remat']} scan={'on' if spec['scan'] else 'off'} attn={spec['attention']} "
          f"lp={spec['logprob_impl']}"
          + (f" packed<={spec['cudnn_max_segments']}" if spec.get("cudnn_max_segments") else "")
          + (f" accum={spec['grad_accum']}" if spec["grad_accum"] > 1 else ""))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  shape = p.add_argument_group("model and batch (default: the 1.24B model at 4 x 4096; --small: tiny)")
  for key in FULL:
    shape.add_argument(f"--{key}", type=int, default=None, help=f"default {FULL[key]} (--small: {SMALL[key]})")
  shape.add_argument("--tie", action=argparse.BooleanOptionalAction, default=True, help="tied embeddings")
  shape.add_argument("--small", action="store_true", help="tiny model and batch: CPU smoke run")
  plan = p.add_argument_group("implementation and memory plan")
  plan.add_argument("--dtype", default="bfloat16", choices=config_lib.DTYPES, help="compute dtype")
  plan.add_argument("--param_dtype", default="float32", choices=config_lib.DTYPES, help="master weight dtype")
  plan.add_argument("--attention", default="auto", choices=config_lib.ATTENTION_IMPLS)
  plan.add_argument("--logprob_impl", default="auto", choices=config_lib.LOGPROB_IMPLS,
                    help="auto (the config default) is chunked on GPU; PERF.md's baseline is naive")
  plan.add_argument("--cudnn_max_segments", default="0",
                    help="model.cudnn_max_segments: cuDNN's packed layout instead of a dense mask (0 = mask); "
                         "a comma-separated list runs one variant per value, e.g. 0,2")
  plan.add_argument("--remat", default="none", choices=config_lib.REMAT_POLICIES, help="ignored by --sweep")
  plan.add_argument("--scan", action=argparse.BooleanOptionalAction, default=False, help="scan over layers (ignored by --sweep)")
  plan.add_argument("--grad_accum", type=int, default=1)
  plan.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes (one may be -1)")
  plan.add_argument("--sweep", action="store_true", help="remat none/full/dots/offload x scan off/on, one row each")
  run = p.add_argument_group("run")
  run.add_argument("--hf", action=argparse.BooleanOptionalAction, default=None,
                   help="HF transformers + torch baseline (default: on when torch, transformers and CUDA exist)")
  run.add_argument("--peak_tflops", type=float, default=989.0, help="per-device dense bf16 peak for MFU")
  run.add_argument("--time_budget_s", type=float, default=None, help="stop starting (and stop) variants after this")
  run.add_argument("--timeout", type=float, default=900.0, help="seconds per variant subprocess")
  run.add_argument("--compiled_memory", action="store_true",
                   help="also print XLA's temp-buffer plan of the step (device and host GiB); the step then "
                        "compiles before the first call, which first_call_s no longer includes")
  run.add_argument("--profile", default=None,
                   help="trace two more steps of each variant into this directory and print where the device time "
                        "went (scripts/profile_summary.py)")
  run.add_argument("--json", default=None, help="also append each row's spec and result to this JSON-lines file")
  run.add_argument("--verbose", action="store_true", help="pass the children's stderr through")
  p.add_argument("--child", nargs=2, metavar=("KIND", "SPEC_JSON"), help=argparse.SUPPRESS)
  return p.parse_args(argv)


def _ints(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",")]
  except ValueError:
    raise SystemExit(f"--cudnn_max_segments: expected integers separated by commas, got {text!r}") from None


def make_spec(args) -> dict:
  """The child's measurement spec: shape from the preset (FULL or SMALL) unless given, plus the plan."""
  preset = SMALL if args.small else FULL
  spec = {k: preset[k] if getattr(args, k) is None else getattr(args, k) for k in FULL}
  mesh = tuple(int(x) for x in args.mesh.split(","))
  if len(mesh) != 3:
    raise SystemExit(f"--mesh: expected data,fsdp,tensor (3 sizes), got {args.mesh!r}")
  if spec["warmup"] < 1 or spec["steps"] < 1:
    raise SystemExit(f"--warmup ({spec['warmup']}) and --steps ({spec['steps']}) must be >= 1: the first call compiles")
  spec.update(tie=args.tie, dtype=args.dtype, param_dtype=args.param_dtype, attention=args.attention,
              logprob_impl=args.logprob_impl, cudnn_max_segments=_ints(args.cudnn_max_segments)[0], remat=args.remat,
              scan=args.scan, grad_accum=args.grad_accum,
              mesh=mesh, hf_force=bool(args.hf), compiled_memory=args.compiled_memory,
              profile=os.path.abspath(args.profile) if args.profile else None)
  return spec


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.child:
    return child_main(args.child[0], json.loads(args.child[1]))
  start = time.monotonic()
  spec = make_spec(args)
  from jaxpost.models.config import ModelConfig  # Pure Python param count; no JAX backend in the parent.
  num_params = ModelConfig(vocab_size=spec["vocab"], d_model=spec["d_model"], num_layers=spec["num_layers"],
                           num_heads=spec["num_heads"], num_kv_heads=spec["num_kv_heads"], head_dim=spec["head_dim"],
                           mlp_dim=spec["mlp_dim"], tie_embeddings=spec["tie"]).num_params()
  flops = train_flops(num_params, spec["num_layers"], spec["num_heads"] * spec["head_dim"], spec["batch"], spec["seq"])
  print("command: python scripts/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv))
  print(f"model: {num_params / 1e6:.2f}M params (tied embedding once: {spec['tie']}), d={spec['d_model']} "
        f"L={spec['num_layers']} H/K={spec['num_heads']}/{spec['num_kv_heads']} hd={spec['head_dim']} "
        f"mlp={spec['mlp_dim']} V={spec['vocab']}; batch {spec['batch']} x {spec['seq']} = "
        f"{spec['batch'] * spec['seq']} tokens/step; compute {spec['dtype']}, master {spec['param_dtype']}; "
        f"mesh (data,fsdp,tensor)={spec['mesh']}")
  print(f"FLOPs/step = 6*N*B*T + 6*L*(H*hd)*T*B*T (causal attention, 12*L*d*T/2 per token) = {flops:.4g}; "
        f"MFU vs {args.peak_tflops:g} TFLOP/s per device; step time = median of {spec['steps']} steps after "
        f"{spec['warmup']} warm-up calls (first call compiles)", flush=True)

  def remaining() -> float:
    if args.time_budget_s is None:
      return args.timeout
    return min(args.timeout, args.time_budget_s - (time.monotonic() - start))

  def measure(kind: str, name: str, s: dict) -> dict:
    left = remaining()
    if left < MIN_VARIANT_S:
      r = {"skipped": f"time budget of {args.time_budget_s:g} s spent ({max(left, 0):.0f} s left)"}
    else:
      r = run_child(kind, s, left, args.verbose)
    print(format_row(name, s, r, flops, args.peak_tflops), flush=True)
    if "profile" in r:
      print(r["profile"], flush=True)
    if "stderr_tail" in r:  # A one-shot device run must show why a variant failed.
      print("  | " + "\n  | ".join(r["stderr_tail"].strip().splitlines()[-8:]), flush=True)
    if args.json:
      with open(args.json, "a") as f:
        f.write(json.dumps(dict(name=name, kind=kind, spec=s, flops=flops, result=r, time=time.time())) + "\n")
    return r

  # HF runs right after the first jaxpost variant, so a tight --time_budget_s still yields the ratio.
  hf_wanted = args.hf if args.hf is not None else all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
  plans = [(remat, scan, segments) for remat, scan in (SWEEP if args.sweep else [(spec["remat"], spec["scan"])])
           for segments in _ints(args.cudnn_max_segments)]
  ours, hf = {}, None
  for i, (remat, scan, segments) in enumerate(plans):
    s = dict(spec, remat=remat, scan=scan, cudnn_max_segments=segments)
    r = measure("jaxpost", _variant_name(s), s)
    if "step_ms" in r:
      ours[_variant_name(s)] = r
      if len(ours) == 1:
        print(f"device: {r['device']} x {r['num_devices']}, jax {r['jax']}; jit cache entries of the step: "
              f"{r['jit_cache_size']}", flush=True)
    if i == 0:
      if hf_wanted:
        hf = measure("hf", "hf transformers+torch sdpa bf16 AdamW", spec)
      else:
        print("hf: skipped (--no-hf, or torch/transformers not importable)", flush=True)
  if hf and "step_ms" in hf:
    print(f"hf: {hf['device']}, torch {hf['torch']}, transformers {hf['transformers']}, "
          f"AdamW fused={hf['fused_adamw']} (fused on CUDA only), "
          f"{hf['num_params'] / 1e6:.2f}M params" +
          ("" if hf["num_params"] == num_params else f" (jaxpost counts {num_params / 1e6:.2f}M: shapes differ!)"))
    for name, r in ours.items():
      print(f"ratio jaxpost/hf tokens/s = {hf['step_ms'] / r['step_ms']:.2f}x  [{name}]")


if __name__ == "__main__":
  main()
