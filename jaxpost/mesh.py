"""Device mesh from config, the logical-axis table, and sharding helpers.

Parameters carry logical axis names (`nnx.Param(..., logical=("embed", "mlp"))`); `LOGICAL_RULES`
maps each name to a mesh axis. That table is the only place that decides how a model is sharded.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of axes, or None = replicated).
LOGICAL_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "vocab": "tensor",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "layers": None,
    "norm": None,
}


def mesh_shape(config, num_devices: int) -> dict[str, int]:
  """Resolves the one `-1` axis of `config.mesh` against the device count."""
  fixed = 1
  for axis in MESH_AXES:
    fixed *= max(config.mesh[axis], 1)
  return {a: (num_devices // fixed if config.mesh[a] == -1 else config.mesh[a]) for a in MESH_AXES}


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh sized by `config.mesh`, all axes Auto (GSPMD propagation)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(config, len(devices))
  names = MESH_AXES
  return jax.make_mesh(tuple(shape[a] for a in names), names,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names), devices=devices)


def logical_to_spec(logical: tuple, shape: tuple, mesh: jax.sharding.Mesh) -> P:
  """PartitionSpec for an array with these logical axes; a mesh axis that does not divide the
  dimension (or is already used) is dropped, so odd sizes replicate instead of failing."""
  if len(logical) < len(shape):  # Stacked (scanned) layers add a leading axis.
    logical = ("layers",) * (len(shape) - len(logical)) + tuple(logical)
  used, spec = set(), []
  for name, dim in zip(logical, shape):
    axes = LOGICAL_RULES.get(name) if name else None
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    kept = []
    for a in axes:
      size = mesh.shape[a]
      if a not in used and size > 1 and dim % (size * int(np.prod([mesh.shape[k] for k in kept]))) == 0:
        kept.append(a)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*spec)


def shard_like(x: jax.Array, logical: tuple) -> jax.Array:
  """Constrains x to the mesh axes of its logical axes under a context mesh (`jax.set_mesh`); else x."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical, x.shape, mesh))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Rows (the leading axis, any rank) over (data, fsdp); the other dimensions replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Process-local rows -> global arrays sharded over (data, fsdp). Works unchanged multi-host."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh), v) for k, v in local.items()}


def global_batch_from_full(full: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """The whole global batch, the same on every process (e.g. a rollout all processes sampled) -> global
  arrays sharded over (data, fsdp); each process places only the rows its own devices hold."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index]) for k, v in full.items()}


def context_row_axes(rows: int) -> tuple[tuple[str, ...], jax.sharding.AbstractMesh] | None:
  """Under `jax.set_mesh`: the (data, fsdp) axes that split `rows` evenly (empty tuple if they do not),
  and the mesh; None when there is no mesh or it has one device. Used by kernels run under shard_map."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return None
  axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
  ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  return (axes if rows % ways == 0 else ()), mesh
