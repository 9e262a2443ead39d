"""The model's parameter tree without allocating it: shapes, logical axes and the shardings they give.

`abstract_model` traces the Transformer under `nnx.eval_shape`; `param_shardings` maps each parameter's
logical axes through jaxpost.mesh's table. The train state (jaxpost/state.py) and the HF import
(models/hf.py) both build on these, so they live with the model rather than above it.
"""
from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import NamedSharding

from jaxpost import mesh as mesh_lib
from jaxpost.models.config import ModelConfig
from jaxpost.models.transformer import Transformer


def abstract_model(cfg: ModelConfig):
  """(graphdef, abstract params pure dict, logical-axes tree) without allocating anything."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model, nnx.Param)
  is_var = lambda x: isinstance(x, nnx.Variable)
  logical = jax.tree.map(lambda v: v.logical, params, is_leaf=is_var)
  shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype), params, is_leaf=is_var)
  return graphdef, nnx.to_pure_dict(shapes), nnx.to_pure_dict(logical)


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh):
  """A NamedSharding per parameter (pure dict like the params), from its logical axes on `mesh`."""
  _, shapes, logical = abstract_model(cfg)
  return jax.tree.map(lambda s, names: NamedSharding(mesh, mesh_lib.logical_to_spec(names, s.shape, mesh)),
                      shapes, logical, is_leaf=lambda x: isinstance(x, tuple))
