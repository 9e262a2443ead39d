"""Per-token log-probabilities (and entropy) of targets under a model: the one function every loss uses.

  logp_t = z_{t, y_t} - logsumexp_v z_{t, v},   z = h @ W_out / temperature,   H_t = logsumexp(z_t) - E_p[z_t]

`impl` picks how: `naive` materialises f32 logits (B, T, V); the kernels in `jaxpost.kernels.logprobs`
(`chunked`, `pallas`) never do.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def naive_token_logprobs(hidden, w_unembed, targets, *, temperature=1.0, return_entropy=False):
  """hidden (N, D), w_unembed (D, V), targets (N,) -> logps (N,) f32 [, entropy (N,) f32]."""
  logits = jnp.dot(hidden, w_unembed, preferred_element_type=jnp.float32) / temperature  # (N, V)
  lse = jax.nn.logsumexp(logits, axis=-1)  # (N,)
  logps = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0] - lse
  if not return_entropy:
    return logps
  probs = jax.nn.softmax(logits, axis=-1)
  return logps, lse - jnp.sum(probs * logits, axis=-1)


def _kernel_logprobs(impl):
  def fn(hidden, w_unembed, targets, *, temperature=1.0, return_entropy=False):
    from jaxpost.kernels.logprobs import token_logprobs  # Imported lazily: kernels are optional here.
    return token_logprobs(hidden, w_unembed, targets, temperature=temperature, return_entropy=return_entropy,
                          impl=impl, interpret=jax.default_backend() == "cpu" and impl == "pallas")
  return fn


IMPLEMENTATIONS = {"naive": naive_token_logprobs, "chunked": _kernel_logprobs("chunked"),
                   "pallas": _kernel_logprobs("pallas")}


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
                              temperature=temperature, return_entropy=return_entropy)
  return jax.tree.map(lambda x: x.reshape(b, t), out)
