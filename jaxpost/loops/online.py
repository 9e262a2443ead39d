"""The online loop (GRPO family): batches come from sampling the current policy and scoring it.

Reads top to bottom, once per step: sample G completions for each of P prompts with the trainer's own
params (no copy) -> rewards on the host -> group advantages -> `num_epochs` passes of minibatch updates
through the generic train step -> metrics; greedy held-out accuracy every `eval_every` steps;
checkpoints (state + prompt-iterator position) and resume as in the offline loop.
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
from jaxpost import step as step_lib
from jaxpost import tokenizers
from jaxpost.algorithms import grpo
from jaxpost.config import ConfigError, rl_minibatch
from jaxpost.loops import common, rollouts


def run(config, workdir: str) -> dict:
  """Trains per `config` (algorithm grpo); returns the last logged metrics (+ eval accuracy)."""
  # ---------------------------------------------------------------- Mesh
  mesh = mesh_lib.make_mesh(config)
  # SIGTERM / SIGINT: finish the step, save, raise preemption.Preempted (exit 143 / 130).
  with jax.set_mesh(mesh), preemption.StopRequest(mesh) as stop:
    return _train(config, workdir, mesh, stop)


def _train(config, workdir: str, mesh, stop: preemption.StopRequest) -> dict:
  t, rl = config.train, config.rl
  rows = rl.prompts_per_step * rl.num_generations
  minibatch = rl_minibatch(config)
  updates_per_step = rl.num_epochs * rows // minibatch

  # ---------------------------------------------------------------- Tokenizer, prompts, rewards
  if not common.tokenizer_path(config):
    raise ConfigError("config.tokenizer.path: empty; name a sentencepiece .model file or a HF tokenizer folder")
  tokenizer = tokenizers.load(common.tokenizer_path(config))
  seq_len = rl.max_prompt_len + rl.max_new_tokens - 1
  rng = np.random.default_rng(t.seed)

  # ---------------------------------------------------------------- Model, sharded state, reference
  writer = metrics_lib.MetricsWriter(workdir, total_steps=t.steps, progress=t.progress, name="grpo")
  setup = common.setup_state(config, workdir, mesh, vocab_size=tokenizer.vocab_size,
                             total_updates=t.steps * updates_per_step, log=writer.log)
  graphdef, state, shardings = setup.graphdef, setup.state, setup.shardings
  source = rollouts.Rollouts.from_config(config, tokenizer, graphdef)
  loop_state = setup.data_state or {"step": 0, "cursor": 0, "epoch": 0}
  # The reference policy is the starting params, frozen, reloaded from their source on resume (under LoRA:
  # the base with adapters disabled, no second copy of the weights); with beta == 0 none is kept at all.
  ref_params = setup.reference_params(state["params"]) if rl.beta > 0 or rl.kl_in_reward else None
  full = setup.full_params  # Trained params (adapters under LoRA) -> the whole model's.
  writer.log(f"model: {setup.model_cfg.num_params():,} params; prompts: {source.prompt_stats}; "
             f"{rows} rollout rows/step, {updates_per_step} updates/step")

  # ---------------------------------------------------------------- Update step and log-probs
  policy_loss_fn, normalizer = grpo.make_grpo_loss_fn(
      graphdef, policy_loss=rl.policy_loss, aggregation=rl.aggregation, beta=0.0 if rl.kl_in_reward else rl.beta,
      kl_estimator=rl.kl_estimator, entropy_coef=rl.entropy_coef, epsilon_low=rl.epsilon_low,
      epsilon_high=rl.epsilon_high, dual_clip=rl.dual_clip or None, logprob_impl=setup.model_cfg.logprob_impl,
      temperature=rl.temperature, max_len=rl.max_new_tokens)
  loss_fn = setup.trainable_loss(policy_loss_fn)
  batch_shardings = mesh_lib.batch_sharding(mesh)
  train_step = jax.jit(step_lib.make_train_step(loss_fn, normalizer, setup.tx, setup.schedule,
                                                grad_accum=t.grad_accum),
                       in_shardings=(shardings, batch_shardings, None),
                       out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
  # Replicated output: every process reads the whole (R,) vector on the host, multi-host too.
  sequence_kl = jax.jit(lambda b: jnp.sum((b["old_logps"] - b["ref_logps"]) * b["loss_mask"], axis=1),
                        out_shardings=mesh_lib.replicated(mesh))
  select_rows = jax.jit(lambda batch, idx: jax.tree.map(lambda x: jnp.take(x, idx, axis=0), batch),
                        out_shardings=batch_shardings)
  logps_fn = jax.jit(functools.partial(logprobs_lib.token_logprobs, graphdef, impl=setup.model_cfg.logprob_impl,
                                       temperature=rl.temperature))

  # ---------------------------------------------------------------- Loop
  summary = {}
  if source.eval_prompts and loop_state["step"] == 0:
    summary = writer.write(0, source.evaluate(full(state["params"])))
  for step in range(loop_state["step"] + 1, t.steps + 1):
    # Rollout: sample with the live params, score, keep informative groups (dynamic sampling).
    start = time.perf_counter()
    groups, reward_metrics, tries = [], {}, 0
    while len(groups) < rl.prompts_per_step and tries <= (rl.max_refills if rl.dynamic_sampling else 0):
      batch_prompts = source.next_prompts(rl.prompts_per_step, loop_state)
      out = source.sample(full(state["params"]), batch_prompts, num_samples=rl.num_generations,
                          temperature=rl.temperature, seed=t.seed * 100003 + step * 101 + tries)
      rewards, reward_metrics = source.score(out, batch_prompts, rl.num_generations)
      rewards = _overlong_shaping(rewards, out, rl)
      for p, prompt in enumerate(batch_prompts):
        rs = slice(p * rl.num_generations, (p + 1) * rl.num_generations)
        if rl.dynamic_sampling and np.all(rewards[rs] == rewards[rs][0]):
          continue
        groups.append((prompt, out.completions()[rs], out.logps[rs], rewards[rs],
                       [f == "length" for f in out.finish_reasons[rs]]))
      tries += 1
    groups = groups[:rl.prompts_per_step]
    rollout_time = time.perf_counter() - start

    # Batch: prompt + completion rows, padded to a fixed shape (one compile); empty groups are padding.
    start = time.perf_counter()
    group_rewards = np.stack([g[3] for g in groups]) if groups else np.zeros((0, rl.num_generations), np.float32)
    completions = [c for g in groups for c in g[1]]
    sample_logps = np.concatenate([g[2] for g in groups]) if groups else None
    batch = rollout.rollout_batch([g[0]["tokens"] for g in groups], completions, sample_logps,
                                  num_samples=rl.num_generations, seq_len=seq_len, rows=rows)
    if rl.overlong == "filter":
      truncated = np.array([x for g in groups for x in g[4]] + [False] * (rows - len(completions)))
      batch["loss_mask"][truncated] = 0
    device_batch = mesh_lib.global_batch_from_full(batch, mesh)  # Every process built the whole batch.
    if rl.old_logps == "recompute":
      device_batch["old_logps"] = logps_fn(full(state["params"]), device_batch)
    if ref_params is not None:
      device_batch["ref_logps"] = logps_fn(ref_params, device_batch)
    raw_rewards = group_rewards
    if rl.kl_in_reward and groups:  # r <- r - beta * sum_t (log pi_old - log pi_ref) over the completion.
      seq_kl = np.asarray(sequence_kl(device_batch))[:len(completions)]
      group_rewards = group_rewards - rl.beta * seq_kl.reshape(group_rewards.shape)
    advantages = np.zeros((rows,), np.float32)
    if groups:
      advantages[:len(completions)] = np.asarray(grpo.compute_advantages(group_rewards, None, rl.advantage)).reshape(-1)
    device_batch["advantages"] = mesh_lib.global_batch_from_full({"a": advantages}, mesh)["a"]

    # Updates: num_epochs passes over shuffled minibatches.
    metrics_list = []
    for epoch in range(rl.num_epochs):
      order = rng.permutation(rows) if rl.num_epochs > 1 or minibatch < rows else np.arange(rows)
      for i in range(0, rows, minibatch):
        mb = select_rows(device_batch, jnp.asarray(order[i:i + minibatch]))
        state, metrics = train_step(state, mb, None)
        metrics_list.append(metrics)
    common.check_finite(step, metrics_list[-1])
    train_time = time.perf_counter() - start

    # Metrics: reward/mean and /std (of the kept groups), kl, entropy, clip_frac, ...; accuracy from the verifiers.
    lengths = np.array([len(c) for c in completions]) if completions else np.zeros(1)
    values = {k: float(np.mean([float(m[k]) for m in metrics_list])) for k in metrics_list[0]
              if k not in ("lr", "loss_tokens")}
    values.update({"reward/mean": float(raw_rewards.mean()) if groups else 0.0,
                   "reward/std": float(raw_rewards.std()) if groups else 0.0,
                   "response_length/mean": float(lengths.mean()), "groups": len(groups),
                   "lr": float(metrics_list[-1]["lr"]), "rollout_time": rollout_time, "train_time": train_time,
                   "tokens_per_sec": float(lengths.sum()) / max(rollout_time + train_time, 1e-9)})
    values.update(reward_metrics)  # reward/<fn>, reward/errors, ...; accuracy where a verifier defines it.
    is_last = step == t.steps
    if (t.log_every and step % t.log_every == 0) or is_last:
      summary = writer.write(step, values)
    if source.eval_prompts and ((t.eval_every and step % t.eval_every == 0) or is_last):
      summary.update(writer.write(step, source.evaluate(full(state["params"]))))
    writer.advance()
    loop_state["step"] = step
    preempted = not is_last and stop.should_stop()
    if (t.checkpoint_every and step % t.checkpoint_every == 0) or is_last or preempted:
      setup.checkpointer.save(step, state, dict(loop_state))
    if preempted:
      break
  setup.checkpointer.close()  # Waits for the last save to be finalised.
  writer.log(f"saved checkpoint step {setup.checkpointer.latest_step()} in {setup.checkpointer.directory}")
  writer.close()
  if stop.agreed:
    raise stop.preempted(setup.checkpointer.latest_step())
  return summary


def _overlong_shaping(rewards: np.ndarray, out, rl) -> np.ndarray:
  """DAPO's soft overlong punishment (Yu et al., 2025): with budget L_max and buffer L_c,
  r <- r - clip((L - (L_max - L_c)) / L_c, 0, 1), so a row that hits the budget loses 1."""
  if rl.overlong != "soft":
    return rewards
  start = rl.max_new_tokens - rl.overlong_buffer
  penalty = np.clip((np.asarray(out.lengths) - start) / max(rl.overlong_buffer, 1), 0.0, 1.0)
  return rewards - penalty.astype(rewards.dtype)
