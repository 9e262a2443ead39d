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
import jax.numpy as jnp

from jaxpost import checkpoint as checkpoint_lib
from jaxpost import optim
from jaxpost import state as state_lib
from jaxpost.config import ConfigError
from jaxpost.models import ModelConfig, lora


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
  frozen_base: dict | None = None  # Under LoRA: the frozen (maybe quantised) base; state["params"] = adapters.
  mesh: object = None
  source: dict | None = None  # base_params' keywords: where the starting weights came from.

  def full_params(self, params: dict) -> dict:
    """The whole model's params (what graphdef merges with) from the trained ones."""
    return params if self.frozen_base is None else lora.join(self.frozen_base, params)

  def reference_params(self, params: dict) -> dict:
    """The frozen reference policy, the starting weights after any number of restarts: under LoRA the
    base with adapters disabled (no second copy of the weights); in a fresh run a copy of `params`; on
    resume the starting weights reloaded from their source (init_checkpoint, HF path, or the seeded init),
    never the resumed params."""
    if self.frozen_base is not None:
      return lora.join(self.frozen_base, lora.disabled(params))
    if self.resumed_step is None:
      return jax.tree.map(jnp.copy, params)
    return base_params(self.model_cfg, self.param_shardings, self.mesh, **{**self.source, "log": lambda _: None})

  def trainable_loss(self, loss_fn):
    """loss_fn over the whole model -> the same loss over the trained params (adapters under LoRA)."""
    if self.frozen_base is None:
      return loss_fn
    base = self.frozen_base

    def adapter_loss(adapters, batch, frozen=None):
      return loss_fn(lora.join(base, adapters), batch, frozen)
    return adapter_loss


MODEL_RECORD = "model.json"
TRAINING_FIELDS = ("dtype", "param_dtype", "attention", "cudnn_max_segments", "logprob_impl", "scan_layers", "remat",
                   "head")


def tokenizer_path(config) -> str:
  """config.tokenizer.path, or the HF model directory's own tokenizer when that is empty."""
  return config.tokenizer.path or config.model.path


def model_config(config, vocab_size: int | None) -> ModelConfig:
  """The architecture: from `model.path`'s config.json (training fields from config.model), else config.model;
  plus the LoRA adapters of `config.lora` (rank 0 = none)."""
  if config.model.path:
    from jaxpost.models import hf
    cfg = hf.config_from_pretrained(config.model.path, **{k: config.model[k] for k in TRAINING_FIELDS})
  else:
    cfg = ModelConfig.from_config(config.model, vocab_size=vocab_size)
  if "lora" in config and config.lora.rank:
    cfg = dataclasses.replace(cfg, lora_rank=config.lora.rank, lora_alpha=config.lora.alpha,
                              lora_targets=lora.resolve_targets(config.lora.target_modules))
  return cfg


def write_model_record(workdir: str, model_cfg: ModelConfig, config, *, params_key: str = "") -> None:
  """workdir/model.json: the ModelConfig, the tokenizer and the HF source (whose config.json is kept as
  workdir/hf_config.json so an export keeps its token ids and other fields). `params_key` names the
  subtree of the checkpoint's params that holds this model (PPO: "policy", beside the critic)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  record = {"model": dataclasses.asdict(model_cfg), "tokenizer": os.path.abspath(tokenizer_path(config)) if
            tokenizer_path(config) else "", "hf_path": os.path.abspath(config.model.path) if config.model.path else "",
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
  checkpoint's shapes). ConfigError naming every field that differs, instead of orbax's failure mid-restore."""
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


def fresh_adapters(model_cfg: ModelConfig, mesh, seed: int) -> dict:
  """New adapters (B = 0) only, created sharded; XLA drops the unused base initialisation."""
  shardings = lora.split(state_lib.param_shardings(model_cfg, mesh))[1]

  def init():
    from flax import nnx
    from jaxpost.models import Transformer
    params = nnx.to_pure_dict(nnx.state(Transformer(model_cfg, rngs=nnx.Rngs(params=seed)), nnx.Param))
    return lora.split(params)[1]
  return jax.jit(init, out_shardings=shardings)()


def frozen_base(config, base: dict, log) -> dict:
  """The LoRA base as kept for the run: cast to `lora.base_dtype`, then quantised per `lora.base_quant`."""
  dtype = config.lora.base_dtype
  if dtype:
    base = jax.jit(lambda b: jax.tree.map(lambda x: x.astype(dtype), b))(base)
  if config.lora.base_quant != "none":
    base = jax.jit(lambda b: lora.quantize_base(b, config.lora.base_quant))(base)
    log(f"frozen base quantised to {config.lora.base_quant} (qwix, per-output-channel scales)")
  return base


def setup_state(config, workdir: str, mesh, *, vocab_size: int, total_updates: int, log) -> Setup:
  """Model, optimizer and sharded state. Under LoRA (`lora.rank` > 0) the state holds only the adapters
  (and their optimizer moments); the base is loaded (again, on resume) and kept frozen in Setup.frozen_base."""
  t = config.train
  model_cfg = model_config(config, vocab_size)
  use_lora = bool(model_cfg.lora_rank)
  graphdef, param_shapes, _ = state_lib.abstract_model(model_cfg)
  tx, schedule = optim.make_optimizer(config.optim, total_updates)
  param_shardings = state_lib.param_shardings(model_cfg, mesh)
  trained_shapes, trained_shardings = param_shapes, param_shardings
  if use_lora:
    trained_shapes, trained_shardings = lora.split(param_shapes)[1], lora.split(param_shardings)[1]
  shardings = state_lib.state_shardings(trained_shapes, trained_shardings, tx, mesh)
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=t.keep_checkpoints)
  latest = checkpointer.latest_step()
  data_state, base = None, None
  source = dict(hf_path=config.model.path, init_checkpoint=config.model.init_checkpoint, seed=t.seed, log=log)
  if latest is not None:
    check_same_model(workdir, model_cfg)
    state, data_state = checkpointer.restore(latest, state_lib.abstract_state(shardings, trained_shapes, tx))
    log(f"resuming from checkpoint step {latest} in {checkpointer.directory}")
    if use_lora:
      base = base_params(model_cfg, param_shardings, mesh, **source)
  else:
    params = base_params(model_cfg, param_shardings, mesh, **source)
    if use_lora:
      base, params = params, fresh_adapters(model_cfg, mesh, t.seed)
    elif model_cfg.head == "scalar":  # base_params is the backbone only: a reward model's head starts fresh.
      params = lora.join(params, fresh_adapters(model_cfg, mesh, t.seed))
    state = state_lib.create_state(params, tx, shardings, t.seed)
    write_model_record(workdir, model_cfg, config)
  if use_lora:
    base = frozen_base(config, base, log)
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
    log(f"LoRA rank {model_cfg.lora_rank} on {','.join(model_cfg.lora_targets)}: {count(state['params']):,} "
        f"trained params, {count(lora.split(param_shapes)[0]):,} frozen")
  return Setup(model_cfg, graphdef, tx, schedule, param_shardings, shardings, checkpointer, state, data_state,
               latest, base, mesh, source)


def check_finite(step: int, metrics) -> None:
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise NonFiniteLossError(f"step {step}: loss is {loss}; stopping (last saved checkpoint is kept)")
