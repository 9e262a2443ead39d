"""Reward model: the Bradley-Terry loss against hand-computed values and the last-token read-out."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxpost import state as state_lib
from jaxpost.algorithms import rm
from jaxpost.models import ModelConfig


def test_bradley_terry_hand_values():
  # r_w = 2, r_l = 1: -log sig(1) = log(1 + e^-1) = 0.3132617. A margin of 1 leaves -log sig(0) = ln 2.
  # Centering eta = 0.1 adds 0.1 * (2 + 1)^2 = 0.9 -> 1.2132617. Equal rewards: ln 2 (the untrained value).
  r_w, r_l = jnp.array([2.0, 2.0, 2.0, 0.5]), jnp.array([1.0, 1.0, 1.0, 0.5])
  np.testing.assert_allclose(rm.bradley_terry_loss(r_w, r_l), [0.3132617, 0.3132617, 0.3132617, np.log(2)], rtol=1e-6)
  np.testing.assert_allclose(rm.bradley_terry_loss(r_w[:2], r_l[:2], jnp.array([1.0, 0.0])), [np.log(2), 0.3132617],
                             rtol=1e-6)
  np.testing.assert_allclose(rm.bradley_terry_loss(r_w[:1], r_l[:1], center_coef=0.1), [1.2132617], rtol=1e-6)


def test_last_token_scores():
  scores = jnp.arange(12.0).reshape(3, 4)
  segment_ids = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
  np.testing.assert_array_equal(rm.last_token_scores(scores, segment_ids), [1.0, 7.0, 8.0])


def test_loss_fn_on_tiny_model():
  """Zero params except the head bias b: every reward equals b, so the loss is ln 2 whatever b, the
  accuracy 0 (no strict win), and reward/chosen = b; centering adds eta (2b)^2 = 0.1 * 4 * 0.25 = 0.1;
  the padding pair (third row) counts for nothing."""
  cfg = ModelConfig(vocab_size=11, d_model=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4, mlp_dim=16,
                    head="scalar")
  graphdef, shapes, _ = state_lib.abstract_model(cfg)
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  params["score_b"] = np.float32(0.5)
  t = 6
  seg = np.zeros((3, 2, t), np.int32)
  seg[0, :, :4], seg[1, 0, :5], seg[1, 1, :3] = 1, 1, 1
  batch = {"inputs": np.ones((3, 2, t), np.int32), "positions": np.broadcast_to(np.arange(t), (3, 2, t)),
           "segment_ids": seg, "loss_mask": seg, "margin": np.zeros(3, np.float32)}
  loss_sum, m = jax.jit(rm.make_loss_fn(graphdef, center_coef=0.1)[0])(params, batch)
  n = float(rm.normalizer(batch))
  assert n == 2.0
  np.testing.assert_allclose(float(loss_sum) / n, np.log(2) + 0.1, rtol=1e-6)
  np.testing.assert_allclose([float(m["accuracy"]) / n, float(m["reward/chosen"]) / n], [0.0, 0.5], rtol=1e-6)
