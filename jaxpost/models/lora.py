"""LoRA adapters (Hu et al., 2021) and a quantised frozen base (QLoRA, Dettmers et al., 2023).

A projection y = x W (W reshaped to (in, out)) with an adapter on it becomes

  y = x dequant(W) + (alpha / r) (x A) B,     A (in, r) ~ kaiming-uniform,  B (r, out) = 0

so a fresh adapter leaves the model unchanged. The adapter is applied as two extra thin matmuls,
never merged into W during training or sampling: merging would materialise a full (in, out) copy of
every adapted weight per step, and in decoding re-read it, doubling weight traffic; (x A) B reads only
the (in + out) r adapter values.

Adapters are ordinary parameters named `<weight>_lora_a` / `<weight>_lora_b` beside their weight
(e.g. blocks/3/attn/q_lora_a), so the model, the shardings (logical axes) and checkpoints need nothing
special; `split` / `join` separate them from the frozen base, whose quantisable weights may be qwix
`QArray`s (int8, int4 or nf4 values with per-output-channel scales), dequantised one layer at a time
inside the forward.

Why not `qwix.apply_lora_to_model`: for NNX models it intercepts a single method (`__call__`), while
training calls `hidden`, the reward model `scores` and the sampler `decode_hidden`; and it finds weights
by walking tracers from each matmul back to a module attribute, which our per-block `nnx.merge` inside
`lax.scan` / `jax.checkpoint` defeats. qwix does supply the quantisation numerics (`qwix.quantize`).
"""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

# Adaptable projections: name -> how many leading axes of the weight are its `in` side.
ATTENTION_WEIGHTS = {"q": 1, "k": 1, "v": 1, "o": 2}
MLP_WEIGHTS = {"gate": 1, "up": 1, "down": 1}
TARGETS = tuple(ATTENTION_WEIGHTS) + tuple(MLP_WEIGHTS)
HF_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
            "down": "down_proj"}
QUANT_TYPES = ("none", "int8", "int4", "nf4")
SUFFIXES = ("_lora_a", "_lora_b")
HEAD = ("score_w", "score_b")  # A reward model's / critic's new head trains with the adapters.


def resolve_targets(spec: str) -> tuple[str, ...]:
  """`lora.target_modules`: comma-separated names (ours or HF's, e.g. q,v or q_proj,v_proj), "all", or
  "re:<regex>" over our names. Raises ValueError naming unknown entries."""
  spec = spec.strip()
  if spec in ("all", "all-linear"):
    return TARGETS
  if spec.startswith("re:"):
    pattern = re.compile(spec[3:])
    found = tuple(t for t in TARGETS if pattern.fullmatch(t) or pattern.fullmatch(HF_NAMES[t]))
    if not found:
      raise ValueError(f"config.lora.target_modules: regex {spec[3:]!r} matches none of {', '.join(TARGETS)}")
    return found
  hf = {v: k for k, v in HF_NAMES.items()}
  out = []
  for name in (s.strip() for s in spec.split(",") if s.strip()):
    name = hf.get(name, name)
    if name not in TARGETS:
      raise ValueError(f"config.lora.target_modules: {name!r} is not one of {', '.join(TARGETS)} "
                       f"(or {', '.join(HF_NAMES.values())})")
    out.append(name)
  if not out:
    raise ValueError("config.lora.target_modules: empty")
  return tuple(dict.fromkeys(out))


def add_adapters(module: nnx.Module, cfg, weights: dict[str, int], rngs: nnx.Rngs) -> None:
  """Creates `<w>_lora_a` (in, r) and `<w>_lora_b` (r, out) on `module` for each targeted weight."""
  if not cfg.lora_rank:
    return
  for name, in_dims in weights.items():
    if name not in cfg.lora_targets:
      continue
    w = getattr(module, name)
    shape, logical = w.get_value().shape, w.logical
    fan_in, fan_out = math.prod(shape[:in_dims]), math.prod(shape[in_dims:])
    bound = math.sqrt(6.0 / fan_in)  # He-uniform, as PEFT's kaiming_uniform(a=sqrt(5)) up to a constant.
    a = jax.random.uniform(rngs.params(), (fan_in, cfg.lora_rank), jnp.float32, -bound, bound)
    setattr(module, name + "_lora_a", nnx.LoRAParam(a.astype(cfg.weight_dtype), logical=(logical[0], None)))
    setattr(module, name + "_lora_b", nnx.LoRAParam(jnp.zeros((cfg.lora_rank, fan_out), cfg.weight_dtype),
                                                    logical=(None, logical[in_dims])))


