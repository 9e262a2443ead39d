"""The offline loop (SFT, reward models, the DPO family): batches come from JSONL files.

Reads top to bottom: mesh -> tokenizer and data -> model and sharded state (fresh, from another
run's params, or resumed) -> the jitted update step -> loop with metrics, eval and checkpoints.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from jaxpost import mesh as mesh_lib
from jaxpost import metrics as metrics_lib
from jaxpost import preemption
from jaxpost import step as step_lib
from jaxpost.algorithms import registry
from jaxpost.algorithms.base import Models
from jaxpost.config import ConfigError
from jaxpost.data import pipeline
from jaxpost.data.jsonl import split_paths
from jaxpost.loops import common, preference


def run(config, workdir: str) -> dict:
  """Trains per `config`, writing into `workdir`; returns the last logged metrics (+ eval_loss)."""
  # ---------------------------------------------------------------- Mesh
  mesh = mesh_lib.make_mesh(config)
  # SIGTERM / SIGINT: finish the step, save, raise preemption.Preempted (exit 143 / 130).
  with jax.set_mesh(mesh), preemption.StopRequest(mesh) as stop:  # set_mesh: kernels run under shard_map.
    return _train(config, workdir, mesh, stop)


def _train(config, workdir: str, mesh, stop: preemption.StopRequest) -> dict:
  algorithm = registry.get(config.algorithm)
  t = config.train

  # ---------------------------------------------------------------- Tokenizer and data
  tokenizer = common.load_tokenizer(config)
  if not config.data.train_path:
    raise ConfigError("config.data.train_path: empty; name a JSONL file or glob")
  layout = algorithm.data(config)
  pairs = layout in preference.PAIR_DATA  # rm, dpo: one pair (or KTO example) per row, fields (R, 2, T).
  if pairs:
    build = lambda paths: preference.build_dataset(config, paths, tokenizer, layout)
  else:
    build = lambda paths: pipeline.build_dataset(paths, tokenizer, seq_len=config.data.seq_len,
                                                 pack=config.data.pack is not False, overlong=config.data.overlong)
  rows, data_stats = build(split_paths(config.data.train_path))
  eval_rows = build(split_paths(config.data.eval_path))[0] if config.data.eval_path else None

  # ---------------------------------------------------------------- Model and sharded state
  writer = metrics_lib.MetricsWriter(workdir, total_steps=t.steps, progress=t.progress)
  setup = common.setup_state(config, workdir, mesh, vocab_size=tokenizer.vocab_size, total_updates=t.steps,
                             log=writer.log)
  checkpointer, state = setup.checkpointer, setup.state
  frozen = None  # What the loss reads but never trains: the DPO reference params (unless precomputed into rows).
  if pairs:
    frozen = preference.prepare(config, mesh, setup, algorithm,
                                row_sets=[r for r in (rows, eval_rows) if r is not None])

  # ---------------------------------------------------------------- Batches (rows are final: ref_logps added)
  process_rows = t.batch_size // jax.process_count()
  train_iter = pipeline.make_train_iterator(rows, batch_size=process_rows, seed=t.seed, shuffle=config.data.shuffle,
                                            process_index=jax.process_index(), process_count=jax.process_count())
  if setup.data_state is not None:
    train_iter.set_state(setup.data_state)
  eval_data = None
  if eval_rows is not None:
    eval_data = pipeline.eval_batches(eval_rows, process_rows, process_index=jax.process_index(),
                                      process_count=jax.process_count())
  model_cfg = setup.model_cfg
  start = int(state["step"])
  writer.log(f"model: {model_cfg.num_params():,} params; data: " +
             ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in data_stats.items()))

  # ---------------------------------------------------------------- Update step
  loss_fn, normalizer = algorithm.make_loss(config, Models(setup.graphdef, model_cfg))
  train_step = common.make_update_step(setup, loss_fn, normalizer, mesh, grad_accum=t.grad_accum)
  # Under LoRA the loss is taken w.r.t. the adapters only; the frozen base is joined in inside.
  loss_fn, trained_shardings = setup.trainable_loss(loss_fn), setup.shardings["params"]
  if pairs:  # Eval loss plus held-out preference accuracy.
    evaluate = preference.make_evaluate(loss_fn, eval_data, mesh, trained_shardings, frozen, algorithm.eval_accuracy)
  else:
    eval_step = jax.jit(step_lib.make_eval_step(loss_fn),
                        in_shardings=(trained_shardings, mesh_lib.batch_sharding(mesh), None))

    def evaluate(params) -> dict:
      total, weight = 0.0, 0.0
      for batch in eval_data:
        s, w = eval_step(params, mesh_lib.global_batch(batch, mesh), None)
        total, weight = total + float(s), weight + float(w)
      return {"eval_loss": total / max(weight, 1.0)}

  def save(step: int) -> None:
    checkpointer.save(step, state, train_iter.get_state())

  # ---------------------------------------------------------------- Loop
  summary, pending, window = {}, None, []
  tokens, last_time = 0, time.perf_counter()
  for step in range(start + 1, t.steps + 1):
    local = next(train_iter)
    tokens += int(np.count_nonzero(local["segment_ids"])) * jax.process_count()
    state, metrics = train_step(state, mesh_lib.global_batch(local, mesh), frozen)
    if pending is not None:  # Check the previous step while this one runs: no pipeline stall.
      common.check_finite(*pending)
    pending = (step, metrics)
    window.append(metrics["loss"])
    writer.advance()
    is_last = step == t.steps
    if common.due(t.log_every, step, is_last):
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
    if eval_data and common.due(t.eval_every, step, is_last):
      eval_metrics = evaluate(state["params"])
      summary.update(eval_metrics)
      writer.write(step, eval_metrics)
    preempted = not is_last and stop.should_stop()
    if common.due(t.checkpoint_every, step, is_last) or preempted:
      common.check_finite(step, metrics)
      save(step)
    if is_last or preempted:
      break
  summary["step"] = common.finish(checkpointer, writer, stop)
  return summary

