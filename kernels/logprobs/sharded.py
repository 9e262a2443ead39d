"""shard_map wrappers for token log-probs: tokens over the data axes, optionally vocab-parallel.

Data-parallel (vocab_axis=None): each device runs the op on its own token rows with the whole W
(W sharded over any axis is gathered at the shard_map boundary, as FSDP would).

Vocab-parallel (vocab_axis='tensor'): W is split along V into K shards; shard k computes, on its
columns only, lse_k, the target logit t_k (0 when the target lies elsewhere) and H_k. They combine
exactly as a log-sum-exp over shards (M is a stop-gradient shift, any value works):
    lse = M + log sum_k e^{lse_k - M}              t = sum_k t_k        logp = t - lse
    H   = lse - sum_k e^{lse_k - lse} (lse_k - H_k)      (lse_k - H_k = E_{p_k}[z] on shard k)
These are plain psum/pmax expressions, so autodiff through shard_map gives the gradients from the
per-shard custom_vjp (which accepts lse and H cotangents).

check_vma=False: pallas_call outputs would otherwise need per-version varying-axes annotations, and
a custom_vjp cotangent for a replicated input would not type-check. With it off, shard_map's
transpose psums the cotangents of inputs over the axes they are replicated on (dW over token
shards, dh over vocab shards) and divides replicated outputs' cotangents, which is exactly right
here.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxpost.kernels.logprobs.api import token_logprob_stats


def _axis_size(mesh, axes):
  size = 1
  for a in axes:
    if a not in mesh.shape:
      raise ValueError(f"mesh axes {tuple(mesh.shape)} have no axis {a!r}")
    size *= mesh.shape[a]
  return size


def _place(x, mesh, spec):
  """Lay x out as spec: shard_map on an Explicit-axes mesh requires it, on Auto it is a hint."""
  sharding = NamedSharding(mesh, spec)
  if all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return jax.reshard(x, sharding)
  return lax.with_sharding_constraint(x, sharding)


def _data_parallel_local(h, w, targets, **kw):
  """Per-shard body: h [n, D], w [D, V] replicated, targets [n]."""
  return token_logprob_stats(h, w, targets, **kw)[:2]


def _vocab_parallel_local(h, w, targets, *, vocab_axis, **kw):
  """Per-shard body: h [n, D], w [D, V/K], targets [n] (global ids)."""
  offset = lax.axis_index(vocab_axis) * w.shape[1]
  logp_k, entropy_k, lse_k = token_logprob_stats(h, w, targets - offset, **kw)  # (n,) each
  t_k = logp_k + lse_k  # target logit on this shard, 0 when the target is elsewhere
  shift = lax.pmax(lax.stop_gradient(lse_k), vocab_axis)  # (n,)
  lse = shift + jnp.log(lax.psum(jnp.exp(lse_k - shift), vocab_axis))
  logps = lax.psum(t_k, vocab_axis) - lse
  entropy = lse - lax.psum(jnp.exp(lse_k - lse) * (lse_k - entropy_k), vocab_axis)
  return logps, entropy


def token_logprobs_sharded(
    hidden: jax.Array,
    w_unembed: jax.Array,
    targets: jax.Array,
    mesh: jax.sharding.Mesh,
    *,
    token_axes: tuple[str, ...] = ("data", "fsdp"),
    vocab_axis: str | None = None,
    return_entropy: bool = False,
    **kwargs,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """token_logprobs under jax.shard_map; outputs [N] sharded like the tokens.

  Args:
    hidden: [N, D]; N must divide by the product of the token_axes sizes.
    w_unembed: [D, V]; V must divide by the vocab_axis size in vocab-parallel mode.
    targets: [N] int.
    mesh: a mesh holding token_axes (and vocab_axis).
    token_axes: mesh axes the N tokens are split over.
    vocab_axis: None for data-parallel only, else the mesh axis W's V is split over.
    **kwargs: temperature, logit_softcap, block_sizes, interpret, impl (see token_logprobs).
  """
  token_axes = tuple(token_axes)
  n_shards = _axis_size(mesh, token_axes)
  if hidden.shape[0] % n_shards:
    raise ValueError(f"N={hidden.shape[0]} not divisible by {n_shards} shards over {token_axes}")
  rows = P(token_axes)
  if vocab_axis is None:
    body = functools.partial(_data_parallel_local, **kwargs)
    w_spec = P()
  else:
    k = _axis_size(mesh, (vocab_axis,))
    if w_unembed.shape[1] % k:
      raise ValueError(f"V={w_unembed.shape[1]} not divisible by {k} shards over {vocab_axis!r}")
    body = functools.partial(_vocab_parallel_local, vocab_axis=vocab_axis, **kwargs)
    w_spec = P(None, vocab_axis)
  in_specs = (P(token_axes, None), w_spec, rows)
  args = [_place(x, mesh, spec) for x, spec in zip((hidden, w_unembed, targets), in_specs)]
  logps, entropy = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=(rows, rows),
                                   check_vma=False)(*args)
  return (logps, entropy) if return_entropy else logps
