"""GRPO family math: advantages, policy losses and aggregation against hand values, plus invariances
(on-policy first update, packed == unpacked, microbatches add up, GSPO-token == sequence-level GSPO)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost import logprobs as logprobs_lib
from jaxpost import state as state_lib
from jaxpost.algorithms import grpo
from jaxpost.models import ModelConfig

# Two groups of G = 4: [1, 0, 0, 1] has mean 0.5, population std 0.5;
# [3, 1, 2, 2] has mean 2, deviations [1, -1, 0, 0], variance 2/4 = 0.5, std sqrt(0.5) = 0.707107.
REWARDS = [[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]]


def test_grpo_advantages():
  """(r - mean) / (std + 1e-6): group 1 -> +-0.5 / 0.5 = +-1 (0.999998 with eps);
  group 2 -> [1, -1, 0, 0] / 0.707107 = [1.414214, -1.414214, 0, 0]; an all-equal group -> 0 (no signal)."""
  adv = grpo.grpo_advantages(REWARDS + [[2.0, 2.0, 2.0, 2.0]])
  np.testing.assert_allclose(adv, [[1, -1, -1, 1], [1.414214, -1.414214, 0, 0], [0, 0, 0, 0]], atol=1e-5)


def test_dr_grpo_advantages():
  """r - mean only: [0.5, -0.5, -0.5, 0.5] and [1, -1, 0, 0]."""
  np.testing.assert_allclose(grpo.dr_grpo_advantages(REWARDS), [[0.5, -0.5, -0.5, 0.5], [1, -1, 0, 0]], atol=1e-6)


def test_rloo_advantages():
  """r_i - mean of the other three: group 1, i=0: 1 - (0+0+1)/3 = 2/3; i=1: 0 - (1+0+1)/3 = -2/3.
  group 2: 3 - (1+2+2)/3 = 4/3; 1 - (3+2+2)/3 = -4/3; 2 - (3+1+2)/3 = 0."""
  np.testing.assert_allclose(grpo.rloo_advantages(REWARDS),
                             [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [4 / 3, -4 / 3, 0, 0]], atol=1e-6)
  with pytest.raises(ValueError, match="at least 2"):
    grpo.rloo_advantages([[1.0], [2.0]])


def test_reinforce_pp_advantages():
  """d = r - group mean = [0.5, -0.5, -0.5, 0.5, 1, -1, 0, 0]; batch mean 0; batch variance
  (4 * 0.25 + 2 * 1) / 8 = 0.375, std 0.612372; A = d / 0.612372 = [+-0.816497 ..., +-1.632993, 0, 0]."""
  a, b = 0.5 / np.sqrt(0.375), 1 / np.sqrt(0.375)
  np.testing.assert_allclose(grpo.reinforce_pp_advantages(REWARDS), [[a, -a, -a, a], [b, -b, 0, 0]], atol=1e-5)


@pytest.mark.parametrize("name", sorted(grpo.ADVANTAGES))
def test_flat_rewards_equal_grouped(name):
  """rewards [P*G] with group_size G give the same [P, G] advantages as rewards [P, G]."""
  flat = jnp.asarray(REWARDS).reshape(-1)
  np.testing.assert_allclose(grpo.compute_advantages(flat, 4, name), grpo.compute_advantages(REWARDS, None, name))
  with pytest.raises(ValueError, match="group_size"):
    grpo.compute_advantages(flat, 3, name)


# Policy losses. Two rows of four tokens; the ratios are set through old_logps = logps - log(ratio).
RATIOS = np.array([[1.5, 0.5, 1.1, 1.0], [1.5, 0.5, 0.9, 4.0]], np.float32)
ADV = np.array([2.0, -1.0], np.float32)


def _ppo(dual_clip=None, mask=None):
  logps = jnp.full((2, 4), -1.0)
  mask = jnp.ones((2, 4)) if mask is None else mask
  return grpo.ppo_clip_loss(logps, logps - jnp.log(RATIOS), ADV, mask, epsilon_low=0.2, epsilon_high=0.28,
                            dual_clip=dual_clip)


def test_ppo_clip_both_sides():
  """L = max(-A r, -A clip(r, 0.8, 1.28)) (clip-higher: eps_low 0.2, eps_high 0.28).
  A = +2: r=1.5: max(-3.0, -2.56) = -2.56 (clipped high); r=0.5: max(-1.0, -1.6) = -1.0 (a low ratio is
          not clipped for A > 0); r=1.1: -2.2; r=1.0: -2.0.
  A = -1: r=1.5: max(1.5, 1.28) = 1.5 (a high ratio is not clipped for A < 0); r=0.5: max(0.5, 0.8) = 0.8
          (clipped low); r=0.9: 0.9; r=4.0: max(4.0, 1.28) = 4.0 (unbounded without the dual clip)."""
  loss, m = _ppo()
  np.testing.assert_allclose(loss, [[-2.56, -1.0, -2.2, -2.0], [1.5, 0.8, 0.9, 4.0]], atol=1e-5)
  np.testing.assert_array_equal(m["clipped_high"], [[1, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(m["clipped_low"], [[0, 0, 0, 0], [0, 1, 0, 0]])
  np.testing.assert_array_equal(m["dual_clipped"], np.zeros((2, 4)))
  np.testing.assert_allclose(m["ratio"], RATIOS, rtol=1e-6)


def test_ppo_dual_clip():
  """Dual clip c = 3, only for A < 0: L = min(L, -c A) = min(L, 3). Row 2: r=4.0 -> min(4.0, 3) = 3 (dual
  clipped); the rest (1.5, 0.8, 0.9 < 3) unchanged. Row 1 (A = +2) is untouched."""
  loss, m = _ppo(dual_clip=3.0)
  np.testing.assert_allclose(loss, [[-2.56, -1.0, -2.2, -2.0], [1.5, 0.8, 0.9, 3.0]], atol=1e-5)
  np.testing.assert_array_equal(m["dual_clipped"], [[0, 0, 0, 0], [0, 0, 0, 1]])
  with pytest.raises(ValueError, match="dual_clip"):
    _ppo(dual_clip=0.5)


def test_ppo_clipped_tokens_get_no_gradient():
  """d L / d logp = -A r where unclipped, 0 where clipped: row 1: [0, -1.0, -2.2, -2.0]; row 2 with the
  dual clip: [1.5, 0, 0.9, 0]."""
  old = jnp.full((2, 4), -1.0) - jnp.log(RATIOS)
  f = lambda lp: jnp.sum(grpo.ppo_clip_loss(lp, old, ADV, jnp.ones((2, 4)), epsilon_low=0.2, epsilon_high=0.28,
                                            dual_clip=3.0)[0])
  np.testing.assert_allclose(jax.grad(f)(jnp.full((2, 4), -1.0)), [[0, -1.0, -2.2, -2.0], [1.5, 0, 0.9, 0]],
                             atol=1e-5)


def test_masked_tokens_are_zero():
  mask = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0]], jnp.float32)
  loss, m = _ppo(mask=mask)
  np.testing.assert_allclose(loss, [[-2.56, -1.0, 0, 0], [1.5, 0, 0, 0]], atol=1e-5)
  np.testing.assert_array_equal(m["clipped_low"], np.zeros((2, 4)))  # the clipped token is masked out.


def test_reinforce_loss():
  """-A logp: A = 0.5, logps [-1, -2] -> [0.5, 1.0]; no clipping ever."""
  loss, m = grpo.reinforce_loss(jnp.array([[-1.0, -2.0]]), jnp.array([[-5.0, -5.0]]), jnp.array([0.5]),
                                jnp.ones((1, 2)))
  np.testing.assert_allclose(loss, [[0.5, 1.0]])
  assert float(m["clipped_low"].sum() + m["clipped_high"].sum()) == 0


def test_gspo_hand_values():
  """Row 1: log ratios [0.1, 0.3, (masked 5.0)] -> s = exp(0.2) = 1.221403 < 1.28, A = 1: loss -1.221403 per
  token. Row 2: log ratios [0.4, 0.6] -> s = exp(0.5) = 1.648721 > 1.28: loss -1.28 per token, both clipped."""
  logps = jnp.zeros((2, 3))
  old = -jnp.array([[0.1, 0.3, 5.0], [0.4, 0.6, 0.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 0]], jnp.float32)
  loss, m = jax.jit(functools.partial(grpo.gspo_loss, epsilon_low=0.2, epsilon_high=0.28))(logps, old,
                                                                                          jnp.ones(2), mask)
  np.testing.assert_allclose(loss, [[-1.221403, -1.221403, 0], [-1.28, -1.28, 0]], atol=1e-5)
  np.testing.assert_array_equal(m["clipped_high"], [[0, 0, 0], [1, 1, 0]])
  np.testing.assert_allclose(m["ratio"], [[1.221403, 1.221403, 0], [1.648721, 1.648721, 0]], atol=1e-5)


def test_gspo_token_gradient_equals_sequence_level():
  """With seq_mean_token_mean, GSPO-token's gradient equals that of the sequence objective
  J = (1/|S|) sum_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t(logp - old)), for random values."""
  rng = np.random.default_rng(0)
  logps = -rng.uniform(0.5, 2.0, (3, 5)).astype(np.float32)
  old = logps + 0.3 * rng.standard_normal((3, 5)).astype(np.float32)
  adv = rng.standard_normal(3).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], np.float32)
  eps = 0.3

  def token_level(lp):
    loss, _ = grpo.gspo_loss(lp, old, adv, mask, epsilon_low=eps, epsilon_high=eps)
    s, n = grpo.aggregate(loss, mask, "seq_mean_token_mean")
    return s / n

  def sequence_level(lp):
    s = jnp.exp(jnp.sum((lp - old) * mask, 1) / jnp.sum(mask, 1))
    return -jnp.mean(jnp.minimum(s * adv, jnp.clip(s, 1 - eps, 1 + eps) * adv))

  np.testing.assert_allclose(jax.jit(token_level)(logps), jax.jit(sequence_level)(logps), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(jax.grad(token_level))(logps), jax.jit(jax.grad(sequence_level))(logps),
                             atol=1e-6)


# Aggregation: row 1 values [1, 2, 3, 4] mask [0, 1, 1, 1] -> sum 9 over 3 tokens (mean 3);
#              row 2 values [5, 6, 7, 8] mask [1, 1, 0, 0] -> sum 11 over 2 tokens (mean 5.5).
VALUES = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
MASK = np.array([[0, 1, 1, 1], [1, 1, 0, 0]], np.float32)
EXPECTED = {"token_mean": (20.0, 5.0),                       # (9 + 11) / 5 tokens = 4.0
            "seq_mean_token_mean": (8.5, 2.0),               # (3 + 5.5) / 2 sequences = 4.25
            "seq_mean_token_sum_norm": (5.0, 2.0),           # (9/4 + 11/4) / 2 sequences = 2.5, max_len 4
            "seq_mean_token_sum": (20.0, 2.0)}               # (9 + 11) / 2 sequences = 10


@pytest.mark.parametrize("mode", grpo.AGGREGATIONS)
def test_aggregation_hand_values(mode):
  loss_sum, norm = grpo.aggregate(VALUES, MASK, mode, max_len=4)
  np.testing.assert_allclose((loss_sum, norm), EXPECTED[mode], rtol=1e-6)


@pytest.mark.parametrize("mode", grpo.AGGREGATIONS)
def test_packed_equals_unpacked(mode):
  """The two sequences packed in one row [seq1 | seq2 | padding] (segment ids 1, 2, 0) give the same
  (loss_sum, normalizer) as one sequence per row; a nonzero value on padding must not leak in."""
  packed = np.concatenate([VALUES[0], VALUES[1], [100.0, 100.0]])[None]
  packed_mask = np.concatenate([MASK[0], MASK[1], [0, 0]])[None]
  seg = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
  out = grpo.aggregate(packed, packed_mask, mode, segment_ids=seg, max_len=4)
  np.testing.assert_allclose(out, EXPECTED[mode], rtol=1e-6)
  unpacked = grpo.aggregate(VALUES, MASK, mode, segment_ids=np.ones((2, 4)), max_len=4)
  np.testing.assert_allclose(out, unpacked, rtol=1e-6)


@pytest.mark.parametrize("mode", grpo.AGGREGATIONS)
def test_microbatch_sums_add_up(mode):
  """The train step sums loss_sum over microbatches and divides by the normalizer of the whole batch:
  row-wise halves must add up to the full batch (the per-sequence means are what makes this exact)."""
  full = grpo.aggregate(VALUES, MASK, mode, max_len=4)[0]
  halves = sum(grpo.aggregate(VALUES[i:i + 1], MASK[i:i + 1], mode, max_len=4)[0] for i in range(2))
  np.testing.assert_allclose(halves, full, rtol=1e-6)


def test_gspo_packed_equals_unpacked():
  """GSPO's sequence ratio must stay within a segment: the packed row gives the per-token losses of the rows."""
  logps = jnp.asarray(-VALUES / 10)
  old = jnp.asarray(-VALUES[::-1] / 10)
  adv_rows = jnp.array([1.0, -1.0])
  gspo = jax.jit(functools.partial(grpo.gspo_loss, epsilon_low=0.2, epsilon_high=0.2))
  loss, _ = gspo(logps, old, adv_rows, MASK)
  adv_tokens = jnp.concatenate([jnp.full(4, 1.0), jnp.full(4, -1.0)])[None]
  packed, _ = gspo(logps.reshape(1, 8), old.reshape(1, 8), adv_tokens, MASK.reshape(1, 8),
                   segment_ids=jnp.array([[1] * 4 + [2] * 4]))
  np.testing.assert_allclose(packed.reshape(2, 4), loss, rtol=1e-6)


