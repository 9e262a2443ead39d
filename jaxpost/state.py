"""The train state: a plain dict pytree, created already sharded.

  state = {"step": int32 (), "params": {...}, "opt_state": optax state, "rng": uint32 (2,)}

Parameters are initialised inside `jax.jit` with `out_shardings` from their logical axes, so no
device ever holds an unsharded copy; optimizer moments take their parameter's sharding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding

from jaxpost import mesh as mesh_lib
from jaxpost.models import ModelConfig, Transformer


def abstract_model(cfg: ModelConfig):
  """(graphdef, abstract params pure dict, logical-axes tree) without allocating anything."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model, nnx.Param)
  is_var = lambda x: isinstance(x, nnx.Variable)
  logical = jax.tree.map(lambda v: v.logical, params, is_leaf=is_var)
  shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype), params, is_leaf=is_var)
  return graphdef, nnx.to_pure_dict(shapes), nnx.to_pure_dict(logical)


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh):
  _, shapes, logical = abstract_model(cfg)
  return jax.tree.map(lambda s, names: NamedSharding(mesh, mesh_lib.logical_to_spec(names, s.shape, mesh)),
                      shapes, logical, is_leaf=lambda x: isinstance(x, tuple))


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
  return {"step": rep, "params": params_shardings, "opt_state": opt, "rng": rep}


def create_state(params, tx: optax.GradientTransformation, shardings, seed: int):
  """Wraps (sharded) params into a fresh train state with the given shardings."""
  def build(p):
    return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p),
            "rng": jax.random.PRNGKey(seed + 1)}
  return jax.jit(build, out_shardings=shardings)(params)


def abstract_state(shardings, params_shapes, tx):
  """ShapeDtypeStructs with shardings: the restore target for orbax."""
  def build(p):
    return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p),
            "rng": jax.random.PRNGKey(0)}
  shapes = jax.eval_shape(build, params_shapes)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
