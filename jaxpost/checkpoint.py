"""Orbax checkpoints in WORKDIR/checkpoints: the train state plus the data iterator's state.

Saves are asynchronous; a step counts as saved only once orbax has finalised it (`wait`), and
orbax writes into a temporary directory that is renamed at the end, so a half-written checkpoint is
never the latest one.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with items `state` (pytree) and `data` (JSON)."""

  def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict | None) -> None:
    args = {"state": ocp.args.PyTreeSave(state)}
    if data_state is not None:
      args["data"] = ocp.args.JsonSave(data_state)
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, step: int, abstract_state, with_data: bool = True):
    """Returns (state with the shardings of `abstract_state`, data state dict or None). Entries of the
    saved state that `abstract_state` lacks are not read (checkpoints before 2026-12 also hold an unused
    "rng" key)."""
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding) if getattr(s, "sharding", None)
                                else ocp.RestoreArgs(), abstract_state)
    args = {"state": ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args, partial_restore=True)}
    has_data = with_data and "data" in (self.manager.item_metadata(step) or {})
    if has_data:
      args["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], (restored["data"] if has_data else None)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(workdir: str, abstract_params, step: int | None = None, *, params_key: str = "",
                   source: str = ""):
  """Params of the latest (or the given) checkpoint in another run's workdir (e.g. SFT starting from a
  base model, or an export). `abstract_params`: ShapeDtypeStructs with shardings. The optimizer state
  there is not read. `params_key`: read the params[params_key] subtree (PPO's "policy"). `source`: the
  setting that named `workdir` (e.g. "config.model.init_checkpoint"), for errors; default the path itself."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  named = f"{source}={workdir}" if source else workdir
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"{named}: no checkpoint in {directory}")
  if step is None:
    step = manager.latest_step()
  elif step not in steps:
    raise FileNotFoundError(f"{named}: no checkpoint for step {step} in {directory} (saved steps: {sorted(steps)})")
  target = {"params": {params_key: abstract_params} if params_key else abstract_params}
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      target, restore_args=jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target),
      partial_restore=True)))
  manager.close()
  params = restored["state"]["params"]
  return params[params_key] if params_key else params
