"""Per-token log-probabilities (and entropy) of targets under a model: the one function every loss uses.

  logp_t = z_{t, y_t} - logsumexp_v z_{t, v},   z = softcap(h @ W_out) / temperature,   H_t = logsumexp(z_t) - E_p[z_t]

(softcap(x) = c tanh(x / c) for models with a final logit cap, Gemma 2; identity otherwise.)

`impl` picks how: `naive` materialises f32 logits (B, T, V); the kernels in `jaxpost.kernels.logprobs`
(`chunked`, `pallas`) never do.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpost import mesh as mesh_lib


def naive_token_logprobs(hidden, w_unembed, targets, *, temperature=1.0, logit_softcap=None, return_entropy=False):
  """hidden (N, D), w_unembed (D, V), targets (N,) -> logps (N,) f32 [, entropy (N,) f32]."""
  logits = jnp.dot(hidden, w_unembed, preferred_element_type=jnp.float32)  # (N, V)
  if logit_softcap:
    logits = logit_softcap * jnp.tanh(logits / logit_softcap)
  logits = logits / temperature
  lse = jax.nn.logsumexp(logits, axis=-1)  # (N,)
  logps = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0] - lse
  if not return_entropy:
    return logps
  probs = jax.nn.softmax(logits, axis=-1)
  return logps, lse - jnp.sum(probs * logits, axis=-1)


def _kernel_logprobs(impl):
  """A `jaxpost.kernels.logprobs` implementation; under a context mesh (jax.set_mesh) it runs per shard:
  tokens over (data, fsdp) and, when the tensor axis divides V, vocab-parallel over tensor."""
  def fn(hidden, w_unembed, targets, *, temperature=1.0, logit_softcap=None, return_entropy=False):
    from jaxpost.kernels.logprobs import token_logprobs, token_logprobs_sharded
    kwargs = dict(temperature=temperature, logit_softcap=logit_softcap or None, return_entropy=return_entropy,
                  impl=impl,
                  interpret=jax.default_backend() == "cpu" and impl == "pallas")
    found = mesh_lib.context_row_axes(hidden.shape[0])
    if found is None or not found[0]:
      return token_logprobs(hidden, w_unembed, targets, **kwargs)
    token_axes, mesh = found
    tensor = mesh.shape.get("tensor", 1)
    vocab_axis = "tensor" if tensor > 1 and w_unembed.shape[1] % tensor == 0 else None
    return token_logprobs_sharded(hidden, w_unembed, targets, mesh, token_axes=token_axes, vocab_axis=vocab_axis,
                                  **kwargs)
  return fn


def auto_token_logprobs(hidden, w_unembed, targets, **kwargs):
  """The fastest measured per platform: the Pallas kernel on TPU, the chunked kernel on GPU (the
  Pallas-Triton forward measured slower there; see docs/performance.md), naive on CPU (small vocabs)."""
  backend = jax.default_backend()
  impl = {"tpu": "pallas", "gpu": "chunked"}.get(backend, "naive")
  return IMPLEMENTATIONS[impl](hidden, w_unembed, targets, **kwargs)


IMPLEMENTATIONS = {"naive": naive_token_logprobs, "chunked": _kernel_logprobs("chunked"),
                   "pallas": _kernel_logprobs("pallas"), "auto": auto_token_logprobs}


def token_logprobs(graphdef, params, batch, *, impl: str = "naive", temperature: float = 1.0,
                   return_entropy: bool = False):
  """log p(targets | inputs) for a packed batch.

  batch: inputs, targets, positions, segment_ids, each (B, T) int32. Returns logps (B, T) f32
  [, entropy (B, T) f32]. Positions not in the loss still get a value; callers mask them.
  """
  model = nnx.merge(graphdef, params)
  hidden = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])  # (B, T, D)
  b, t, d = hidden.shape
  out = IMPLEMENTATIONS[impl](hidden.reshape(b * t, d), model.unembedding(), batch["targets"].reshape(b * t),
                              temperature=temperature, logit_softcap=model.cfg.final_logit_softcap or None,
                              return_entropy=return_entropy)
  return jax.tree.map(lambda x: x.reshape(b, t), out)
