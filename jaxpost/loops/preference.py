"""The offline loop's pieces for preference algorithms (data "pairs" or "unpaired": rm, dpo): pair data,
the frozen reference, and held-out preference accuracy. `loops/offline.py` calls these; the math is in
`algorithms/rm.py` and `algorithms/dpo.py`, the records in `data/preferences.py`.

The DPO reference is the run's *initial* params (`model.init_checkpoint`'s, `model.path`'s, or the fresh
init from `train.seed`), rebuilt the same way on resume, never the resumed params; under LoRA it is the
frozen base with the adapters disabled (no second copy). With `dpo.ref_logps =
precompute` its sequence log-probs are computed once for every train and eval row (stored as `ref_logps`
(R, 2) in the rows, so they travel with each batch) and the reference params are then dropped; with
`online` they stay on device, sharded like the params, and the loss recomputes them every step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost import mesh as mesh_lib
from jaxpost.algorithms import dpo
from jaxpost.data import pipeline, preferences

PAIR_DATA = ("pairs", "unpaired")


def build_dataset(config, paths: list[str], tokenizer, layout: str):
  """Preference rows (R, 2, T): KTO examples with their mismatched KL sequences for layout "unpaired",
  (chosen, rejected) pairs for "pairs". Returns (rows, stats)."""
  kwargs = dict(seq_len=config.data.seq_len, overlong=config.data.overlong)
  if layout == "unpaired":
    return preferences.build_unpaired(paths, tokenizer, seed=config.train.seed, **kwargs)
  return preferences.build_paired(paths, tokenizer, **kwargs)


def prepare(config, mesh, setup, algorithm, *, row_sets: list[dict]) -> dict | None:
  """Before the loop (after `common.setup_state`): where the algorithm keeps a reference (dpo), builds it
  and either adds `ref_logps` (R, 2) to each of `row_sets` (precompute) or returns it as `frozen` (online).

  Returns the `frozen` argument of the train and eval steps: {"ref_params": ...} or None."""
  if not algorithm.reference(config):
    return None
  # The starting params (LoRA: the base, adapters off), reloaded from their source on resume.
  ref_params = setup.reference_params(setup.state["params"])
  if config.dpo.ref_logps == "online":
    return {"ref_params": ref_params}
  fn = jax.jit(dpo.make_reference_logps_fn(setup.graphdef, setup.model_cfg.logprob_impl),
               in_shardings=(None, mesh_lib.batch_sharding(mesh)), out_shardings=mesh_lib.replicated(mesh))
  for rows in row_sets:
    rows["ref_logps"] = precompute_ref_logps(fn, ref_params, rows, config.train.batch_size, mesh)
  return None


def precompute_ref_logps(fn, ref_params, rows: dict, batch_size: int, mesh) -> np.ndarray:
  """fn(ref_params, batch) -> (B, 2) over every row, in order -> (R, 2) f32 on every process.

  Every process feeds the same global batches (the rows are the whole data set on each process)."""
  num_rows = len(rows["inputs"])
  out = []
  for batch in pipeline.eval_batches({k: v for k, v in rows.items() if k != "ref_logps"}, batch_size):
    out.append(np.asarray(fn(ref_params, jax.device_put(batch, mesh_lib.batch_sharding(mesh)))))
  return np.concatenate(out)[:num_rows].astype(np.float32)


def make_evaluate(loss_fn, eval_batches: list[dict], mesh, param_shardings, frozen, accuracy_key: str | None):
  """Returns evaluate(params) -> {"eval_loss", "eval/accuracy", "eval/<metric>", ...}: means over every
  held-out pair (padding rows weigh 0). eval/accuracy is the fraction of pairs ranked right (the loss
  metric `accuracy_key`)."""
  def eval_step(params, batch, frozen):
    loss_sum, metric_sums = loss_fn(params, batch, frozen)
    return loss_sum, metric_sums, jnp.sum(dpo.pair_valid(batch))

  step = jax.jit(eval_step, in_shardings=(param_shardings, mesh_lib.batch_sharding(mesh), None))

  def evaluate(params) -> dict:
    sums, weight = {}, 0.0
    for batch in eval_batches:
      loss_sum, metric_sums, w = step(params, mesh_lib.global_batch(batch, mesh), frozen)
      for k, v in {"loss": loss_sum, **metric_sums}.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      weight += float(w)
    means = {k: v / max(weight, 1.0) for k, v in sums.items()}
    result = {"eval_loss": means.pop("loss")}
    if accuracy_key in means:
      result["eval/accuracy"] = means.pop(accuracy_key)
    result.update({f"eval/{k}": v for k, v in means.items()})
    return result

  return evaluate
