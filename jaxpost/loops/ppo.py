"""The PPO loop (RLHF with a critic): sample -> score -> KL-shaped token rewards -> GAE -> minibatch epochs.

Reads top to bottom, once per step: sample G completions for each of P prompts with the live policy ->
rewards on the host (verifiable functions or a reward model, `rl.reward_fns`) -> behaviour, reference and
critic values on device -> per-token rewards r_t = -beta (log pi_old - log pi_ref) + score on the last
token -> GAE advantages (whitened) and returns -> `rl.num_epochs` passes of minibatch updates of the
actor and the critic together (one param tree {"policy", "value"}, one optimizer) -> metrics incl.
`value_loss` and `explained_variance`. Checkpoints, resume and preemption as in the other loops.

The critic is a second transformer with a scalar head: initialised from the policy's weights plus a fresh
head, or from a reward model's workdir (`ppo.value_init`). The reference policy is the initial policy.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost import checkpoint as checkpoint_lib
from jaxpost import logprobs as logprobs_lib
from jaxpost import mesh as mesh_lib
from jaxpost import metrics as metrics_lib
from jaxpost import optim
from jaxpost import preemption
from jaxpost import rollout
from jaxpost import state as state_lib
from jaxpost import step as step_lib
from jaxpost import tokenizers
from jaxpost.algorithms import ppo
from jaxpost import workdir as workdir_lib
from jaxpost.config import ConfigError, rl_minibatch
from jaxpost.loops import common, rollouts


def run(config, workdir: str) -> dict:
  """Trains per `config` (algorithm ppo); returns the last logged metrics (+ eval accuracy)."""
  mesh = mesh_lib.make_mesh(config)
  with jax.set_mesh(mesh), preemption.StopRequest(mesh) as stop:
    return _train(config, workdir, mesh, stop)


def _critic_params(config, value_cfg, shardings, mesh, log) -> dict:
  """The critic's starting params: a reward model's (ppo.value_init = its workdir), or the policy's
  backbone (same source as the policy) with a fresh scalar head."""
  if config.ppo.value_init:
    _, shapes, _ = state_lib.abstract_model(value_cfg)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    log(f"critic initialised from the reward model in {config.ppo.value_init}")
    return checkpoint_lib.restore_params(config.ppo.value_init, abstract, source="config.ppo.value_init")
  backbone_cfg = dataclasses.replace(value_cfg, head="lm", tie_embeddings=True)
  backbone = workdir_lib.base_params(backbone_cfg, state_lib.param_shardings(backbone_cfg, mesh), mesh,
                                     hf_path=config.model.path, init_checkpoint=config.model.init_checkpoint,
                                     seed=config.train.seed, log=lambda _: None)
  head = state_lib.init_params(value_cfg, mesh, config.train.seed + 7)
  return {**{k: v for k, v in backbone.items() if k != "unembed"}, "score_w": head["score_w"],
          "score_b": head["score_b"]}


def _train(config, workdir: str, mesh, stop: preemption.StopRequest) -> dict:
  t, rl, pc = config.train, config.rl, config.ppo
  rows = rl.prompts_per_step * rl.num_generations
  minibatch = rl_minibatch(config)
  updates_per_step = rl.num_epochs * rows // minibatch

  # ---------------------------------------------------------------- Tokenizer, prompts, rewards
  if not common.tokenizer_path(config):
    raise ConfigError("config.tokenizer.path: empty; name a sentencepiece .model file or a HF tokenizer folder")
  tokenizer = tokenizers.load(common.tokenizer_path(config))
  seq_len = rl.max_prompt_len + rl.max_new_tokens - 1
  rng = np.random.default_rng(t.seed)

  # ---------------------------------------------------------------- Actor, critic, sharded state
  writer = metrics_lib.MetricsWriter(workdir, total_steps=t.steps, progress=t.progress, name="ppo")
  policy_cfg = common.model_config(config, tokenizer.vocab_size)
  if pc.value_init:  # The critic takes the reward model's own architecture (it may differ from the policy's).
    value_cfg = dataclasses.replace(workdir_lib.read_model_record(pc.value_init)[0], head="scalar", lora_rank=0)
  else:
    value_cfg = dataclasses.replace(policy_cfg, head="scalar")
  policy_graphdef, policy_shapes, _ = state_lib.abstract_model(policy_cfg)
  value_graphdef, value_shapes, _ = state_lib.abstract_model(value_cfg)
  shapes = {"policy": policy_shapes, "value": value_shapes}
  param_shardings = {"policy": state_lib.param_shardings(policy_cfg, mesh),
                     "value": state_lib.param_shardings(value_cfg, mesh)}
  tx, schedule = optim.make_optimizer(config.optim, t.steps * updates_per_step)
  shardings = state_lib.state_shardings(shapes, param_shardings, tx, mesh)
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=t.keep_checkpoints)
  loop_state = {"step": 0, "cursor": 0, "epoch": 0}
  source_kw = dict(hf_path=config.model.path, init_checkpoint=config.model.init_checkpoint, seed=t.seed, log=writer.log)
  # The reference policy: the initial policy, frozen (reloaded from its source on resume); with beta == 0
  # none is kept, so the policy's weights are on device once.
  initial_policy = lambda: workdir_lib.base_params(policy_cfg, param_shardings["policy"], mesh, **source_kw)
  ref_params = None
  if checkpointer.latest_step() is not None:
    workdir_lib.check_same_model(workdir, policy_cfg)
    state, loop_state = checkpointer.restore(checkpointer.latest_step(),
                                             state_lib.abstract_state(shardings, shapes, tx))
    writer.log(f"resuming from checkpoint step {checkpointer.latest_step()} in {checkpointer.directory}")
    if rl.beta > 0:
      ref_params = initial_policy()
  else:
    policy = initial_policy()
    if rl.beta > 0:
      ref_params, policy = policy, jax.tree.map(jnp.copy, policy)
    params = {"policy": policy, "value": _critic_params(config, value_cfg, param_shardings["value"], mesh, writer.log)}
    del policy
    state = state_lib.create_state(params, tx, shardings, t.seed)
    del params  # (create_state may copy: keep no second reference to the starting weights.)
    workdir_lib.write_model_record(workdir, policy_cfg, config, params_key="policy")
  source = rollouts.Rollouts.from_config(config, tokenizer, policy_graphdef)
  writer.log(f"actor {policy_cfg.num_params():,} + critic {value_cfg.num_params():,} params; prompts: "
             f"{source.prompt_stats}; {rows} rollout rows/step, {updates_per_step} updates/step")

  # ---------------------------------------------------------------- Update step, log-probs, values
  loss_fn, normalizer = ppo.make_ppo_loss_fn(
      policy_graphdef, value_graphdef, vf_coef=pc.vf_coef, value_clip=pc.value_clip, epsilon_low=rl.epsilon_low,
      epsilon_high=rl.epsilon_high, entropy_coef=rl.entropy_coef, logprob_impl=policy_cfg.logprob_impl,
      temperature=rl.temperature)
  batch_shardings = mesh_lib.batch_sharding(mesh)
  train_step = jax.jit(step_lib.make_train_step(loss_fn, normalizer, tx, schedule, grad_accum=t.grad_accum),
                       in_shardings=(shardings, batch_shardings, None),
                       out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
  select_rows = jax.jit(lambda batch, idx: jax.tree.map(lambda x: jnp.take(x, idx, axis=0), batch),
                        out_shardings=batch_shardings)
  logps_fn = jax.jit(functools.partial(logprobs_lib.token_logprobs, policy_graphdef, impl=policy_cfg.logprob_impl,
                                       temperature=rl.temperature))
  values_fn = jax.jit(ppo.make_values_fn(value_graphdef))

  @jax.jit
  def advantages_fn(batch, scores):
    """Token rewards -> GAE -> (whitened advantages, returns, explained variance of the old values)."""
    mask = batch["loss_mask"]
    rewards = ppo.token_rewards(scores, batch["old_logps"], batch.get("ref_logps"), mask, beta=rl.beta)
    adv, returns = ppo.gae(rewards, batch["old_values"], mask, gamma=pc.gamma, lam=pc.lam)
    if pc.whiten_advantages:
      adv = ppo.whiten(adv, mask)
    m = mask.astype(jnp.float32)
    kl = (jnp.sum((batch["old_logps"] - batch["ref_logps"]) * m) / jnp.maximum(jnp.sum(m), 1.0)
          if "ref_logps" in batch else jnp.zeros(()))  # Mean per-token k1 of the behaviour vs the reference.
    return adv, returns, ppo.explained_variance(batch["old_values"], returns, mask), kl

  # ---------------------------------------------------------------- Loop
  summary = {}
  if source.eval_prompts and loop_state["step"] == 0:
    summary = writer.write(0, source.evaluate(state["params"]["policy"]))
  for step in range(loop_state["step"] + 1, t.steps + 1):
    # Rollout with the live policy, scored on the host.
    start = time.perf_counter()
    batch_prompts = source.next_prompts(rl.prompts_per_step, loop_state)
    out = source.sample(state["params"]["policy"], batch_prompts, num_samples=rl.num_generations,
                        temperature=rl.temperature, seed=t.seed * 100003 + step * 101)
    scores, reward_metrics = source.score(out, batch_prompts, rl.num_generations)
    rollout_time = time.perf_counter() - start

    # Batch on device: behaviour / reference log-probs, critic values, then GAE.
    start = time.perf_counter()
    completions = out.completions()
    batch = rollout.rollout_batch([p["tokens"] for p in batch_prompts], completions, out.logps,
                                  num_samples=rl.num_generations, seq_len=seq_len, rows=rows)
    device_batch = mesh_lib.global_batch_from_full(batch, mesh)
    if rl.old_logps == "recompute":
      device_batch["old_logps"] = logps_fn(state["params"]["policy"], device_batch)
    if ref_params is not None:
      device_batch["ref_logps"] = logps_fn(ref_params, device_batch)
    device_batch["old_values"] = values_fn(state["params"]["value"], device_batch)
    device_scores = mesh_lib.global_batch_from_full({"s": np.asarray(scores, np.float32)}, mesh)["s"]
    adv, returns, explained, kl = advantages_fn(device_batch, device_scores)
    device_batch.update(advantages=adv, returns=returns)

    # Updates: num_epochs passes over shuffled minibatches, actor and critic together.
    metrics_list = []
    for _ in range(rl.num_epochs):
      order = rng.permutation(rows) if rl.num_epochs > 1 or minibatch < rows else np.arange(rows)
      for i in range(0, rows, minibatch):
        state, metrics = train_step(state, select_rows(device_batch, jnp.asarray(order[i:i + minibatch])), None)
        metrics_list.append(metrics)
    common.check_finite(step, metrics_list[-1])
    train_time = time.perf_counter() - start

    lengths = np.array([len(c) for c in completions])
    values = {k: float(np.mean([float(m[k]) for m in metrics_list])) for k in metrics_list[0]
              if k not in ("lr", "loss_tokens")}
    values.update({"reward/mean": float(np.mean(scores)), "reward/std": float(np.std(scores)),
                   "explained_variance": float(explained),
                   "response_length/mean": float(lengths.mean()), "lr": float(metrics_list[-1]["lr"]),
                   "rollout_time": rollout_time, "train_time": train_time,
                   "tokens_per_sec": float(lengths.sum()) / max(rollout_time + train_time, 1e-9)})
    if ref_params is not None:
      values["kl"] = float(kl)
    values.update(reward_metrics)
    is_last = step == t.steps
    if (t.log_every and step % t.log_every == 0) or is_last:
      summary = writer.write(step, values)
    if source.eval_prompts and ((t.eval_every and step % t.eval_every == 0) or is_last):
      summary.update(writer.write(step, source.evaluate(state["params"]["policy"])))
    writer.advance()
    loop_state["step"] = step
    preempted = not is_last and stop.should_stop()
    if (t.checkpoint_every and step % t.checkpoint_every == 0) or is_last or preempted:
      checkpointer.save(step, state, dict(loop_state))
    if preempted:
      break
  checkpointer.close()
  writer.log(f"saved checkpoint step {checkpointer.latest_step()} in {checkpointer.directory}")
  writer.close()
  if stop.agreed:
    raise stop.preempted(checkpointer.latest_step())
  return summary
