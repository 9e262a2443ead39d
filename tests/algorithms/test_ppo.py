"""PPO pieces against hand-computed values and a plain Python GAE loop."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.algorithms import ppo


def _gae_loop(rewards, values, mask, gamma, lam):
  """The textbook backward recursion, one row at a time, terminal after the last masked token."""
  adv = np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    idx = np.nonzero(mask[b])[0]
    last_adv = 0.0
    for j in reversed(range(len(idx))):
      t = idx[j]
      next_value = values[b, idx[j + 1]] if j + 1 < len(idx) else 0.0
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      last_adv = delta + gamma * lam * last_adv
      adv[b, t] = last_adv
  return adv


def test_gae_matches_a_python_loop_with_terminal_mask():
  rng = np.random.default_rng(0)
  b, t = 4, 9
  mask = np.zeros((b, t), np.float32)
  for i, (start, end) in enumerate([(2, 9), (3, 6), (0, 1), (4, 8)]):  # contiguous completions, one of length 1
    mask[i, start:end] = 1
  rewards = rng.normal(size=(b, t)).astype(np.float32) * mask
  values = rng.normal(size=(b, t)).astype(np.float32)
  adv, ret = ppo.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma=0.9, lam=0.8)
  want = _gae_loop(rewards, values, mask, 0.9, 0.8)
  np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ret, (want + values) * mask, rtol=1e-5, atol=1e-6)


def test_gae_by_hand():
  """Two tokens, gamma = 1, lam = 1: V = (0.5, 0.25), r = (0, 1).
  delta_1 = 1 + 0 - 0.25 = 0.75;  A_1 = 0.75.
  delta_0 = 0 + 0.25 - 0.5 = -0.25;  A_0 = -0.25 + 0.75 = 0.5 (= total return 1 - V_0)."""
  adv, ret = ppo.gae(jnp.array([[0.0, 1.0]]), jnp.array([[0.5, 0.25]]), jnp.ones((1, 2)), gamma=1.0, lam=1.0)
  np.testing.assert_allclose(adv, [[0.5, 0.75]])
  np.testing.assert_allclose(ret, [[1.0, 1.0]])


def test_token_rewards_put_the_score_on_the_last_token():
  """beta = 0.5, old - ref = (0.2, -0.4, 0.6) on the completion columns 1..3, score 2:
  r = -0.5 * (0.2, -0.4, 0.6) + (0, 0, 2) = (-0.1, 0.2, 1.7); column 0 (prompt) gets 0."""
  mask = jnp.array([[0, 1, 1, 1]])
  old = jnp.array([[9.0, 0.2, -0.4, 0.6]])
  r = ppo.token_rewards(jnp.array([2.0]), old, jnp.zeros((1, 4)), mask, beta=0.5)
  np.testing.assert_allclose(r, [[0.0, -0.1, 0.2, 1.7]], rtol=1e-6)


def test_value_loss_clipping_by_hand():
  """old V = 0, clip 0.2, R = 1: V = 0.5 -> clipped 0.2, max((0.5-1)^2, (0.2-1)^2)/2 = 0.64/2 = 0.32 (clipped);
  V = 1.5 -> clipped 0.2: max(0.25, 0.64)/2 = 0.32 as well; V = 0.1 (inside the clip): 0.81/2 = 0.405."""
  loss, clipped = ppo.value_loss(jnp.array([[0.5, 1.5, 0.1]]), jnp.zeros((1, 3)), jnp.ones((1, 3)), jnp.ones((1, 3)),
                                 clip=0.2)
  np.testing.assert_allclose(loss, [[0.32, 0.32, 0.405]], rtol=1e-6)
  np.testing.assert_array_equal(clipped, [[1, 1, 0]])


def test_whiten_and_explained_variance():
  mask = jnp.array([[1, 1, 1, 0]])
  w = ppo.whiten(jnp.array([[1.0, 2.0, 3.0, 100.0]]), mask)  # mean 2, var 2/3 over the mask
  np.testing.assert_allclose(w, [[-1.2247449, 0.0, 1.2247449, 0.0]], rtol=1e-5)
  r = jnp.array([[1.0, 2.0, 3.0, 0.0]])
  assert float(ppo.explained_variance(r, r, mask)) == pytest.approx(1.0)
  assert float(ppo.explained_variance(jnp.full((1, 4), 2.0), r, mask)) == pytest.approx(0.0, abs=1e-6)
