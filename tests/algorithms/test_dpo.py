"""The DPO family: each loss against hand-computed values, the policy == reference limits, and the full
loss on a tiny model (precomputed == online reference, padding pairs weigh nothing)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost import state as state_lib
from jaxpost.algorithms import dpo
from jaxpost.models import ModelConfig

LN2 = float(np.log(2))
SP1 = float(np.log1p(np.exp(-1.0)))  # -log sig(1) = log(1 + e^-1) = 0.3132617


def test_sigmoid_hand_values():
  # h = beta (rho_w - rho_l) = 0.5 * (1 - (-1)) = 1  ->  -log sig(1) = 0.3132617.
  np.testing.assert_allclose(dpo.sigmoid_loss(jnp.array([1.0]), jnp.array([-1.0]), beta=0.5), [SP1], rtol=1e-6)
  # cDPO eps = 0.1: 0.9 * 0.3132617 + 0.1 * -log sig(-1) (= 1.3132617) = 0.2819355 + 0.1313262 = 0.4132617.
  np.testing.assert_allclose(dpo.sigmoid_loss(jnp.array([1.0]), jnp.array([-1.0]), beta=0.5, label_smoothing=0.1),
                             [0.4132617], rtol=1e-6)
  # policy == reference: rho = 0 on both sides -> -log sig(0) = ln 2 for any beta and smoothing.
  np.testing.assert_allclose(dpo.sigmoid_loss(jnp.zeros(3), jnp.zeros(3), beta=3.0, label_smoothing=0.2), [LN2] * 3,
                             rtol=1e-6)


def test_ipo_hand_values():
  # (h - 1/(2 beta))^2 with h = 2, beta = 0.5: (2 - 1)^2 = 1; at h = 1/(2 beta) = 1 the loss is 0;
  # policy == reference (h = 0): (1/(2 beta))^2 = 1.
  np.testing.assert_allclose(dpo.ipo_loss(jnp.array([1.0, 0.5, 0.0]), jnp.array([-1.0, -0.5, 0.0]), beta=0.5),
                             [1.0, 0.0, 1.0], atol=1e-7)


def test_simpo_hand_values():
  # beta (a_w - a_l) - gamma = 2 * (-1 - (-2)) - 1 = 1 -> -log sig(1) = 0.3132617; equal averages with
  # gamma 0 give ln 2; equal averages with gamma 1 give -log sig(-1) = 1.3132617.
  np.testing.assert_allclose(dpo.simpo_loss(jnp.array([-1.0]), jnp.array([-2.0]), beta=2.0, gamma=1.0), [SP1],
                             rtol=1e-6)
  np.testing.assert_allclose(dpo.simpo_loss(jnp.array([-1.0]), jnp.array([-1.0]), beta=2.0, gamma=0.0), [LN2],
                             rtol=1e-6)
  np.testing.assert_allclose(dpo.simpo_loss(jnp.array([-1.0]), jnp.array([-1.0]), beta=2.0, gamma=1.0),
                             [1.0 + SP1], rtol=1e-6)


def test_orpo_hand_values():
  # a_w = ln 0.5: odds 1, log odds 0; a_l = ln 0.2: odds 0.25, log odds -1.3862944. log sig(1.3862944) =
  # -log(1 + 0.25) = -0.2231436. L = -ln 0.5 - 0.1 * (-0.2231436) = 0.6931472 + 0.0223144 = 0.7154616.
  np.testing.assert_allclose(dpo.orpo_loss(jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.2])), beta=0.1),
                             [0.7154616], rtol=1e-6)
  # Equal chosen and rejected: the odds-ratio term is ln 2, so L = -a_w + beta ln 2.
  np.testing.assert_allclose(dpo.orpo_loss(jnp.array([-3.0]), jnp.array([-3.0]), beta=0.5), [3.0 + 0.5 * LN2],
                             rtol=1e-6)


def test_kto_hand_values():
  # z0 = 0.5, beta 1: desirable rho = 1 -> 1 - sig(0.5) = 0.3775407; undesirable rho = -1, weight 2 ->
  # 2 (1 - sig(0.5 + 1)) = 2 * 0.1824255 = 0.3648510.
  losses = dpo.kto_loss(jnp.array([1.0, -1.0]), 0.5, jnp.array([True, False]), beta=1.0, undesirable_weight=2.0)
  np.testing.assert_allclose(losses, [0.3775407, 0.3648510], rtol=1e-6)
  # policy == reference: rho = 0 and z0 = 0 -> 1 - sig(0) = 0.5 for both kinds.
  np.testing.assert_allclose(dpo.kto_loss(jnp.zeros(2), 0.0, jnp.array([True, False]), beta=0.1), [0.5, 0.5])
  # z0 = max(0, mean of valid rows): (0.2 + 0.4) / 2 = 0.3 (the third row is padding); negative means clip to 0.
  valid = jnp.array([1.0, 1.0, 0.0])
  np.testing.assert_allclose(dpo.kto_reference_point(jnp.array([1.2, 1.4, 9.0]), jnp.array([1.0, 1.0, 0.0]), valid),
                             0.3, rtol=1e-6)
  assert float(dpo.kto_reference_point(jnp.array([0.0, 0.0, 0.0]), jnp.array([1.0, 1.0, 1.0]), valid)) == 0.0


# The full loss on a tiny model: zero params give uniform logits, so every completion token has
# logp = -ln V and a sequence s = -n ln V; reference log-probs are set relative to that.
MODEL = ModelConfig(vocab_size=29, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32,
                    logprob_impl="naive")
LN_V = float(np.log(29))


def _pairs(b=4, t=8, seed=0, lengths=((3, 2), (1, 4), (2, 2), (4, 1))):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 29, (b, 2, t + 1)).astype(np.int32)
  mask = np.zeros((b, 2, t), np.int32)
  for i, (nc, nr) in enumerate(lengths[:b]):
    mask[i, 0, 2:2 + nc], mask[i, 1, 2:2 + nr] = 1, 1
  return {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "loss_mask": mask,
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, 2, t)).copy(),
          "segment_ids": np.ones((b, 2, t), np.int32), "label": np.array([1, 0, 1, 0], np.int32)[:b]}


def _params(seed):
  graphdef, shapes, _ = state_lib.abstract_model(MODEL)
  if seed is None:
    return graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  rng = np.random.default_rng(seed)
  return graphdef, jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def _mean(loss_fn, params, batch, frozen=None):
  loss_sum, metrics = jax.jit(loss_fn)(params, batch, frozen)
  w = dpo.normalizer(batch)
  return float(loss_sum / w), {k: float(v / w) for k, v in metrics.items()}


def test_policy_equal_reference_gives_ln2_and_zero_margins():
  """Reference = the same params (online): rho = 0 for every pair -> loss ln 2, rewards and margins 0,
  accuracy 0 (no pair ranked strictly right)."""
  graphdef, params = _params(1)
  loss_fn, _ = dpo.make_loss_fn(graphdef, loss_type="sigmoid", options=dpo.Options(beta=0.3))
  loss, m = _mean(loss_fn, params, _pairs(), {"ref_params": params})
  np.testing.assert_allclose(loss, LN2, rtol=1e-6)
  np.testing.assert_allclose([m["rewards/chosen"], m["rewards/rejected"], m["rewards/margins"]], 0.0, atol=1e-6)
  assert m["rewards/accuracies"] == 0.0


@pytest.mark.parametrize("loss_type,expected", [
    ("sigmoid", SP1),          # rho_w = +1, rho_l = -1, beta 0.5: h = 1.
    ("ipo", 1.0),              # summed (ipo_length_norm off): (2 - 1/(2 * 0.5))^2 = 1.
    ("ipo_norm", 0.0381944),   # per token, lengths (3,2) (1,4) (2,2) (4,1): (1/n_w + 1/n_l - 1)^2 =
                               # 1/36, 1/16, 0, 1/16, mean 0.0381944.
    ("kto", None)])            # checked below
def test_loss_fn_with_precomputed_reference(loss_type, expected):
  """Zero params: s = -n ln V. ref_logps = s -/+ 1 makes rho = +1 for chosen (index 0), -1 for rejected.
  A fifth, all-padding pair (as eval batches are padded) must not change any mean."""
  graphdef, params = _params(None)
  batch = _pairs()
  n = batch["loss_mask"].sum(-1)  # (B, 2) completion lengths
  batch["ref_logps"] = (-n * LN_V + np.array([-1.0, 1.0])).astype(np.float32)
  batch = {k: np.concatenate([v, np.zeros_like(v[:1])]) for k, v in batch.items()}  # + an eval padding pair
  assert float(dpo.normalizer(batch)) == 4.0  # ... which counts for nothing.
  options = dpo.Options(beta=0.5, ipo_length_norm=loss_type == "ipo_norm")
  loss_fn, _ = dpo.make_loss_fn(graphdef, loss_type=loss_type.replace("_norm", ""), options=options)
  loss, m = _mean(loss_fn, params, batch)
  if loss_type == "kto":
    # KL rows (index 1) have rho = -1 -> z0 = max(0, -1) = 0; examples rho = +1: desirable rows 0, 2 give
    # 1 - sig(0.5) = 0.3775407, undesirable rows 1, 3 give 1 - sig(0 - 0.5) = 0.6224593; mean 0.5.
    np.testing.assert_allclose(loss, 0.5, rtol=1e-6)
    np.testing.assert_allclose([m["kl"], m["rewards/chosen"], m["rewards/rejected"]], [0.0, 0.5, 0.5], atol=1e-6)
    return
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose([m["rewards/chosen"], m["rewards/rejected"], m["rewards/margins"],
                              m["rewards/accuracies"]], [0.5, -0.5, 1.0, 1.0], rtol=1e-6)


def test_reference_free_loss_on_tiny_model():
  """orpo (like simpo) reads no reference. Zero params: the average log-prob is -ln V for every sequence,
  so the odds-ratio term is ln 2 and L = ln V + beta ln 2."""
  graphdef, params = _params(None)
  orpo, _ = dpo.make_loss_fn(graphdef, loss_type="orpo", options=dpo.Options(beta=0.1))
  np.testing.assert_allclose(_mean(orpo, params, _pairs())[0], LN_V + 0.1 * LN2, rtol=1e-5)


def test_precomputed_equals_online_reference():
  """The precompute pass (make_reference_logps_fn on the reference) and the online path (frozen params)
  give the same loss, metrics and gradients."""
  graphdef, params = _params(2)
  _, ref_params = _params(3)
  batch = _pairs()
  loss_fn, _ = dpo.make_loss_fn(graphdef, loss_type="sigmoid", options=dpo.Options(beta=0.2))
  pre = dict(batch, ref_logps=np.asarray(jax.jit(dpo.make_reference_logps_fn(graphdef))(ref_params, batch)))
  grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (l_on, m_on), g_on = grad(params, batch, {"ref_params": ref_params})
  (l_pre, m_pre), g_pre = grad(params, pre, None)
  np.testing.assert_allclose(l_on, l_pre, rtol=1e-6)
  for k in m_on:
    np.testing.assert_allclose(m_on[k], m_pre[k], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_pre)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_missing_reference_is_an_error():
  graphdef, params = _params(None)
  with pytest.raises(ValueError, match="needs reference log-probs"):
    dpo.make_loss_fn(graphdef, loss_type="sigmoid")[0](params, _pairs(), None)
  with pytest.raises(ValueError, match="loss_type 'nope'"):
    dpo.make_loss_fn(graphdef, loss_type="nope")
