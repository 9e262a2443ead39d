"""KL estimators k1, k2, k3 (Schulman 2020): hand values, and their expectation vs the exact KL."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.algorithms import kl


def test_hand_values():
  """Policy p(y) and reference q(y) for three tokens, log r = log q - log p:
    p=1/2, q=1/4: log r = -ln 2 = -0.693147; k1 = 0.693147;  k2 = 0.480453 / 2 = 0.240227;
                  k3 = (0.5 - 1) + 0.693147 = 0.193147
    p=1/4, q=1/2: log r = +ln 2;             k1 = -0.693147; k2 = 0.240227;
                  k3 = (2 - 1) - 0.693147 = 0.306853
    p=q=0.3:      log r = 0;                 all three are 0."""
  logps = jnp.log(jnp.array([[0.5, 0.25, 0.3]]))
  ref_logps = jnp.log(jnp.array([[0.25, 0.5, 0.3]]))
  np.testing.assert_allclose(kl.k1(logps, ref_logps), [[0.693147, -0.693147, 0.0]], atol=1e-6)
  np.testing.assert_allclose(kl.k2(logps, ref_logps), [[0.240227, 0.240227, 0.0]], atol=1e-6)
  np.testing.assert_allclose(kl.k3(logps, ref_logps), [[0.193147, 0.306853, 0.0]], atol=1e-6)
  for name in ("k1", "k2", "k3"):
    np.testing.assert_array_equal(kl.kl_estimate(logps, ref_logps, name), kl.KL_ESTIMATORS[name](logps, ref_logps))
  with pytest.raises(ValueError, match="unknown KL estimator"):
    kl.kl_estimate(logps, ref_logps, "k4")


def test_k3_is_finite_for_extreme_ratios():
  """log r = +100 would overflow exp in float32; the clip to 20 keeps it finite: e^20 - 1 - 20."""
  out = kl.k3(jnp.array([-100.0]), jnp.array([0.0]))
  np.testing.assert_allclose(out, [np.expm1(20.0) - 20.0], rtol=1e-5)


def _sample(p, q, n, seed):
  """n tokens y ~ p; returns (log p(y), log q(y)) and the exact KL(p || q) = sum_y p log(p/q)."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  y = jax.random.categorical(jax.random.key(seed), jnp.log(jnp.asarray(p, jnp.float32)), shape=(n,))
  logp, logq = jnp.log(jnp.asarray(p, jnp.float32))[y], jnp.log(jnp.asarray(q, jnp.float32))[y]
  return logp, logq, float(np.sum(p * np.log(p / q)))


@pytest.mark.parametrize("name", ["k1", "k3"])
@pytest.mark.parametrize("p,q", [([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]),     # KL = 0.456435
                                  ([0.5, 0.3, 0.2], [0.45, 0.35, 0.2])])           # KL = 0.006435
def test_unbiased_estimators_match_exact_kl(name, p, q):
  """k1 and k3 are unbiased: over 200k samples from p their mean is within 3 standard errors of KL(p||q)."""
  logp, logq, exact = _sample(p, q, 200_000, seed=0)
  est = np.asarray(kl.KL_ESTIMATORS[name](logp, logq), np.float64)
  stderr = est.std() / np.sqrt(est.size)
  assert abs(est.mean() - exact) < 3 * stderr, (name, est.mean(), exact, stderr)


def test_k2_is_close_for_near_distributions():
  """k2 is biased, little for near distributions: for p ~ q (KL = 0.006435, E[k2] = 0.006340) its mean is
  within 5% of the exact KL; for far ones (KL = 0.456435, E[k2] = 0.521554) it is off by more than 0.05."""
  logp, logq, exact = _sample([0.5, 0.3, 0.2], [0.45, 0.35, 0.2], 200_000, seed=1)
  assert abs(float(jnp.mean(kl.k2(logp, logq))) - exact) < 0.05 * exact
  logp, logq, exact = _sample([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], 200_000, seed=1)
  assert abs(float(jnp.mean(kl.k2(logp, logq))) - exact) > 0.05


def test_k3_has_lower_variance_than_k1_near_the_reference():
  """The reason GRPO uses k3: for p ~ q its per-sample variance is far below k1's."""
  logp, logq, _ = _sample([0.5, 0.3, 0.2], [0.45, 0.35, 0.2], 50_000, seed=2)
  assert float(jnp.var(kl.k3(logp, logq))) < 0.1 * float(jnp.var(kl.k1(logp, logq)))
