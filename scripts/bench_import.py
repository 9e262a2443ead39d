"""Peak host memory of importing a Hugging Face checkpoint with `jaxpost.models.from_pretrained`.

  python scripts/bench_import.py [--gb=1.0] [--dir=/tmp/bench_import]

Writes a random Llama-shaped bf16 checkpoint of about `--gb` GiB (sharded safetensors with an index,
as the hub stores them), then imports it in a fresh process and prints the checkpoint size, the largest
tensor, and the process's peak RSS above its baseline. On CPU the loaded weights themselves live in
host RAM, so the floor is the checkpoint size; a loader that materialised the whole file first would
peak near twice that.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _write(directory: str, gb: float) -> dict:
  import ml_dtypes
  import numpy as np
  from jaxpost.models import ModelConfig, hf, safetensors_io
  layers = max(1, int(round(gb * 2**30 / 2 / (4 * 2048 * 2048 + 3 * 2048 * 8192) - 1.0)))
  cfg = ModelConfig(vocab_size=32000, d_model=2048, num_layers=layers, num_heads=16, num_kv_heads=16, head_dim=128,
                    mlp_dim=8192, tie_embeddings=True)
  rng = np.random.default_rng(0)

  def tensors():
    for _, name, in_dims in hf._entries(cfg):  # noqa: SLF001  (benchmark: the same names an export writes)
      shape = _hf_shape(cfg, name)
      yield name, (rng.standard_normal(shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)

  safetensors_io.write(directory, tensors(), max_shard_bytes=400 * 2**20)
  hf_cfg = hf.config_to_hf(cfg)
  hf_cfg["dtype"] = "bfloat16"
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_cfg, f)
  return {"params": cfg.num_params(), "layers": layers}


def _hf_shape(cfg, name: str) -> tuple:
  d, f, v, q = cfg.d_model, cfg.mlp_dim, cfg.vocab_size, cfg.num_heads * cfg.head_dim
  kv = cfg.num_kv_heads * cfg.head_dim
  if "embed_tokens" in name:
    return (v, d)
  if name.endswith("norm.weight") or "layernorm" in name:
    return (d,)
  return {"q_proj": (q, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, q), "gate_proj": (f, d),
          "up_proj": (f, d), "down_proj": (d, f)}[name.split(".")[-2]]


def _current_rss_kib() -> int:
  """Resident set now (ru_maxrss is the lifetime peak, which start-up transients inflate)."""
  with open("/proc/self/status") as f:
    return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def _child(directory: str) -> None:
  import jax
  from jaxpost.models import hf
  jax.numpy.zeros(1).block_until_ready()  # Runtime up before the baseline.
  base = _current_rss_kib()
  import time
  start = time.perf_counter()
  model = hf.from_pretrained(directory, dtype="bfloat16")
  jax.block_until_ready(model.embed.embedding[...])
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(json.dumps({"baseline_mib": base / 1024, "peak_mib": peak / 1024, "import_s": seconds}))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--gb", type=float, default=1.0)
  parser.add_argument("--dir", default="/tmp/bench_import")
  parser.add_argument("--child", action="store_true")
  args = parser.parse_args()
  if args.child:
    return _child(args.dir)
  info = _write(args.dir, args.gb)
  files = [f for f in os.listdir(args.dir) if f.endswith(".safetensors")]
  size = sum(os.path.getsize(os.path.join(args.dir, f)) for f in files)
  largest = 32000 * 2048 * 2
  out = subprocess.run([sys.executable, __file__, "--child", f"--dir={args.dir}"], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if out.returncode:
    sys.exit(out.stderr[-3000:])
  child = json.loads(out.stdout.strip().splitlines()[-1])
  extra = child["peak_mib"] - child["baseline_mib"]
  print(f"checkpoint: {info['params'] / 1e6:.0f}M params, {info['layers']} layers, {len(files)} shards, "
        f"{size / 2**20:.0f} MiB bf16; largest tensor {largest / 2**20:.0f} MiB")
  print(f"import: {child['import_s']:.1f} s; peak RSS {child['peak_mib']:.0f} MiB = baseline "
        f"{child['baseline_mib']:.0f} + {extra:.0f} MiB ({extra / (size / 2**20):.2f}x the checkpoint, "
        f"{(extra - size / 2**20) / 2**0:.0f} MiB above it)")


if __name__ == "__main__":
  main()
