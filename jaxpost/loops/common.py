"""What the loops share: the model and its sharded train state, created fresh, from a Hugging Face
directory (`model.path`), from another run's params (`model.init_checkpoint`), or resumed from this
workdir's latest checkpoint. The workdir's layout and the starting weights are jaxpost/workdir.py's."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxpost import checkpoint as checkpoint_lib
from jaxpost import optim
from jaxpost import state as state_lib
from jaxpost.config import tokenizer_path  # noqa: F401  (the loops call common.tokenizer_path)
from jaxpost.models import ModelConfig, lora
from jaxpost.workdir import base_params, check_same_model, write_model_record


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


TRAINING_FIELDS = ("dtype", "param_dtype", "attention", "cudnn_max_segments", "logprob_impl", "scan_layers", "remat",
                   "head")


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
