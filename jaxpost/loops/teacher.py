"""A frozen teacher for distillation: a Hugging Face model directory or a jaxpost training workdir (its latest
checkpoint), loaded once, sharded on the training mesh by its own architecture's rules, never trained.

It may differ from the student in size and family; it must share the student's vocabulary (the divergence
compares distributions over the same token ids), else a ConfigError naming both sizes.
"""
from __future__ import annotations

import dataclasses
import glob
import os

from jaxpost import state as state_lib
from jaxpost import workdir as workdir_lib
from jaxpost.config import ConfigError
from jaxpost.models import ModelConfig, hf


@dataclasses.dataclass(frozen=True)
class Teacher:
  model_cfg: ModelConfig
  graphdef: object
  params: dict


def kind(path: str, key: str) -> str:
  """'hf' (config.json) or 'workdir' (model.json + checkpoints/); ConfigError naming `key` otherwise."""
  if os.path.isfile(os.path.join(path, "config.json")):
    return "hf"
  if os.path.isfile(os.path.join(path, workdir_lib.MODEL_RECORD)) and os.path.isdir(os.path.join(path, "checkpoints")):
    return "workdir"
  found = "has *.safetensors but no config.json" if glob.glob(os.path.join(path, "*.safetensors")) else (
      "does not exist" if not os.path.exists(path) else "holds neither config.json nor model.json + checkpoints/")
  raise ConfigError(f"config.{key}={path!r}: {found}; expected a Hugging Face model directory or a jaxpost "
                    "training workdir")


def load(path: str, mesh, *, vocab_size: int, key: str = "distill.teacher", log=print) -> Teacher:
  """The teacher at `path`, sharded per `mesh`; its vocabulary must have `vocab_size` entries (the student's)."""
  if kind(path, key) == "hf":
    cfg = hf.config_from_pretrained(path)
    record = None
  else:
    cfg, record = workdir_lib.read_model_record(path)
  if cfg.vocab_size != vocab_size:
    raise ConfigError(f"config.{key}={path!r}: the teacher's vocabulary has {cfg.vocab_size} entries, the student's "
                      f"{vocab_size}; distillation compares distributions over the same token ids, so both need "
                      "the same tokenizer")
  graphdef, _, _ = state_lib.abstract_model(cfg)
  if record is None:
    params = hf.load_params(path, cfg, state_lib.param_shardings(cfg, mesh))
  else:
    params = workdir_lib.load_trained(path, cfg, record, mesh)
  log(f"teacher: {cfg.family} {cfg.num_params():,} params from {path} (frozen)")
  return Teacher(cfg, graphdef, params)
