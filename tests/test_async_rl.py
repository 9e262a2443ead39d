"""Asynchronous off-policy RL (rl.max_staleness, rl.off_policy_correction, rl.rollout_devices): the
corrections' arithmetic, the producer at staleness 0 == the synchronous loop, the staleness bound, split
device pools, and SIGTERM with samples in flight."""
import json
import math
import os
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost import rollout
from jaxpost import state as state_lib
from jaxpost.algorithms import grpo, off_policy
from jaxpost.config import ConfigError, validate
from jaxpost.loops import online, producer
from jaxpost.models import ModelConfig

from test_grpo_loop import _batch, _toy_config

# ------------------------------------------------------------------------------------------ the corrections


def test_behaviour_weights_by_hand():
  """pi_prox / mu per token = 0.5/0.25, 0.3/0.3, 0.9/0.1 = 2, 1, 9 (a 4th token off the mask).
  tis, C = 2: min(w, 2) = 2, 1, 2 (one capped); decoupled, C = 5: w, or 0 past the cap = 2, 1, 0."""
  prox = jnp.log(jnp.array([[0.5, 0.3, 0.9, 0.7]]))
  behav = jnp.log(jnp.array([[0.25, 0.3, 0.1, 0.1]]))
  mask = jnp.array([[1, 1, 1, 0]])
  tis, m = off_policy.behaviour_weights(prox, behav, mask, correction="tis", cap=2.0)
  np.testing.assert_allclose(tis, [[2, 1, 2, 0]], rtol=1e-6)
  np.testing.assert_allclose(m["is_weight"], [[2, 1, 9, 0]], rtol=1e-5)
  np.testing.assert_allclose(m["is_capped"], [[0, 0, 1, 0]])
  np.testing.assert_allclose(m["logp_gap"], [[math.log(2), 0, math.log(9), 0]], rtol=1e-5, atol=1e-7)
  decoupled, m = off_policy.behaviour_weights(prox, behav, mask, correction="decoupled", cap=5.0)
  np.testing.assert_allclose(decoupled, [[2, 1, 0, 0]], rtol=1e-6)
  np.testing.assert_allclose(m["is_capped"], [[0, 0, 1, 0]])
  none, _ = off_policy.behaviour_weights(prox, behav, mask, correction="none", cap=0.0)
  np.testing.assert_allclose(none, [[1, 1, 1, 0]])


def _loss(correction, batch, params, graphdef, grad=False, **kwargs):
  loss_fn, normalizer = grpo.make_loss_fn(graphdef, off_policy_correction=correction, **kwargs)
  if grad:
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch)
  else:
    (loss, metrics), grads = jax.jit(loss_fn)(params, batch), None
  return float(loss / normalizer(batch)), {k: float(v / normalizer(batch)) for k, v in metrics.items()}, grads


