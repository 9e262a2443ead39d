"""Parameter counts and train-state memory of full fine-tuning vs LoRA vs QLoRA for one model.

  python scripts/bench_lora.py [--preset=qwen2.5-0.5b] [--rank=16]

Counts come from the model's abstract shapes (nothing is allocated): trained parameters, frozen
parameters, and the bytes the train state keeps resident: the trained params and their two AdamW moments
in f32, plus the frozen base (bf16 for LoRA, int4 + f32 per-channel scales via qwix for QLoRA).
Activations are the same in all three and are not counted.
"""
from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

PRESETS = {
    "qwen2.5-0.5b": dict(vocab_size=151936, d_model=896, num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                         mlp_dim=4864, qkv_bias=True, family="qwen2"),
    "llama-1b": dict(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                     mlp_dim=8192, family="llama"),
    "tiny": dict(vocab_size=512, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=384),
}


def _bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def plans(preset: str, rank: int) -> dict:
  from jaxpost import state
  from jaxpost.models import ModelConfig, lora
  cfg = ModelConfig(**PRESETS[preset])
  _, full_shapes, _ = state.abstract_model(cfg)
  lcfg = dataclasses.replace(cfg, lora_rank=rank)
  _, lora_shapes, _ = state.abstract_model(lcfg)
  base, adapters = lora.split(lora_shapes)
  bf16 = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.bfloat16), base)
  int4 = jax.eval_shape(lambda b: lora.quantize_base(b, "int4"), bf16)
  adam = lambda tree: 3 * _bytes(jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32), tree))
  return {
      "full": dict(trained=_count(full_shapes), frozen=0, bytes=adam(full_shapes)),
      "lora": dict(trained=_count(adapters), frozen=_count(base), bytes=adam(adapters) + _bytes(bf16)),
      "qlora": dict(trained=_count(adapters), frozen=_count(base), bytes=adam(adapters) + _bytes(int4)),
  }


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--preset", default="qwen2.5-0.5b", choices=sorted(PRESETS))
  parser.add_argument("--rank", type=int, default=16)
  args = parser.parse_args()
  print(f"{args.preset}, LoRA rank {args.rank} on q,k,v,o,gate,up,down; state = trained params + AdamW moments "
        "(f32) + frozen base")
  print(f"{'plan':6s} {'trained':>14s} {'frozen':>14s} {'state GiB':>10s}")
  for name, p in plans(args.preset, args.rank).items():
    print(f"{name:6s} {p['trained']:>14,} {p['frozen']:>14,} {p['bytes'] / 2**30:>10.3f}")


if __name__ == "__main__":
  main()
