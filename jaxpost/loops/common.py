"""What both loops share: the model and its sharded train state, created fresh, from a Hugging Face
directory (`model.path`), from another run's params (`model.init_checkpoint`), or resumed from this
workdir's latest checkpoint. The workdir records the model (`model.json`) so export and generate can
rebuild it without the config."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

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


MODEL_RECORD = "model.json"
TRAINING_FIELDS = ("dtype", "param_dtype", "attention", "logprob_impl", "scan_layers", "remat", "head")


def tokenizer_path(config) -> str:
  """config.tokenizer.path, or the HF model directory's own tokenizer when that is empty."""
  return config.tokenizer.path or config.model.path


def model_config(config, vocab_size: int | None) -> ModelConfig:
  """The architecture: from `model.path`'s config.json (training fields from config.model), else config.model."""
  if config.model.path:
    from jaxpost.models import hf
    return hf.config_from_pretrained(config.model.path, **{k: config.model[k] for k in TRAINING_FIELDS})
  return ModelConfig.from_config(config.model, vocab_size=vocab_size)


def write_model_record(workdir: str, model_cfg: ModelConfig, config) -> None:
  """workdir/model.json: the ModelConfig, the tokenizer and the HF source (whose config.json is kept as
  workdir/hf_config.json so an export keeps its token ids and other fields)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  record = {"model": dataclasses.asdict(model_cfg), "tokenizer": os.path.abspath(tokenizer_path(config)) if
            tokenizer_path(config) else "", "hf_path": os.path.abspath(config.model.path) if config.model.path else ""}
  if config.model.path:
    shutil.copyfile(os.path.join(config.model.path, "config.json"), os.path.join(workdir, "hf_config.json"))
  with open(os.path.join(workdir, MODEL_RECORD), "w") as f:
    json.dump(record, f, indent=2)


def read_model_record(workdir: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, record) from workdir/model.json."""
  path = os.path.join(workdir, MODEL_RECORD)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: not found (is {workdir} a jaxpost training workdir?)")
  with open(path) as f:
    record = json.load(f)
  fields = dict(record["model"])
  fields = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in fields.items()}
  return ModelConfig(**fields), record


def setup_state(config, workdir: str, mesh, *, vocab_size: int, total_updates: int, log) -> Setup:
  t = config.train
  model_cfg = model_config(config, vocab_size)
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
    elif config.model.path:
      from jaxpost.models import hf
      params = hf.load_params(config.model.path, model_cfg, param_shardings, seed=t.seed)
      log(f"loaded {model_cfg.family} weights from {config.model.path}")
    else:
      params = state_lib.init_params(model_cfg, mesh, t.seed)
    state = state_lib.create_state(params, tx, shardings, t.seed)
    write_model_record(workdir, model_cfg, config)
  return Setup(model_cfg, graphdef, tx, schedule, param_shardings, shardings, checkpointer, state, data_state,
               latest)


def check_finite(step: int, metrics) -> None:
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise NonFiniteLossError(f"step {step}: loss is {loss}; stopping (last saved checkpoint is kept)")