def test_corrected_losses_by_hand_and_equal_to_todays_when_behaviour_is_proximal():
  """token_mean, old_logps = the policy's own (ratio 1, so each token's ppo_clip loss is -A): rows of 5 loss
  tokens with A = +1 (log w = log 3) and A = -1 (log w = log 0.5) on alternate rows.
    tis (C 2):       loss = -(2 * 1 * 5 + 0.5 * (-1) * 5) / 10 = -0.75
    decoupled (C 2): w = 3 passes the cap -> 0, so loss = -(0 + 0.5 * (-1) * 5) / 10 = +0.25
  With behav_logps == old_logps every weight is 1: loss and gradients equal the uncorrected loss's."""
  from jaxpost import logprobs
  model = ModelConfig(vocab_size=29, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
  graphdef, shapes, _ = state_lib.abstract_model(model)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(a.dtype) * 0.2), shapes)
  batch = _batch(rows=4, seq=12)
  batch["old_logps"] = jax.jit(logprobs.token_logprobs, static_argnums=0)(graphdef, params, batch)
  batch["advantages"] = np.array([1, -1, 1, -1], np.float32)
  log_w = np.where(batch["advantages"][:, None] > 0, math.log(3.0), math.log(0.5)).astype(np.float32)  # (B, 1)
  off = dict(batch, behav_logps=batch["old_logps"] - log_w)
  kw = dict(aggregation="token_mean")
  tis, m, _ = _loss("tis", off, params, graphdef, is_cap=2.0, **kw)
  np.testing.assert_allclose(tis, -0.75, rtol=1e-5)
  np.testing.assert_allclose(m["is_capped"], 0.5, rtol=1e-6)  # The A = +1 rows' tokens: 10 of 20.
  decoupled, _, _ = _loss("decoupled", off, params, graphdef, is_cap=2.0, **kw)
  np.testing.assert_allclose(decoupled, 0.25, rtol=1e-5)
  on = dict(batch, behav_logps=batch["old_logps"])
  reference, _, g0 = _loss("none", batch, params, graphdef, grad=True)
  loss, m, g = _loss("tis", on, params, graphdef, grad=True)  # (decoupled's weights are tis's below the cap.)
  np.testing.assert_allclose(loss, reference, rtol=1e-6)
  np.testing.assert_allclose([m["is_weight"], m["logp_gap"]], [1.0, 0.0], atol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_async_config_errors(tmp_path):
  c = _toy_config(tmp_path)
  c.rl.old_logps = "sampler"
  for key, value, message in (
      ("max_staleness", -1, "config.rl.max_staleness: must be >= 0"),
      ("off_policy_correction", "vtrace", "config.rl.off_policy_correction: 'vtrace' is not one of"),
      ("is_cap", 0.5, "config.rl.is_cap: must be 0"),
      ("rollout_devices", 8, "config.rl.rollout_devices: 8 leaves none of the 8 devices"),
  ):
    bad = _toy_config(tmp_path)
    bad.rl[key] = value
    with pytest.raises(ConfigError, match=message):
      validate(bad, num_devices=8)
  bad = _toy_config(tmp_path)
  bad.rl.off_policy_correction = "tis"  # _toy_config recomputes old_logps: the correction does that itself.
  with pytest.raises(ConfigError, match="config.rl.old_logps: 'recompute' with rl.off_policy_correction='tis'"):
    validate(bad)
  bad = _toy_config(tmp_path)
  bad.rl.max_staleness, bad.rl.sampler = 1, "static"
  with pytest.raises(ConfigError, match="config.rl.max_staleness: asynchronous rollouts run on the rollout engine"):
    validate(bad)

# ------------------------------------------------------------------------------------------ the loop


def _records(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _async_config(tmp_path, steps):
  c = _toy_config(tmp_path)
  c.train.steps = steps
  c.rl.beta, c.rl.old_logps = 0.0, "sampler"
  return c


def test_producer_at_staleness_0_equals_the_synchronous_loop(tmp_path, monkeypatch):
  """The producer thread at k = 0 samples step s with version s - 1, as the inline loop does: the same
  rewards, losses and ratios, bitwise, with tis correcting the sampler-vs-trainer mismatch."""
  c = _async_config(tmp_path, 3)
  c.rl.off_policy_correction = "tis"
  online.run(c, str(tmp_path / "sync"))
  monkeypatch.setattr(online, "use_producer", lambda rl: True)
  online.run(c, str(tmp_path / "producer"))
  sync, threaded = _records(tmp_path / "sync"), _records(tmp_path / "producer")
  keys = ("loss", "pg_loss", "reward/mean", "ratio", "is_weight", "logp_gap", "grad_norm", "response_length/mean")
  assert [[r[k] for k in keys] for r in sync] == [[r[k] for k in keys] for r in threaded]
  assert [r["staleness/max"] for r in threaded] == [0, 0, 0]
  assert "staleness/max" not in sync[0]
  # The engine's log-probs and the trainer's differ by float noise only (same weights at k = 0).
  assert all(r["logp_gap"] < 1e-3 and r["is_capped"] == 0.0 for r in sync)


def test_staleness_bound_and_sigterm_with_samples_in_flight(tmp_path, monkeypatch):
  """k = 1: no trained sample is staler than 1 and the producer does run ahead (some step trains on version
  s - 2). SIGTERM during step 2 (the producer sampling step 3): the run saves step 2 and stops; resumed, it
  trains the prompts an uninterrupted run trains, in the same order: none lost, none repeated."""
  trained = []
  make_batch = rollout.rollout_batch

  def recording(prompts, *args, **kwargs):
    trained.append([tuple(p) for p in prompts])
    if interrupt_at and len(trained) == interrupt_at:
      os.kill(os.getpid(), signal.SIGTERM)  # Handled in this (main) thread: the step finishes, then saves.
    return make_batch(prompts, *args, **kwargs)
  monkeypatch.setattr(rollout, "rollout_batch", recording)

  c = _async_config(tmp_path, 4)
  c.rl.max_staleness, c.rl.off_policy_correction = 1, "decoupled"
  interrupt_at = 0
  online.run(c, str(tmp_path / "straight"))
  straight, trained[:] = list(trained), []
  records = _records(tmp_path / "straight")
  assert max(r["staleness/max"] for r in records) == 1
  assert all(0 <= r["staleness/mean"] <= r["staleness/max"] <= 1 for r in records)
  assert {"is_weight", "is_capped", "logp_gap", "rollout_wait_time"} <= set(records[0])

  interrupt_at = 2
  with pytest.raises(SystemExit) as stopped:
    online.run(c, str(tmp_path / "resumed"))
  assert stopped.value.code == 143
  assert os.listdir(tmp_path / "resumed" / "checkpoints") == ["2"]
  interrupt_at = 0
  online.run(c, str(tmp_path / "resumed"))
  assert [p for step in trained for p in step] == [p for step in straight for p in step]
  assert len(straight) == 4 and all(len(step) == c.rl.prompts_per_step for step in straight)


def test_staleness_2_stays_within_its_bound(tmp_path):
  c = _async_config(tmp_path, 4)
  c.rl.max_staleness = 2
  online.run(c, str(tmp_path / "run"))
  assert all(r["staleness/max"] <= 2 for r in _records(tmp_path / "run"))


def test_split_pools_copy_the_weights_device_to_device_and_learn(tmp_path):
  """4 rollout + 4 training devices of the 8 simulated ones. The weight store's copy equals the trainer's
  params after each publish and lives on the rollout devices only; the run raises the toy reward of the
  synchronous GRPO test at k = 1 (interruptible rollouts: tokens may mix versions)."""
  model = ModelConfig(vocab_size=29, d_model=16, num_layers=1, num_heads=4, num_kv_heads=4, head_dim=8, mlp_dim=32)
  _, shapes, _ = state_lib.abstract_model(model)
  devices = jax.devices()
  axes = ("data", "fsdp", "tensor")
  auto = (jax.sharding.AxisType.Auto,) * 3
  train_mesh = jax.make_mesh((4, 1, 1), axes, devices=devices[4:], axis_types=auto)
  rollout_mesh = jax.make_mesh((1, 1, 4), axes, devices=devices[:4], axis_types=auto)
  setup = types.SimpleNamespace(frozen_base=None, model_cfg=model, policy_params=lambda p: p)
  rng = np.random.default_rng(0)
  params = jax.device_put(jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), shapes),
                          state_lib.param_shardings(model, train_mesh))
  store = producer.WeightStore(0, params, online._placement(setup, rollout_mesh))
  for version in (1, 2):
    params = jax.tree.map(lambda x: x + 1.0, params)
    store.publish(version, params)
    got_version, copy = store.current()
    assert got_version == version and len(store.transfers) == version
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(copy)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      assert b.sharding.device_set == set(devices[:4])
    assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(copy))  # Tensor-parallel.

  c = _toy_config(tmp_path)
  c.rl.rollout_devices, c.rl.max_staleness = 4, 1
  c.rl.beta, c.rl.old_logps, c.rl.off_policy_correction = 0.0, "sampler", "tis"
  online.run(c, str(tmp_path / "split"))
  records = _records(tmp_path / "split")
  rewards = [r["reward/mean"] for r in records]
  assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.2, rewards
  assert all(r["staleness/max"] <= 1 for r in records)
  # Timed when the producer first reads a version, so a step's record may carry the one before it.
  assert sum("weights/transfer_time" in r for r in records) >= len(records) // 2