# The full loss on a tiny model.
MODEL = ModelConfig(vocab_size=29, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
LN_V = float(np.log(29))  # zero params -> uniform logits: logp = -ln 29 = -3.367296, entropy ln 29.
LENGTHS = [3, 5, 2, 4]  # completion tokens per row (the first tokens of each row are the "prompt").


def _batch(b=4, t=8, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 29, (b, t + 1)).astype(np.int32)
  mask = np.zeros((b, t), np.int32)
  for i, n in enumerate(LENGTHS):
    mask[i, 2:2 + n] = 1
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
          "positions": np.arange(t, dtype=np.int32)[None].repeat(b, 0), "segment_ids": np.ones((b, t), np.int32),
          "advantages": np.array([1.0, -1.0, 0.5, 0.0], np.float32)}


def _params(seed):
  graphdef, shapes, _ = state_lib.abstract_model(MODEL)
  if seed is None:
    return graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  rng = np.random.default_rng(seed)  # numpy: eager jax.random would compile once per leaf shape.
  return graphdef, jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def _mean(loss_fn, normalizer, params, batch):
  loss_sum, metrics = jax.jit(loss_fn)(params, batch)
  w = normalizer(batch)
  return float(loss_sum / w), {k: float(v / w) for k, v in metrics.items()}


