"""shard_map wrapper for the teacher-student divergence: tokens over the data axes, W replicated.

Each device runs token_divergence on its own token rows of h_s and h_t with both whole unembeddings (a
W sharded over any axis is gathered at the shard_map boundary, as FSDP would). The loss is per token,
so no collective is needed in the forward: sharded == one device up to the dots' tiling.

check_vma=False, as in kernels/logprobs/sharded.py: a custom_vjp cotangent for a replicated input would
not type-check otherwise. With it off, shard_map's transpose psums dW_s over the token shards, which is
exactly the full gradient; the teacher's cotangents are zero.
"""
from __future__ import annotations

import functools

import jax
from jax.sharding import PartitionSpec as P

from jaxpost.kernels.divergence.api import token_divergence
from jaxpost.kernels.logprobs.sharded import _axis_size, _place


def _local(h_s, w_s, h_t, w_t, **kw):
  """Per-shard body: h_s [n, D_s], h_t [n, D_t], w_s [D_s, V] and w_t [D_t, V] replicated."""
  return token_divergence(h_s, w_s, h_t, w_t, return_argmax=True, **kw)


def token_divergence_sharded(
    h_s: jax.Array,
    w_s: jax.Array,
    h_t: jax.Array,
    w_t: jax.Array,
    mesh: jax.sharding.Mesh,
    *,
    token_axes: tuple[str, ...] = ("data", "fsdp"),
    return_argmax: bool = False,
    **kwargs,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """token_divergence under jax.shard_map; outputs [N] sharded like the tokens.

  Args:
    h_s: [N, D_s], h_t: [N, D_t]; N must divide by the product of the token_axes sizes.
    w_s: [D_s, V], w_t: [D_t, V]: replicated on every token shard.
    mesh: a mesh holding token_axes.
    token_axes: mesh axes the N tokens are split over.
    return_argmax: also return argmax_s, argmax_t [N] int32.
    **kwargs: beta, temperature, student_softcap, teacher_softcap, impl, block_v (see token_divergence).
  """
  token_axes = tuple(token_axes)
  n_shards = _axis_size(mesh, token_axes)
  if h_s.shape[0] % n_shards:
    raise ValueError(f"N={h_s.shape[0]} not divisible by {n_shards} shards over {token_axes}")
  rows = P(token_axes)
  in_specs = (P(token_axes, None), P(), P(token_axes, None), P())
  args = [_place(x, mesh, spec) for x, spec in zip((h_s, w_s, h_t, w_t), in_specs)]
  loss, argmax_s, argmax_t = jax.shard_map(functools.partial(_local, **kwargs), mesh=mesh, in_specs=in_specs,
                                           out_specs=(rows, rows, rows), check_vma=False)(*args)
  return (loss, argmax_s, argmax_t) if return_argmax else loss
