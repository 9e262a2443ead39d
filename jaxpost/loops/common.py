"""What the loops share: the model and its sharded train state, created fresh, from a Hugging Face
directory (`model.path`), from another run's params (`model.init_checkpoint`), or resumed from this
workdir's latest checkpoint; the tokenizer; the end of a step (log, evaluate, checkpoint, preemption) and
of a run. The workdir's layout and the starting weights are jaxpost/workdir.py's."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpost import checkpoint as checkpoint_lib
from jaxpost import mesh as mesh_lib
from jaxpost import optim
from jaxpost import state as state_lib
from jaxpost import step as step_lib
from jaxpost import tokenizers
from jaxpost.config import ConfigError, tokenizer_path
from jaxpost.loops import critic as critic_lib
from jaxpost.models import ModelConfig, Transformer, hf, lora
from jaxpost.workdir import base_params, check_same_model, write_model_record


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
  value_cfg: ModelConfig | None = None  # With a critic: state["params"] = {"policy": ..., "value": ...}.
  value_graphdef: object = None

  def full_params(self, params: dict) -> dict:
    """The whole model's params (what graphdef merges with) from the trained ones."""
    return params if self.frozen_base is None else lora.join(self.frozen_base, params)

  def policy_params(self, params: dict) -> dict:
    """The policy's trained params (adapters under LoRA) from the state's params (which add the critic's)."""
    return params if self.value_cfg is None else params["policy"]

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


def load_tokenizer(config):
  if not tokenizer_path(config):
    raise ConfigError("config.tokenizer.path: empty; name a sentencepiece .model file or a HF tokenizer folder")
  return tokenizers.load(tokenizer_path(config))


def setup_state(config, workdir: str, mesh, *, vocab_size: int, total_updates: int, log,
                critic: bool = False) -> Setup:
  """Model, optimizer and sharded state. Under LoRA (`lora.rank` > 0) the state holds only the adapters
  (and their optimizer moments); the base is loaded (again, on resume) and kept frozen in Setup.frozen_base.
  With `critic`, the state's params are {"policy": ..., "value": the critic's} (see loops/critic.py)."""
  t = config.train
  model_cfg = model_config(config, vocab_size)
  use_lora = bool(model_cfg.lora_rank)
  graphdef, param_shapes, _ = state_lib.abstract_model(model_cfg)
  tx, schedule = optim.make_optimizer(config.optim, total_updates)
  param_shardings = state_lib.param_shardings(model_cfg, mesh)
  trained_shapes, trained_shardings = param_shapes, param_shardings
  if use_lora:
    trained_shapes, trained_shardings = lora.split(param_shapes)[1], lora.split(param_shardings)[1]
  value_cfg = value_graphdef = None
  if critic:
    value_cfg = critic_lib.value_config(config, model_cfg)
    value_graphdef, value_shapes, _ = state_lib.abstract_model(value_cfg)
    value_shardings = state_lib.param_shardings(value_cfg, mesh)
    trained_shapes = {"policy": trained_shapes, "value": value_shapes}
    trained_shardings = {"policy": trained_shardings, "value": value_shardings}
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
    if critic:
      params = {"policy": params, "value": critic_lib.initial_params(config, value_cfg, value_shardings, mesh, log)}
    state = state_lib.create_state(params, tx, shardings)
    del params  # (create_state may copy: keep no second reference to the starting weights.)
    write_model_record(workdir, model_cfg, config, params_key="policy" if critic else "")
  if use_lora:
    base = frozen_base(config, base, log)
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
    log(f"LoRA rank {model_cfg.lora_rank} on {','.join(model_cfg.lora_targets)}: {count(state['params']):,} "
        f"trained params, {count(lora.split(param_shapes)[0]):,} frozen")
  return Setup(model_cfg, graphdef, tx, schedule, param_shardings, shardings, checkpointer, state, data_state,
               latest, base, mesh, source, value_cfg, value_graphdef)


def check_finite(step: int, metrics) -> None:
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise NonFiniteLossError(f"step {step}: loss is {loss}; stopping (last saved checkpoint is kept)")


def due(every: int, step: int, is_last: bool) -> bool:
  """Whether a periodic action (log, eval, checkpoint) runs at `step`: every `every` steps and at the end."""
  return bool(every and step % every == 0) or is_last


def make_update_step(setup, loss_fn, normalizer, mesh, *, grad_accum: int):
  """The generic train step (jaxpost/step.py) jitted with the state's and the batch's shardings, the
  state donated; under LoRA the loss is taken w.r.t. the adapters only."""
  step = step_lib.make_train_step(setup.trainable_loss(loss_fn), normalizer, setup.tx, setup.schedule,
                                  grad_accum=grad_accum)
  return jax.jit(step, in_shardings=(setup.shardings, mesh_lib.batch_sharding(mesh), None),
                 out_shardings=(setup.shardings, mesh_lib.replicated(mesh)), donate_argnums=0)


def finish(checkpointer, writer, stop) -> int | None:
  """The end of a run: waits for the last save, logs it, closes the writer; re-raises a preemption the
  processes agreed on. Returns the last saved step."""
  checkpointer.close()
  final = checkpointer.latest_step()
  writer.log(f"saved checkpoint step {final} in {checkpointer.directory}")
  writer.close()
  if stop.agreed:
    raise stop.preempted(final)
  return final
