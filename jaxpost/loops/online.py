"""The online loop, one for every algorithm that learns from its own samples (GRPO family, PPO, distillation).

Reads top to bottom, once per step: sample G completions for each of P prompts with the live policy
(no copy) -> rewards on the host, under the algorithm's rollout rules (which groups it keeps, refilling
the batch: DAPO's dynamic sampling; reward shaping) -> behaviour and reference log-probs on device -> with a
teacher (distillation), its `teacher_stats` (the teacher's log-probs of the rows) -> the algorithm's
`prepare_batch` (GRPO family: group advantages, KL in the reward; PPO: critic values, GAE; on-policy
distillation: per-token advantages against the teacher) ->
`rl.num_epochs` passes of minibatch updates through the generic train step -> metrics; greedy held-out
accuracy every `eval_every` steps; checkpoints (state + prompt-iterator position) and resume as in the
offline loop. A step the algorithm marks as a dataset step (GKD's off-policy steps) takes the prompt records'
own replies instead of samples. The loop holds no algorithm math: that is in jaxpost/algorithms/<name>.py.

Asynchronous (rl.max_staleness = k > 0, or rl.rollout_devices = n > 0): the rollouts (sampling and host
rewards) come from a producer thread running up to k steps ahead (jaxpost/loops/producer.py), on the training
mesh or on n devices of their own; the trainer publishes its params after each step. Under
rl.off_policy_correction (tis | decoupled) the trainer recomputes the proximal log-probs and the loss weights
each token by its importance weight against the sampler's (jaxpost/algorithms/off_policy.py).
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost import logprobs as logprobs_lib
from jaxpost import mesh as mesh_lib
from jaxpost import metrics as metrics_lib
from jaxpost import preemption
from jaxpost import rollout
from jaxpost import state as state_lib
from jaxpost.algorithms import registry
from jaxpost.algorithms.base import Models
from jaxpost.config import ConfigError, rl_minibatch
from jaxpost.loops import common
from jaxpost.loops import producer as producer_lib
from jaxpost.loops import teacher as teacher_lib
from jaxpost.models import lora


def run(config, workdir: str) -> dict:
  """Trains per `config` (an online algorithm); returns the last logged metrics (+ eval accuracy)."""
  # ---------------------------------------------------------------- Mesh
  # rl.rollout_devices = n: the first n devices sample on a mesh of their own (tensor-parallel over them),
  # the rest train.
  n = config.rl.rollout_devices
  devices = jax.devices()
  mesh = mesh_lib.make_mesh(config, devices[n:])
  rollout_mesh = None
  if n:
    rollout_mesh = jax.make_mesh((1, 1, n), mesh_lib.MESH_AXES, devices=devices[:n],
                                 axis_types=(jax.sharding.AxisType.Auto,) * len(mesh_lib.MESH_AXES))
  # SIGTERM / SIGINT: finish the step, save, raise preemption.Preempted (exit 143 / 130).
  with jax.set_mesh(mesh), preemption.StopRequest(mesh) as stop:
    return _train(config, workdir, mesh, stop, rollout_mesh)


def use_producer(rl) -> bool:
  """Whether rollouts come from a producer thread (else the step samples inline, the synchronous loop)."""
  return rl.max_staleness > 0 or rl.rollout_devices > 0


def _train(config, workdir: str, mesh, stop: preemption.StopRequest, rollout_mesh=None) -> dict:
  algorithm = registry.get(config.algorithm)
  t, rl = config.train, config.rl
  if rl.sampler == "engine" and jax.process_count() > 1:
    raise ConfigError("config.rl.sampler=engine: the rollout engine runs on one process so far; with "
                      f"{jax.process_count()} processes set rl.sampler=static")
  if rl.env and algorithm.critic:
    raise ConfigError(f"config.rl.env={rl.env!r}: multi-turn episodes train with the GRPO family so far (a critic's "
                      "values and GAE over the environment's tokens are not built); use algorithm=grpo")
  group = rl.num_generations
  rows = rl.prompts_per_step * group
  minibatch = rl_minibatch(config)
  updates_per_step = rl.num_epochs * rows // minibatch

  # ---------------------------------------------------------------- Tokenizer
  tokenizer = common.load_tokenizer(config)
  seq_len = rl.max_prompt_len + rl.max_new_tokens - 1
  rng = np.random.default_rng(t.seed)

  # ---------------------------------------------------------------- Model (and critic), sharded state, reference
  writer = metrics_lib.MetricsWriter(workdir, total_steps=t.steps, progress=t.progress, name=config.algorithm)
  setup = common.setup_state(config, workdir, mesh, vocab_size=tokenizer.vocab_size,
                             total_updates=t.steps * updates_per_step, log=writer.log, critic=algorithm.critic)
  state = setup.state
  source = rollout.Rollouts.from_config(config, tokenizer, setup.graphdef)
  loop_state = setup.data_state or {"step": 0, "cursor": 0, "epoch": 0}
  policy = lambda params: setup.full_params(setup.policy_params(params))  # The whole policy the sampler runs.
  # The reference policy is the starting params, frozen, reloaded from their source on resume (under LoRA:
  # the base with adapters disabled, no second copy of the weights); when unused none is kept at all.
  ref_params = None
  if algorithm.reference(config):
    ref_params = setup.reference_params(setup.policy_params(state["params"]))
  critic = f" + critic {setup.value_cfg.num_params():,}" if setup.value_cfg else ""
  writer.log(f"model: {setup.model_cfg.num_params():,}{critic} params; prompts: {source.prompt_stats}; "
             f"{rows} rollout rows/step, {updates_per_step} updates/step")
  # Distillation: the frozen teacher, on the training mesh; its params reach the algorithm as `frozen`.
  teacher = frozen = None
  if algorithm.teacher(config):
    teacher = teacher_lib.load(algorithm.teacher(config), mesh, vocab_size=setup.model_cfg.vocab_size, log=writer.log)
    frozen = teacher.params

  # ---------------------------------------------------------------- Update step, log-probs, batch preparation
  models = Models(setup.graphdef, setup.model_cfg, setup.value_graphdef, *((teacher.graphdef, teacher.model_cfg)
                                                                            if teacher else ()))
  train_step = common.make_update_step(setup, *algorithm.make_loss(config, models), mesh, grad_accum=t.grad_accum)
  batch_shardings = mesh_lib.batch_sharding(mesh)
  select_rows = jax.jit(lambda batch, idx: jax.tree.map(lambda x: jnp.take(x, idx, axis=0), batch),
                        out_shardings=batch_shardings)
  logps_fn = jax.jit(functools.partial(logprobs_lib.token_logprobs, setup.graphdef, impl=setup.model_cfg.logprob_impl,
                                       temperature=rl.temperature))
  # Replicated metrics: every process reads them on the host, multi-host too.
  prepare_batch = jax.jit(algorithm.prepare_batch(config, models),
                          out_shardings=(batch_shardings, mesh_lib.replicated(mesh)))
  teacher_stats = teacher and jax.jit(algorithm.teacher_stats(config, models),
                                      out_shardings=(batch_shardings, mesh_lib.replicated(mesh)))

  # ---------------------------------------------------------------- Rollouts: inline, or from a producer thread
  def produce(step, version, params, weights, cancel, cursor) -> producer_lib.Produced:
    """Step `step`'s rollout: sample with `params` (policy version `version`; weights() -> newer ones when
    given), score each group as it completes under the algorithm's rules (which groups it keeps, reward
    shaping); a dropped group's prompt is replaced (DAPO's dynamic sampling). Deals prompts from `cursor`."""
    start, score_time = time.perf_counter(), [0.0]

    def judge(prompts, out, scored=None):
      begin = time.perf_counter()
      scores, metrics = source.score(out, prompts, group) if scored is None else scored  # scored: rl.env's
      rewards = algorithm.shape_rewards(config, scores, np.asarray(out.lengths))
      score_time[0] += time.perf_counter() - begin
      return algorithm.keep_groups(config, rewards.reshape(-1, group)), rewards, metrics

    field = algorithm.dataset_step(config, step)  # GKD's off-policy steps: the records' own replies.
    if field:
      judged, reward_metrics = source.dataset_groups(cursor, field, judge=judge, version=version)
    else:
      judged, reward_metrics = source.collect(params, cursor, seed=t.seed * 100003 + step * 101, judge=judge,
                                              version=version, weights=weights, cancel=cancel)
    return producer_lib.Produced(step, judged, reward_metrics, {k: cursor[k] for k in ("cursor", "epoch")},
                                 time.perf_counter() - start, version, score_time[0])

  summary = {}
  if source.eval_prompts and loop_state["step"] == 0:
    summary = writer.write(0, source.evaluate(policy(state["params"])))
  producer = store = None
  if use_producer(rl):
    source.separate_eval_engine = True  # The producer thread owns the rollout engine.
    store = producer_lib.WeightStore(loop_state["step"], state["params"], _placement(setup, rollout_mesh))
    cursor = dict(loop_state)  # The producer's own: it deals prompts ahead of training.
    producer = producer_lib.RolloutProducer(
        lambda step, version, params, weights, cancel: produce(step, version, params, weights, cancel, cursor),
        store, first=loop_state["step"] + 1, last=t.steps, max_staleness=rl.max_staleness,
        interruptible=rollout_mesh is not None, mesh=rollout_mesh or mesh)
    writer.log(f"rollouts: a producer thread up to {rl.max_staleness} step(s) ahead, on "
               + (f"{rl.rollout_devices} device(s) of their own" if rollout_mesh else "the training mesh"))

  # ---------------------------------------------------------------- Loop
  try:
    for step in range(loop_state["step"] + 1, t.steps + 1):
      # Rollout: this step's groups, sampled inline with the live params, or taken from the producer's queue.
      start = time.perf_counter()
      if producer is None:
        produced = produce(step, step - 1, policy(state["params"]), None, None, loop_state)
      else:
        produced = producer.get()
      wait_time = time.perf_counter() - start
      loop_state.update(produced.cursor)  # Prompts dealt up to this step's batch (a checkpoint keeps this).
      judged, rollout_time = produced.judged, produced.rollout_time
      kept_groups = [g for g in judged if g.keep][:rl.prompts_per_step]
      staleness = np.array([step - 1 - g.oldest() for g in kept_groups] or [0])  # Per group, oldest token.
      if staleness.max() > rl.max_staleness:  # The producer's bound; a failure here is a bug.
        raise RuntimeError(f"step {step}: samples of staleness {staleness.max()} > rl.max_staleness={rl.max_staleness}")
      kept = [(g.prompt, g.out.completions(), g.out.logps, g.rewards,
               np.array([f == "length" for f in g.out.finish_reasons], np.float32), g.model_mask) for g in kept_groups]

      # Batch: prompt + completion rows, padded to a fixed shape (one compile); dropped groups are padding.
      start = time.perf_counter()
      completions = [c for g in kept for c in g[1]]
      sample_logps = (np.concatenate([g[2] for g in kept]) if kept
                      else np.zeros((0, rl.max_new_tokens), np.float32))
      masks = np.concatenate([g[5] for g in kept]) if rl.env and kept else None  # rl.env: the model's tokens
      batch = rollout.rollout_batch([g[0]["tokens"] for g in kept], completions, sample_logps, num_samples=group,
                                    seq_len=seq_len, rows=rows, completion_masks=masks)
      rewards = np.concatenate([g[3] for g in kept]) if kept else np.zeros((0,), np.float32)
      padded = lambda x: np.concatenate([np.asarray(x, np.float32), np.zeros(rows - len(completions), np.float32)])
      scored = {"rewards": padded(rewards), "valid": padded(np.ones(len(completions))),
                "truncated": padded([x for g in kept for x in g[4]])}
      device_batch = mesh_lib.global_batch_from_full(batch, mesh)  # Every process built the whole batch.
      if rl.off_policy_correction != "none":  # Behaviour = the sampler's; proximal = the trainer's, now.
        device_batch["behav_logps"] = device_batch["old_logps"]
        device_batch["old_logps"] = logps_fn(policy(state["params"]), device_batch)
      elif rl.old_logps == "recompute":
        device_batch["old_logps"] = logps_fn(policy(state["params"]), device_batch)
      if ref_params is not None:
        device_batch["ref_logps"] = logps_fn(ref_params, device_batch)
      teacher_metrics = {}
      if teacher is not None:  # The teacher's view of the rows (its log-probs of them, divergence metrics).
        device_batch, teacher_metrics = teacher_stats(device_batch, policy(state["params"]), frozen)
      device_batch, prepared = prepare_batch(device_batch, mesh_lib.global_batch_from_full(scored, mesh),
                                             state["params"], frozen)

      # Updates: num_epochs passes over shuffled minibatches; then the new params go to the producer.
      metrics_list = []
      for _ in range(rl.num_epochs):
        order = rng.permutation(rows) if rl.num_epochs > 1 or minibatch < rows else np.arange(rows)
        for i in range(0, rows, minibatch):
          state, metrics = train_step(state, select_rows(device_batch, jnp.asarray(order[i:i + minibatch])), frozen)
          metrics_list.append(metrics)
      common.check_finite(step, metrics_list[-1])
      if store is not None:
        store.publish(step, state["params"])
      train_time = time.perf_counter() - start

      # Metrics: the loss's (kl, entropy, clip_frac, ...), the batch preparation's (PPO: explained_variance),
      # reward/mean and /std of the kept rows, and accuracy where a verifier defines it.
      lengths = np.array([len(c) for c in completions]) if completions else np.zeros(1)
      values = {k: float(np.mean([float(m[k]) for m in metrics_list])) for k in metrics_list[0]
                if k not in ("lr", "loss_tokens")}
      values.update({k: float(v) for k, v in prepared.items()})
      values.update({k: float(v) for k, v in teacher_metrics.items()})
      if teacher is not None:  # Whether the rows were the records' own replies (GKD's dataset steps).
        values["dataset_step"] = float(bool(algorithm.dataset_step(config, step)))
      values.update({"reward/mean": float(rewards.mean()) if kept else 0.0,
                     "reward/std": float(rewards.std()) if kept else 0.0,
                     "response_length/mean": float(lengths.mean()), "groups": len(kept),
                     "groups_judged": len(judged), "lr": float(metrics_list[-1]["lr"]), "rollout_time": rollout_time,
                     "score_time": produced.score_time, "train_time": train_time,
                     "tokens_per_sec": float(lengths.sum()) / max(rollout_time + train_time, 1e-9)})
      if producer is not None:  # Sampling overlaps training: throughput over the trainer's wall time.
        values.update({"staleness/mean": float(staleness.mean()), "staleness/max": int(staleness.max()),
                       "rollout_wait_time": wait_time,
                       "tokens_per_sec": float(lengths.sum()) / max(wait_time + train_time, 1e-9)})
        if store.transfers:  # Publish -> copy ready, as the producer first read each version.
          values["weights/transfer_time"] = float(np.mean(store.transfers))
          values["weights/bytes"] = store.bytes
          store.transfers.clear()
      values.update(produced.reward_metrics)  # reward/<fn>, reward/errors, ...; accuracy where a verifier defines it.
      is_last = step == t.steps
      if common.due(t.log_every, step, is_last):
        summary = writer.write(step, values)
      if source.eval_prompts and common.due(t.eval_every, step, is_last):
        summary.update(writer.write(step, source.evaluate(policy(state["params"]))))
      writer.advance()
      loop_state["step"] = step
      preempted = not is_last and stop.should_stop()
      if common.due(t.checkpoint_every, step, is_last) or preempted:
        setup.checkpointer.save(step, state, dict(loop_state))
      if preempted:
        break  # Batches queued or in flight are dropped: resumed, the producer deals them again.
  finally:
    if producer is not None:
      producer.close()
  common.finish(setup.checkpointer, writer, stop)
  return summary


def _placement(setup, rollout_mesh):
  """state["params"] -> the policy the producer samples with, in buffers of its own (the trainer donates its
  state at the next update): on the training mesh (same shardings), or copied device to device onto the
  rollout mesh with the model's rules there. Under LoRA only the adapters are copied each time; the frozen
  base is placed once."""
  base = setup.frozen_base
  if rollout_mesh is not None:
    shardings = state_lib.param_shardings(setup.model_cfg, rollout_mesh)
    if base is not None:
      base_shardings, shardings = lora.split(shardings)
      if jax.tree.structure(base) != jax.tree.structure(base_shardings):  # Quantised (qwix): replicate it.
        base_shardings = jax.sharding.NamedSharding(rollout_mesh, jax.sharding.PartitionSpec())
      base = jax.device_put(base, base_shardings)
  else:
    shardings = None

  def place(params):
    trained = setup.policy_params(params)
    copy = jax.device_put(trained, shardings or jax.tree.map(lambda x: x.sharding, trained), may_alias=False)
    return copy if base is None else lora.join(base, copy)
  return place