@pytest.mark.parametrize("aggregation,max_len,expected", [
    ("seq_mean_token_mean", None, -0.125),        # mean_b(-A_b) = -(1 - 1 + 0.5 + 0) / 4
    ("token_mean", None, 1 / 14),                 # sum_b n_b (-A_b) / sum n = (-3 + 5 - 1 + 0) / 14
    ("seq_mean_token_sum_norm", 8, 0.03125)])     # sum_b n_b (-A_b) / 8 / 4 = 1 / 32
def test_grpo_loss_hand_values(aggregation, max_len, expected):
  """Zero params: every logp = -ln 29, ratio 1 (old = logps), so the PPO loss per token is -A. With
  ref_logps = logps + ln 2 (log r = ln 2): k3 = (2 - 1) - ln 2 = 0.306853 per token; beta 0.1 adds 0.0306853;
  entropy_coef 0.01 subtracts 0.01 * ln 29 = 0.0336730: a constant c = -0.0029877 per token, which every
  mode averages to c except seq_mean_token_sum_norm: sum_b n_b c / 8 / 4 = 14 c / 32."""
  graphdef, params = _params(None)
  batch = dict(_batch(), old_logps=np.full((4, 8), -LN_V, np.float32),
               ref_logps=np.full((4, 8), -LN_V + np.log(2), np.float32))
  loss_fn, normalizer = grpo.make_loss_fn(graphdef, aggregation=aggregation, max_len=max_len, beta=0.1,
                                               entropy_coef=0.01, epsilon_low=0.2, epsilon_high=0.28)
  loss, m = _mean(loss_fn, normalizer, params, batch)
  per_token_const = 0.1 * (1 - np.log(2)) - 0.01 * LN_V
  scale = 14 / 32 if aggregation == "seq_mean_token_sum_norm" else 1.0
  np.testing.assert_allclose(loss, expected + scale * per_token_const, atol=1e-5)
  np.testing.assert_allclose([m["kl"], m["entropy"], m["ratio"], m["clip_frac"]],
                             [1 - np.log(2), LN_V, 1.0, 0.0], atol=1e-5)
  np.testing.assert_allclose(m["pg_loss"], expected, atol=1e-6)
  assert float(normalizer(batch)) == (14 if aggregation == "token_mean" else 4)


