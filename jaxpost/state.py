"""The train state: a plain dict pytree, created already sharded.

  state = {"step": int32 (), "params": {...}, "opt_state": optax state}

Parameters are initialised inside `jax.jit` with `out_shardings` from their logical axes, so no
device ever holds an unsharded copy; optimizer moments take their parameter's sharding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxpost import mesh as mesh_lib
from jaxpost.models import ModelConfig, Transformer
from jaxpost.models.abstract import abstract_model, param_shardings  # noqa: F401  (callers use state.abstract_model)


def init_params(cfg: ModelConfig, mesh: jax.sharding.Mesh, seed: int):
  """Fresh parameters (pure dict), each created directly with its sharding."""
  shardings = param_shardings(cfg, mesh)

  def init():
    return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(params=seed)), nnx.Param))

  return jax.jit(init, out_shardings=shardings)()


def state_shardings(params_shapes, params_shardings, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh):
  """Shardings of the whole state: moments follow their params, scalars are replicated."""
  rep = mesh_lib.replicated(mesh)
  abstract_opt = jax.eval_shape(tx.init, params_shapes)
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, params_shardings,
                              transform_non_params=lambda _: rep)
  return {"step": rep, "params": params_shardings, "opt_state": opt}


def create_state(params, tx: optax.GradientTransformation, shardings):
  """Wraps (sharded) params into a fresh train state with the given shardings."""
  def build(p):
    return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}
  return jax.jit(build, out_shardings=shardings)(params)


def abstract_state(shardings, params_shapes, tx):
  """ShapeDtypeStructs with shardings: the restore target for orbax."""
  def build(p):
    return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}
  shapes = jax.eval_shape(build, params_shapes)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
