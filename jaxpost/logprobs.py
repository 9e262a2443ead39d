"""Per-token log-probabilities (and entropy) of targets under a model: the one function every loss uses.

  logp_t = z_{t, y_t} - logsumexp_v z_{t, v},   z = softcap(h @ W_out) / temperature,   H_t = logsumexp(z_t) - E_p[z_t]

(softcap(x) = c tanh(x / c) for models with a final logit cap, Gemma 2; identity otherwise.)

`impl` names an entry of the kernels' one table, `jaxpost.kernels.logprobs.api.IMPLEMENTATIONS`: `naive`
materialises f32 logits (B, T, V); `chunked` and `pallas` never do. This module adds what the model needs on
top of it: `auto` (per platform) and, under a mesh, running the kernels per shard.
"""
from __future__ import annotations

import jax
from flax import nnx

from jaxpost import mesh as mesh_lib


def auto_impl() -> str:
  """The fastest measured per platform: the Pallas kernel on TPU, the chunked kernel on GPU (the
  Pallas-Triton forward measured slower there; see docs/performance.md), naive on CPU (small vocabs)."""
  return {"tpu": "pallas", "gpu": "chunked"}.get(jax.default_backend(), "naive")


def flat_token_logprobs(hidden, w_unembed, targets, *, impl="naive", temperature=1.0, logit_softcap=None,
                        return_entropy=False):
  """hidden (N, D), w_unembed (D, V), targets (N,) -> logps (N,) f32 [, entropy (N,) f32], by the kernels'
  `impl` ('auto': `auto_impl()`). Under a context mesh (jax.set_mesh) `chunked` and `pallas` run per shard:
  tokens over (data, fsdp) and, when the tensor axis divides V, vocab-parallel over tensor; `naive` is plain
  XLA, which the compiler partitions itself."""
  # Imported at call time: the kernel package imports Pallas (TPU and Triton), importing this module need not.
  from jaxpost.kernels.logprobs import token_logprobs, token_logprobs_sharded
  impl = auto_impl() if impl == "auto" else impl
  kwargs = dict(temperature=temperature, logit_softcap=logit_softcap or None, return_entropy=return_entropy,
                impl=impl, interpret=jax.default_backend() == "cpu" and impl == "pallas")
  found = None if impl == "naive" else mesh_lib.context_row_axes(hidden.shape[0])
  if found is None or not found[0]:
    return token_logprobs(hidden, w_unembed, targets, **kwargs)
  token_axes, mesh = found
  tensor = mesh.shape.get("tensor", 1)
  vocab_axis = "tensor" if tensor > 1 and w_unembed.shape[1] % tensor == 0 else None
  return token_logprobs_sharded(hidden, w_unembed, targets, mesh, token_axes=token_axes, vocab_axis=vocab_axis,
                                **kwargs)


def naive_token_logprobs(hidden, w_unembed, targets, **kwargs):
  """`flat_token_logprobs` with impl='naive': full f32 logits at default matmul precision."""
  return flat_token_logprobs(hidden, w_unembed, targets, impl="naive", **kwargs)


def token_logprobs(graphdef, params, batch, *, impl: str = "naive", temperature: float = 1.0,
                   return_entropy: bool = False):
  """log p(targets | inputs) for a packed batch.

  batch: inputs, targets, positions, segment_ids, each (B, T) int32. Returns logps (B, T) f32
  [, entropy (B, T) f32]. Positions not in the loss still get a value; callers mask them.
  """
  model = nnx.merge(graphdef, params)
  hidden = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])  # (B, T, D)
  b, t, d = hidden.shape
  out = flat_token_logprobs(hidden.reshape(b * t, d), model.unembedding(), batch["targets"].reshape(b * t),
                            impl=impl, temperature=temperature, logit_softcap=model.cfg.final_logit_softcap or None,
                            return_entropy=return_entropy)
  return jax.tree.map(lambda x: x.reshape(b, t), out)
