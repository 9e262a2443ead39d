"""A training workdir on disk, read and written in one place (loops, export, generate, rewards):

  WORKDIR/model.json       the ModelConfig, tokenizer, HF source, init checkpoint, seed, params subtree
  WORKDIR/hf_config.json   the HF config.json of a run that started from a HF directory (export keeps it)
  WORKDIR/checkpoints/N/   orbax checkpoints (jaxpost/checkpoint.py): state + data-iterator position
  WORKDIR/metrics.jsonl, WORKDIR/tb/   metrics (jaxpost/metrics.py)

and the starting weights a run is built from (`base_params`: another run's checkpoint, a HF directory, or
the seeded init), which a LoRA run's base and an RL reference are rebuilt from on resume.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax

from jaxpost import checkpoint as checkpoint_lib
from jaxpost import state as state_lib
from jaxpost.config import ConfigError, tokenizer_path
from jaxpost.models import ModelConfig, lora

MODEL_RECORD = "model.json"


def write_model_record(workdir: str, model_cfg: ModelConfig, config, *, params_key: str = "") -> None:
  """workdir/model.json: the ModelConfig, the tokenizer and the HF source (whose config.json is kept as
  workdir/hf_config.json so an export keeps its token ids and other fields). `params_key` names the
  subtree of the checkpoint's params that holds this model (PPO: "policy", beside the critic)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  tokenizer = tokenizer_path(config)
  record = {"model": dataclasses.asdict(model_cfg), "tokenizer": os.path.abspath(tokenizer) if tokenizer else "",
            "hf_path": os.path.abspath(config.model.path) if config.model.path else "",
            # What identifies a LoRA run's frozen base (its checkpoints hold only the adapters):
            "init_checkpoint": os.path.abspath(config.model.init_checkpoint) if config.model.init_checkpoint else "",
            "seed": config.train.seed, "params_key": params_key}
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


def check_same_model(workdir: str, model_cfg: ModelConfig) -> None:
  """Before resuming: the model this config builds must be the one workdir/model.json recorded (its
  checkpoint's shapes). ConfigError naming the first field that differs (and how many more), instead of
  orbax's failure mid-restore."""
  if not os.path.isfile(os.path.join(workdir, MODEL_RECORD)):
    return  # A workdir from before the record: nothing to compare with.
  recorded, _ = read_model_record(workdir)
  diffs = [f"model.{f.name}={getattr(model_cfg, f.name)!r} (recorded: {getattr(recorded, f.name)!r})"
           for f in dataclasses.fields(ModelConfig) if getattr(model_cfg, f.name) != getattr(recorded, f.name)]
  if diffs:
    raise ConfigError(f"config.{diffs[0]}{' and ' + str(len(diffs) - 1) + ' more' if len(diffs) > 1 else ''} "
                      f"differs from the checkpoint's {os.path.join(workdir, MODEL_RECORD)}; resume with the "
                      "same model settings, or train in a new --workdir")


def base_params(model_cfg: ModelConfig, shardings, mesh, *, hf_path: str, init_checkpoint: str, seed: int, log):
  """The starting weights without adapters: another run's checkpoint, a HF directory, or a fresh init."""
  if init_checkpoint:
    _, shapes, _ = state_lib.abstract_model(dataclasses.replace(model_cfg, lora_rank=0))
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            lora.split(shapes)[0], lora.split(shardings)[0])  # (no scalar head: it starts fresh)
    log(f"initialised params from {init_checkpoint}")
    return checkpoint_lib.restore_params(init_checkpoint, abstract, source="config.model.init_checkpoint")
  if hf_path:
    from jaxpost.models import hf
    log(f"loaded {model_cfg.family} weights from {hf_path}")
    return hf.load_params(hf_path, model_cfg, shardings, seed=seed)
  return lora.split(state_lib.init_params(dataclasses.replace(model_cfg, lora_rank=0), mesh, seed))[0]


def load_trained(workdir: str, model_cfg: ModelConfig, record: dict, mesh, step: int | None = None) -> dict:
  """The whole model's params from a workdir's checkpoint (with its model.json record), sharded per the
  mesh: plain params, PPO's policy subtree, or a LoRA run's adapters joined with its rebuilt base."""
  _, shapes, _ = state_lib.abstract_model(model_cfg)
  shardings = state_lib.param_shardings(model_cfg, mesh)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  key = record.get("params_key", "")
  if not model_cfg.lora_rank:
    return checkpoint_lib.restore_params(workdir, abstract, step, params_key=key)
  adapters = checkpoint_lib.restore_params(workdir, lora.split(abstract)[1], step, params_key=key)
  base = base_params(model_cfg, shardings, mesh, hf_path=record["hf_path"], init_checkpoint=record["init_checkpoint"],
                     seed=record["seed"], log=lambda _: None)
  return lora.join(base, adapters)