def test_first_update_is_on_policy():
  """Random params, old_logps = ref_logps = the current logps: ratio 1, clip_frac 0, kl 0."""
  graphdef, params = _params(0)
  batch = _batch()
  logps = jax.jit(lambda p, b: logprobs_lib.token_logprobs(graphdef, p, b))(params, batch)
  loss_fn, normalizer = grpo.make_loss_fn(graphdef, beta=0.04)
  _, m = _mean(loss_fn, normalizer, params, dict(batch, old_logps=logps, ref_logps=logps))
  np.testing.assert_allclose([m["ratio"], m["clip_frac"], m["kl"]], [1.0, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("policy_loss", ["ppo_clip", "gspo"])
def test_on_policy_gradient_is_vanilla_policy_gradient(policy_loss):
  """At old_logps = logps the ratio is 1 and d ratio / d logp = 1, so every loss has the gradient of
  -A logp (reinforce) with respect to logps, hence to params (the chain rule from logps on is shared).
  Also with old_logps = sg[logps], what the loss uses when the batch has no old_logps."""
  logps = -np.random.default_rng(1).uniform(0.5, 3.0, (4, 8)).astype(np.float32)
  mask = jnp.asarray(_batch()["loss_mask"], jnp.float32)
  adv = jnp.array([1.0, -1.0, 0.5, 0.0])

  def mean_loss(name, old):
    def f(lp):
      loss, _ = grpo.POLICY_LOSSES[name](lp, lp if old is None else old, adv, mask, epsilon_low=0.2,
                                         epsilon_high=0.2)
      s, n = grpo.aggregate(loss, mask, "seq_mean_token_mean")
      return s / n
    return f

  expected = jax.jit(jax.grad(mean_loss("reinforce", logps)))(logps)
  np.testing.assert_allclose(jax.jit(jax.grad(mean_loss(policy_loss, logps)))(logps), expected, atol=1e-6)
  stop = lambda lp: mean_loss(policy_loss, jax.lax.stop_gradient(lp))(lp)
  np.testing.assert_allclose(jax.jit(jax.grad(stop))(logps), expected, atol=1e-6)


def test_beta_needs_ref_logps():
  graphdef, params = _params(None)
  loss_fn, _ = grpo.make_loss_fn(graphdef, beta=0.1)
  with pytest.raises(KeyError, match="ref_logps"):
    loss_fn(params, _batch())
  with pytest.raises(ValueError, match="max_len"):
    grpo.make_loss_fn(graphdef, aggregation="seq_mean_token_sum_norm")
  with pytest.raises(ValueError, match="unknown policy loss"):
    grpo.make_loss_fn(graphdef, policy_loss="ppo")


# ---------------------------------------------------------------------------------------------------------
# The online step's pieces: rollout rules and batch preparation.
# ---------------------------------------------------------------------------------------------------------


def test_dynamic_sampling_and_overlong_penalty_by_hand():
  """Groups [1, 1], [0, 1], [0, 0] -> only the mixed one carries signal. Budget 8, buffer 4: the penalty
  ramps from length 4: lengths [3, 4, 6, 8] -> [0, 0, 2/4, 4/4] = [0, 0, 0.5, 1]."""
  keep = grpo.informative_groups(np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
  np.testing.assert_array_equal(keep, [False, True, False])
  np.testing.assert_allclose(grpo.overlong_penalty(np.array([3, 4, 6, 8]), max_len=8, buffer=4), [0, 0, 0.5, 1])


def _rollout_rows(rewards, valid, truncated, *, t=3):
  """Rows with loss_mask 1 on every column; old - ref log-probs = 0.1 * (row + 1) per token."""
  r = len(rewards)
  old = np.zeros((r, t), np.float32)
  ref = -0.1 * (np.arange(r, dtype=np.float32)[:, None] + 1) * np.ones((1, t), np.float32)
  batch = {"loss_mask": np.ones((r, t), np.int32), "old_logps": old, "ref_logps": ref}
  rollout = {k: np.asarray(v, np.float32) for k, v in
             (("rewards", rewards), ("valid", valid), ("truncated", truncated))}
  return batch, rollout


def test_prepare_batch_kl_in_reward_and_overlong_filter_by_hand():
  """One group of G = 2, rewards [1, 0], row 1 truncated, beta 0.5, T = 3 tokens of k1 0.1 and 0.2.
  Filter first: row 1's loss_mask -> 0, so its sequence KL is 0 and row 0's is 3 * 0.1 = 0.3.
  r = [1 - 0.5 * 0.3, 0 - 0] = [0.85, 0]: mean 0.425, population std 0.425 -> A = [1, -1] (eps 1e-6)."""
  batch, rollout = _rollout_rows([1.0, 0.0], [1, 1], [0, 1])
  out, metrics = grpo.prepare_batch(batch, rollout, num_generations=2, advantage="grpo", beta=0.5,
                                    kl_in_reward=True, filter_truncated=True)
  np.testing.assert_array_equal(out["loss_mask"], [[1, 1, 1], [0, 0, 0]])
  np.testing.assert_allclose(out["advantages"], [1.0, -1.0], atol=1e-5)
  assert metrics == {}
  # Without the filter, row 1 keeps its tokens and its KL 3 * 0.2 = 0.6: r = [0.85, -0.3], A = [1, -1] still,
  # but the mask is untouched.
  out, _ = grpo.prepare_batch(batch, rollout, num_generations=2, advantage="dr_grpo", beta=0.5, kl_in_reward=True,
                              filter_truncated=False)
  np.testing.assert_array_equal(out["loss_mask"], np.ones((2, 3)))
  np.testing.assert_allclose(out["advantages"], [0.575, -0.575], atol=1e-6)  # (0.85 + 0.3) / 2 = 0.575.


@pytest.mark.parametrize("advantage", ["grpo", "rloo", "reinforce_pp"])
def test_prepare_batch_padding_groups_change_nothing(advantage):
  """Dynamic sampling pads the batch with empty groups (valid 0). The real rows' advantages must equal
  those of the unpadded batch (reinforce_pp normalises over the whole batch: padding must not enter its
  mean and std), and padding rows get 0."""
  rewards = [1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 2.0]
  kwargs = dict(num_generations=4, advantage=advantage, beta=0.0, kl_in_reward=False, filter_truncated=False)
  plain, _ = grpo.prepare_batch(*_rollout_rows(rewards, [1] * 8, [0] * 8), **kwargs)
  padded, _ = grpo.prepare_batch(*_rollout_rows(rewards + [5.0, 0.0, 0.0, 0.0], [1] * 8 + [0] * 4, [0] * 12),
                                 **kwargs)
  np.testing.assert_allclose(padded["advantages"][:8], plain["advantages"], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(padded["advantages"][8:], 0.0)


def test_cispo_caps_and_stops_the_weight_but_keeps_every_tokens_gradient():
  """Two tokens, old log-prob 0: r = 3 with A = 1 and r = 0.5 with A = -1; eps_high 1 -> cap 2.
  loss = -sg[min(r, 2)] A logp: -2 * ln 3 = -2.197225 and -0.5 * -1 * ln 0.5 = -0.346574; d/dlogp = -w A: -2, +0.5
  (PPO's clip would give the first token no gradient at all)."""
  logps = jnp.log(jnp.array([[3.0, 0.5]]))
  fn = lambda lp: grpo.cispo_loss(lp, jnp.zeros((1, 2)), jnp.array([[1.0, -1.0]]), jnp.ones((1, 2)), epsilon_high=1.0)
  loss, metrics = fn(logps)
  np.testing.assert_allclose(loss, [[-2 * np.log(3.0), 0.5 * np.log(0.5)]], rtol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda lp: jnp.sum(fn(lp)[0]))(logps), [[-2.0, 0.5]], rtol=1e-6)
  np.testing.assert_array_equal(metrics["clipped_high"], [[1.0, 0.0]])


def test_sapo_gate_is_the_policy_gradient_on_policy_and_soft_off_it():
  """r = 1 (logp = old): loss = -(4 / tau) sig(0) A = -2 A / tau: A = 1, tau_pos 1 -> -2; A = -1, tau_neg 2 -> 1;
  gradient -4 sig'(0) r A = -A (sig'(0) = 1/4): -1 and +1, the vanilla policy gradient. At r = 3, A = 1, tau 1: the
  gradient is -4 sig'(2) 3 = -12 * 0.1049936 = -1.259923 (a hard clip at 1.2 would give 0)."""
  fn = lambda lp, old, adv: grpo.sapo_loss(lp, old, adv, jnp.ones((1, 2)), tau_pos=1.0, tau_neg=2.0)[0]
  zeros, adv = jnp.zeros((1, 2)), jnp.array([[1.0, -1.0]])
  np.testing.assert_allclose(fn(zeros, zeros, adv), [[-2.0, 1.0]], rtol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda lp: jnp.sum(fn(lp, zeros, adv)))(zeros), [[-1.0, 1.0]], rtol=1e-6)
  far = jnp.log(jnp.array([[3.0, 1.0]]))
  grad = jax.grad(lambda lp: jnp.sum(fn(lp, zeros, jnp.array([[1.0, 0.0]]))))(far)
  np.testing.assert_allclose(grad[0, 0], -12 * jax.nn.sigmoid(2.0) * (1 - jax.nn.sigmoid(2.0)), rtol=1e-5)



@pytest.mark.parametrize("scale,ddof,expected", [
    # rewards (1, 0) and (1, 1): group means 0.5 and 1, centred (0.5, -0.5) and (0, 0).
    ("group", 0, [[1.0, -1.0], [0.0, 0.0]]),            # group std 0.5 (ddof 0)
    ("group", 1, [[0.7071068, -0.7071068], [0, 0]]),   # group std sqrt(0.5) = 0.7071068 (ddof 1, TRL's)
    ("batch", 0, [[1.1547005, -1.1547005], [0, 0]]),   # std of (1, 0, 1, 1): sqrt(0.1875) = 0.4330127
    ("batch", 1, [[1.0, -1.0], [0.0, 0.0]]),            # sample std: sqrt(0.75 / 3) = 0.5
    ("none", 0, [[0.5, -0.5], [0.0, 0.0]])])            # Dr. GRPO
def test_grpo_reward_scaling_by_hand(scale, ddof, expected):
  rewards = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  np.testing.assert_allclose(grpo.grpo_advantages(rewards, scale=scale, ddof=ddof, eps=0.0 if scale != "group" else 1e-9),
                             expected, rtol=1e-6, atol=1e-7)
  # A padding group (its rewards 9, 9) counts in no batch statistic and gets advantage 0.
  padded = grpo.compute_advantages(jnp.array([[1.0, 0.0], [1.0, 1.0], [9.0, 9.0]]), None, "grpo",
                                   valid=jnp.array([True, True, False]), scale=scale, ddof=ddof, eps=1e-9)
  np.testing.assert_allclose(padded, np.concatenate([expected, [[0.0, 0.0]]]), rtol=1e-5, atol=1e-6)


def test_vespo_weights_each_sequence_by_its_gamma_of_the_summed_ratio():
  """Two sequences of two tokens; log-ratios (0.1, 0.2) -> w = e^0.3, A = 1 (k 2, lambda 3):
  phi = exp(3 + 2 * 0.3 - 3 e^0.3) = exp(3.6 - 4.0495764) = 0.6380150; and (0, 0) -> w = 1, A = -1 (k 3, lambda 2):
  phi = exp(2 + 0 - 2) = 1. loss_t = -phi A logp; d/dlogp = -phi A (phi is stopped)."""
  logps = jnp.array([[-1.0, -2.0], [-0.5, -1.5]])
  old = logps - jnp.array([[0.1, 0.2], [0.0, 0.0]])
  fn = lambda lp: grpo.vespo_loss(lp, old, jnp.array([1.0, -1.0]), jnp.ones((2, 2)))[0]
  phi = np.exp(3.6 - 3 * np.exp(0.3))
  np.testing.assert_allclose(fn(logps), [[phi, 2 * phi], [-0.5, -1.5]], rtol=1e-5)  # -phi A logp
  np.testing.assert_allclose(jax.grad(lambda lp: jnp.sum(fn(lp)))(logps), [[-phi, -phi], [1.0, 1.0]], rtol=1e-5)
