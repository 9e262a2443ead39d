"""The offline loop (SFT today; RM and the DPO family later): batches come from JSONL files.

Reads top to bottom: mesh -> tokenizer and data -> model and sharded state (fresh, from another
run's params, or resumed) -> the jitted update step -> loop with metrics, eval and checkpoints.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from jaxpost import mesh as mesh_lib
from jaxpost import metrics as metrics_lib
from jaxpost import step as step_lib
from jaxpost.algorithms import sft
from jaxpost.config import ConfigError
from jaxpost.loops import common
from jaxpost.loops.common import NonFiniteLossError  # noqa: F401  (re-exported)
from jaxpost.data import pipeline
from jaxpost import tokenizers

ALGORITHMS = {"sft": sft}


def run(config, workdir: str) -> dict:
  """Trains per `config`, writing into `workdir`; returns the last logged metrics (+ eval_loss)."""
  # ---------------------------------------------------------------- Mesh
  mesh = mesh_lib.make_mesh(config)
  with jax.set_mesh(mesh):  # Kernels inside the step find it here to run under shard_map.
    return _train(config, workdir, mesh)


def _train(config, workdir: str, mesh) -> dict:
  algorithm = ALGORITHMS[config.algorithm]
  t = config.train

  # ---------------------------------------------------------------- Tokenizer and data
  if not config.tokenizer.path:
    raise ConfigError("config.tokenizer.path: empty; name a sentencepiece .model file")
  if not config.data.train_path:
    raise ConfigError("config.data.train_path: empty; name a JSONL file or glob")
  tokenizer = tokenizers.load(config.tokenizer.path)
  data_kwargs = dict(seq_len=config.data.seq_len, pack=config.data.pack, overlong=config.data.overlong)
  rows, data_stats = pipeline.build_dataset(common.split_paths(config.data.train_path), tokenizer, **data_kwargs)
  process_rows = t.batch_size // jax.process_count()
  train_iter = pipeline.make_train_iterator(rows, batch_size=process_rows, seed=t.seed, shuffle=config.data.shuffle,
                                            process_index=jax.process_index(), process_count=jax.process_count())
  eval_data = None
  if config.data.eval_path:
    eval_rows, _ = pipeline.build_dataset(common.split_paths(config.data.eval_path), tokenizer, **data_kwargs)
    eval_data = pipeline.eval_batches(eval_rows, process_rows)

  # ---------------------------------------------------------------- Model and sharded state
  writer = metrics_lib.MetricsWriter(workdir, total_steps=t.steps, progress=t.progress)
  setup = common.setup_state(config, workdir, mesh, vocab_size=tokenizer.vocab_size, total_updates=t.steps,
                             log=writer.log)
  graphdef, tx, schedule, shardings = setup.graphdef, setup.tx, setup.schedule, setup.shardings
  param_shardings, checkpointer, state = setup.param_shardings, setup.checkpointer, setup.state
  if setup.data_state is not None:
    train_iter.set_state(setup.data_state)
  model_cfg = setup.model_cfg
  start = int(state["step"])
  writer.log(f"model: {model_cfg.num_params():,} params; data: " +
             ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in data_stats.items()))

  # ---------------------------------------------------------------- Update step
  loss_fn = algorithm.make_loss_fn(graphdef, model_cfg.logprob_impl)
  batch_shardings = mesh_lib.batch_sharding(mesh)
  train_step = jax.jit(
      step_lib.make_train_step(loss_fn, algorithm.normalizer, tx, schedule, grad_accum=t.grad_accum),
      in_shardings=(shardings, batch_shardings, None), out_shardings=(shardings, mesh_lib.replicated(mesh)),
      donate_argnums=0)
  eval_step = jax.jit(step_lib.make_eval_step(loss_fn, algorithm.normalizer),
                      in_shardings=(param_shardings, batch_shardings, None))

  def evaluate(params) -> float:
    total, weight = 0.0, 0.0
    for batch in eval_data:
      s, w = eval_step(params, mesh_lib.global_batch(batch, mesh), None)
      total, weight = total + float(s), weight + float(w)
    return total / max(weight, 1.0)

  def save(step: int) -> None:
    checkpointer.save(step, state, train_iter.get_state())

  # ---------------------------------------------------------------- Loop
  summary, pending, window = {}, None, []
  tokens, last_time = 0, time.perf_counter()
  for step in range(start + 1, t.steps + 1):
    local = next(train_iter)
    tokens += int(np.count_nonzero(local["segment_ids"])) * jax.process_count()
    state, metrics = train_step(state, mesh_lib.global_batch(local, mesh), None)
    if pending is not None:  # Check the previous step while this one runs: no pipeline stall.
      common.check_finite(*pending)
    pending = (step, metrics)
    window.append(metrics["loss"])
    writer.advance()
    is_last = step == t.steps
    if (t.log_every and step % t.log_every == 0) or is_last:
      common.check_finite(step, metrics)
      now = time.perf_counter()
      values = dict(metrics)
      values["loss"] = float(np.mean([float(x) for x in window]))
      values["tokens_per_sec"] = tokens / (now - last_time)
      tokens, last_time, window = 0, now, []
      summary = writer.write(step, values)
      if t.stop_at_loss and summary["loss"] < t.stop_at_loss:
        writer.log(f"step {step}: loss {summary['loss']:.4f} < stop_at_loss {t.stop_at_loss}; stopping")
        is_last = True
    if eval_data and ((t.eval_every and step % t.eval_every == 0) or is_last):
      summary["eval_loss"] = evaluate(state["params"])
      writer.write(step, {"eval_loss": summary["eval_loss"]})
    if (t.checkpoint_every and step % t.checkpoint_every == 0) or is_last:
      common.check_finite(step, metrics)
      save(step)
    if is_last:
      break
  checkpointer.close()
  final = checkpointer.latest_step()
  writer.log(f"saved checkpoint step {final} in {checkpointer.directory}")
  writer.close()
  summary["step"] = final
  return summary