def weight(variable: nnx.Variable, dtype) -> jax.Array:
  """A weight in the compute dtype, dequantised when the frozen base stores it as a qwix QArray."""
  value = variable.get_value()
  if not isinstance(value, jax.Array) and hasattr(value, "qvalue"):
    import qwix
    value = qwix.dequantize(value)
  return value.astype(dtype)


def project(module: nnx.Module, name: str, x: jax.Array, in_dims: int, scale: float) -> jax.Array:
  """x (N, in) @ module.<name> reshaped (in, out) [+ scale (x A) B] -> (N, out)."""
  w = weight(getattr(module, name), x.dtype)
  y = x @ w.reshape(math.prod(w.shape[:in_dims]), -1)  # (N, out)
  a = getattr(module, name + "_lora_a", None)
  if a is None:
    return y
  b = getattr(module, name + "_lora_b")
  return y + ((x @ a[...].astype(x.dtype)) @ b[...].astype(x.dtype)) * jnp.asarray(scale, x.dtype)  # (N, out)


# ----------------------------------------------------------------------------- params as pure dicts

def split(params: dict) -> tuple[dict, dict]:
  """(base, trained): two pure dicts with the same nesting, disjoint leaves; trained = the adapters (and a
  scalar head, which a reward model or critic must learn)."""
  base, adapters = {}, {}
  for key, value in params.items():
    if isinstance(value, dict):
      b, a = split(value)
      if b:
        base[key] = b
      if a:
        adapters[key] = a
    elif isinstance(key, str) and (key.endswith(SUFFIXES) or key in HEAD):
      adapters[key] = value
    else:
      base[key] = value
  return base, adapters


def join(base: dict, adapters: dict) -> dict:
  """The inverse of `split`: one pure dict the Transformer's graphdef merges with."""
  out = dict(base)
  for key, value in adapters.items():
    out[key] = join(out.get(key, {}), value) if isinstance(value, dict) else value
  return out


def disabled(adapters: dict) -> dict:
  """Zero adapters (fresh buffers, so they survive the train step donating the live ones): joined with
  the base they give exactly the base model, the reference of DPO / GRPO / PPO under LoRA, without a
  second copy of the weights. A trained head (score_w/b) is copied as it is."""
  return {k: disabled(v) if isinstance(v, dict) else (jnp.zeros_like(v) if k.endswith(SUFFIXES) else jnp.copy(v))
          for k, v in adapters.items()}


def merged(params: dict, cfg) -> dict:
  """Params with every adapter folded into its weight (W + scale A B, in W's layout) and removed:
  the plain model an export writes."""
  scale = cfg.lora_alpha / cfg.lora_rank

  def walk(tree):
    out = {}
    for key, value in tree.items():
      if isinstance(key, str) and key.endswith(SUFFIXES):
        continue
      if isinstance(value, dict):
        out[key] = walk(value)
      elif isinstance(key, str) and key + "_lora_a" in tree:
        a, b = tree[key + "_lora_a"], tree[key + "_lora_b"]
        delta = (a.astype(jnp.float32) @ b.astype(jnp.float32)) * scale  # (in, out)
        out[key] = (value.astype(jnp.float32) + delta.reshape(value.shape)).astype(value.dtype)
      else:
        out[key] = value
    return out
  return walk(params)


def quantize_base(base: dict, qtype: str, targets=TARGETS) -> dict:
  """The frozen base with every adaptable weight as a qwix QArray of `qtype` (per-output-channel absmax
  scales); embeddings, norms and biases stay as they are."""
  if qtype == "none":
    return base
  import qwix
  in_dims = {**ATTENTION_WEIGHTS, **MLP_WEIGHTS}

  def walk(tree, under_block):
    out = {}
    for key, value in tree.items():
      if isinstance(value, dict):
        out[key] = walk(value, under_block or key == "blocks")
      elif under_block and key in in_dims:
        n = in_dims[key]
        offset = value.ndim - (3 if key in ("q", "k", "v", "o") else 2)  # Stacked layers add a leading axis.
        channel_axes = tuple(range(offset + n, value.ndim)) + tuple(range(offset))
        out[key] = qwix.quantize(value, qtype, channelwise_axes=channel_axes, scale_dtype=jnp.float32)
      else:
        out[key] = value
    return out
  return walk(base, False)
