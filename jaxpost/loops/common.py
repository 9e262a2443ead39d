"""What both loops share: the model and its sharded train state, created fresh, from another run's
params (`model.init_checkpoint`), or resumed from this workdir's latest checkpoint."""
from __future__ import annotations

import dataclasses
import math

import jax

from jaxpost import checkpoint as checkpoint_lib
from jaxpost import optim
from jaxpost import state as state_lib
from jaxpost.models import ModelConfig


def split_paths(spec: str) -> list[str]:
  """`config.data.*_path`: comma-separated files or globs -> list."""
  return [p.strip() for p in spec.split(",") if p.strip()]


class NonFiniteLossError(FloatingPointError):
  pass


@dataclasses.dataclass
class Setup:
  model_cfg: ModelConfig
  graphdef: object
  tx: object
  schedule: object
  param_shardings: object
  shardings: object
  checkpointer: checkpoint_lib.Checkpointer
  state: dict
  data_state: dict | None   # The iterator/loop state saved with the resumed checkpoint (None if fresh).
  resumed_step: int | None  # Checkpoint step resumed from (None if fresh).


def setup_state(config, workdir: str, mesh, *, vocab_size: int, total_updates: int, log) -> Setup:
  t = config.train
  model_cfg = ModelConfig.from_config(config.model, vocab_size=vocab_size)
  graphdef, param_shapes, _ = state_lib.abstract_model(model_cfg)
  tx, schedule = optim.make_optimizer(config.optim, total_updates)
  param_shardings = state_lib.param_shardings(model_cfg, mesh)
  shardings = state_lib.state_shardings(param_shapes, param_shardings, tx, mesh)
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=t.keep_checkpoints)
  latest = checkpointer.latest_step()
  data_state = None
  if latest is not None:
    state, data_state = checkpointer.restore(latest, state_lib.abstract_state(shardings, param_shapes, tx))
    log(f"resuming from checkpoint step {latest} in {checkpointer.directory}")
  else:
    if config.model.init_checkpoint:
      abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              param_shapes, param_shardings)
      params = checkpoint_lib.restore_params(config.model.init_checkpoint, abstract)
      log(f"initialised params from {config.model.init_checkpoint}")
    else:
      params = state_lib.init_params(model_cfg, mesh, t.seed)
    state = state_lib.create_state(params, tx, shardings, t.seed)
  return Setup(model_cfg, graphdef, tx, schedule, param_shardings, shardings, checkpointer, state, data_state,
               latest)


def check_finite(step: int, metrics) -> None:
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise NonFiniteLossError(f"step {step}: loss is {loss}; stopping (last saved checkpoint is kept)")
