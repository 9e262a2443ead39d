"""The GRPO family as small pure functions: group advantages, policy losses, loss aggregation.

  J(theta) = E_{q, {o_i}_{i=1..G} ~ pi_old} agg_{i,t} [ min(r_{i,t} A_i, clip(r_{i,t}, 1 - eps_low, 1 + eps_high) A_i)
                                                         - beta KL_{i,t} + c_H H_{i,t} ]
  r_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_old(o_{i,t} | q, o_{i,<t})

Each piece is picked by name in the config:
  ADVANTAGES     grpo | dr_grpo | rloo | reinforce_pp        rewards [P, G] -> advantages [P, G]
  POLICY_LOSSES  ppo_clip | gspo | reinforce | cispo | sapo | vespo   -> per-token loss [B, T] and indicators
  AGGREGATIONS   token_mean | seq_mean_token_mean | seq_mean_token_sum_norm | seq_mean_token_sum
  KL             jaxpost.algorithms.kl.KL_ESTIMATORS: k1 | k2 | k3

Recipes: GRPO (Shao et al. 2024) = grpo + ppo_clip + seq_mean_token_mean + beta 0.04 with k3;
DAPO (Yu et al. 2025) = grpo + ppo_clip with eps_high 0.28 > eps_low 0.2 + token_mean, beta 0;
Dr. GRPO (Liu et al. 2025) = dr_grpo + ppo_clip + seq_mean_token_sum_norm; GSPO (Zheng et al. 2025) =
grpo + gspo (eps ~3e-4/4e-4) + seq_mean_token_mean; LUSPO (arXiv 2602.05261) = gspo + seq_mean_token_sum;
CISPO (MiniMax-M1, 2025) = cispo + token_mean; SAPO (arXiv 2511.20347) = sapo + seq_mean_token_mean;
VESPO (arXiv 2602.10693) = vespo + token_mean.

Conventions and deviations:
- Standard deviations are population ones (ddof=0), as torch's `std(unbiased=False)`; TRL and the
  DeepSeekMath code use the sample std (ddof=1), which differs by a factor sqrt(G / (G - 1)).
- A "sequence" is a (row, segment id) pair with at least one loss token, so packed rows aggregate like
  unpacked ones; a sequence with no loss token is not counted in any per-sequence mean.
- Without `old_logps` in the batch (one update per rollout batch) the ratio is exp(logp - sg[logp]) = 1.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost import logprobs as logprobs_lib
from jaxpost.algorithms import kl as kl_lib
from jaxpost.algorithms import off_policy
from jaxpost.algorithms import base
from jaxpost.algorithms.base import Algorithm

# ---------------------------------------------------------------------------------------------------------
# Advantages: rewards [P*G] or [P, G] (G completions of each of P prompts) -> advantages [P, G].
# ---------------------------------------------------------------------------------------------------------


def _grouped(rewards, group_size: int | None) -> jnp.ndarray:
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim == 1:
    if group_size is None or group_size < 1 or rewards.shape[0] % group_size:
      raise ValueError(f"rewards of shape {rewards.shape} need a group_size dividing {rewards.shape[0]}, "
                       f"got group_size={group_size}")
    return rewards.reshape(-1, group_size)
  if rewards.ndim != 2 or (group_size is not None and rewards.shape[1] != group_size):
    raise ValueError(f"rewards must be [P*G] or [P, G], got shape {rewards.shape} with group_size={group_size}")
  return rewards


def grpo_advantages(rewards, group_size: int | None = None, *, eps: float = 1e-6, ddof: int = 0,
                    scale: str = "group", valid=None) -> jnp.ndarray:
  """GRPO outcome advantages (Shao et al. 2024, DeepSeekMath, sec. 4.1.2), with TRL's `scale_rewards`:

    A_{p,i} = (r_{p,i} - mean_j r_{p,j}) / (sigma + eps)
    scale = group   sigma = std_j r_{p,j}              (GRPO)
            batch   sigma = std over the batch's rows   (Lite PPO / PPO-Lite, arXiv 2508.08221)
            none    no division                         (Dr. GRPO)

  std with `ddof` (0: population; 1: the sample std of TRL and verl, larger by sqrt(n / (n - 1))). A group whose
  rewards are all equal gets A = 0. `valid` (P,) bool: the groups a batch std counts (padding groups do not)."""
  r = _grouped(rewards, group_size)
  centred = r - jnp.mean(r, axis=1, keepdims=True)  # (P, G)
  if scale == "none":
    return centred
  if scale == "group":
    return centred / (jnp.std(r, axis=1, keepdims=True, ddof=ddof) + eps)
  if scale != "batch":
    raise ValueError(f"unknown reward scaling {scale!r}; choose one of {SCALE_REWARDS}")
  w = jnp.ones(r.shape) if valid is None else jnp.broadcast_to(jnp.asarray(valid, jnp.float32)[:, None], r.shape)
  n = jnp.sum(w)
  mean = jnp.sum(r * w) / jnp.maximum(n, 1.0)
  std = jnp.sqrt(jnp.sum(jnp.square(r - mean) * w) / jnp.maximum(n - ddof, 1.0))
  return centred / (std + eps)


SCALE_REWARDS = ("group", "batch", "none")


def dr_grpo_advantages(rewards, group_size: int | None = None) -> jnp.ndarray:
  """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_{p,i} = r_{p,i} - mean_j r_{p,j}.

  No std division (it up-weights too easy / too hard prompts); pair it with seq_mean_token_sum_norm so no
  per-sequence length normalisation biases towards long wrong answers either."""
  r = _grouped(rewards, group_size)
  return r - jnp.mean(r, axis=1, keepdims=True)


def rloo_advantages(rewards, group_size: int | None = None) -> jnp.ndarray:
  """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to Basics"):

    A_{p,i} = r_{p,i} - 1/(G-1) sum_{j != i} r_{p,j}  =  G/(G-1) (r_{p,i} - mean_j r_{p,j})."""
  r = _grouped(rewards, group_size)
  g = r.shape[1]
  if g < 2:
    raise ValueError(f"rloo needs at least 2 completions per prompt, got G={g}")
  return r - (jnp.sum(r, axis=1, keepdims=True) - r) / (g - 1)


def reinforce_pp_advantages(rewards, group_size: int | None = None, *, eps: float = 1e-6,
                            valid=None) -> jnp.ndarray:
  """REINFORCE++ with a group baseline (Hu 2025, "REINFORCE++", the `reinforce_plus_plus_baseline` mode):

    d_{p,i} = r_{p,i} - mean_j r_{p,j};   A_{p,i} = (d_{p,i} - mean_{all} d) / (std_{all} d + eps)

  i.e. group-mean baseline, then normalisation over the whole batch (ddof=0) instead of per group.
  `valid` (P,) bool: the groups that count in the batch statistics (padding groups do not)."""
  r = _grouped(rewards, group_size)
  d = r - jnp.mean(r, axis=1, keepdims=True)
  if valid is None:
    return (d - jnp.mean(d)) / (jnp.std(d) + eps)
  w = jnp.broadcast_to(jnp.asarray(valid, jnp.float32)[:, None], d.shape)  # (P, G)
  n = jnp.maximum(jnp.sum(w), 1.0)
  mean = jnp.sum(d * w) / n
  std = jnp.sqrt(jnp.sum(jnp.square(d - mean) * w) / n)
  return (d - mean) / (std + eps)


ADVANTAGES = {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages,
              "reinforce_pp": reinforce_pp_advantages}


def compute_advantages(rewards, group_size: int | None, estimator: str, *, valid=None, **options) -> jnp.ndarray:
  """advantages [P, G] from rewards [P*G] or [P, G] with the named estimator (`options`: its keywords, e.g.
  grpo's scale / ddof / eps). `valid` (P,) bool marks the real groups of a padded batch: the others get
  advantage 0 and do not enter batch-wide statistics."""
  if estimator not in ADVANTAGES:
    raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {sorted(ADVANTAGES)}")
  if valid is None:
    return ADVANTAGES[estimator](rewards, group_size, **options)
  kwargs = {"valid": valid} if estimator in ("reinforce_pp", "grpo") else {}
  advantages = ADVANTAGES[estimator](rewards, group_size, **kwargs, **options)
  return advantages * jnp.asarray(valid, jnp.float32)[:, None]


# ---------------------------------------------------------------------------------------------------------
# Per-sequence sums over packed rows: a sequence is a (row, segment id) pair.
# ---------------------------------------------------------------------------------------------------------


def _sequence_sums(x, mask, segment_ids):
  """Sums of x*mask per (row, segment) -> ([B*(T+1)], flat ids [B, T]). Ids are row*(T+1) + segment id,
  segment ids lying in [0, T]; without segment_ids each row is one sequence."""
  b, t = mask.shape
  seg = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
  ids = jnp.arange(b, dtype=jnp.int32)[:, None] * (t + 1) + seg  # (B, T)
  sums = jax.ops.segment_sum((x * mask).reshape(-1), ids.reshape(-1), num_segments=b * (t + 1))
  return sums, ids


def sequence_mean(x, mask, segment_ids=None) -> jnp.ndarray:
  """Masked mean of x over each token's own sequence, broadcast back to tokens [B, T]."""
  mask = mask.astype(jnp.float32)
  sums, ids = _sequence_sums(x, mask, segment_ids)
  counts, _ = _sequence_sums(jnp.ones_like(mask), mask, segment_ids)
  return (sums / jnp.maximum(counts, 1.0))[ids]


# ---------------------------------------------------------------------------------------------------------
# Policy losses: fn(logps, old_logps, advantages, mask, *, epsilon_low, epsilon_high, dual_clip,
# segment_ids) -> (per-token loss [B, T] (0 off the mask), per-token metrics [B, T]).
# advantages are [B] (one per sequence, broadcast over its tokens) or [B, T] (per token, for packed rows).
# ---------------------------------------------------------------------------------------------------------


def _per_token(advantages, shape) -> jnp.ndarray:
  advantages = jnp.asarray(advantages, jnp.float32)
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  return jnp.broadcast_to(advantages, shape)


def _clipped_surrogate(ratio, adv, epsilon_low, epsilon_high, dual_clip):
  """PPO clip with optional dual clip, per token:

    L = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))        (= -min(A r, A clip(r)))
    dual clip (Ye et al. 2020), A < 0 only:  L = min(L, -c A),  c > 1

  For A < 0 the clipped objective -L = A max(r, 1 - eps_low) is unbounded below as r grows; the dual clip
  bounds it at c A. Clipped tokens (indicator 1) get no gradient."""
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
  loss = jnp.maximum(unclipped, clipped)
  clipped_low = (ratio < 1.0 - epsilon_low) & (adv < 0)
  clipped_high = (ratio > 1.0 + epsilon_high) & (adv > 0)
  dual_clipped = jnp.zeros_like(clipped_low)
  if dual_clip is not None:
    if dual_clip <= 1.0:
      raise ValueError(f"dual_clip must be None or > 1, got {dual_clip}")
    cap = -dual_clip * adv
    dual_clipped = (adv < 0) & (loss > cap)
    loss = jnp.where(adv < 0, jnp.minimum(loss, cap), loss)
  return loss, {"clipped_low": clipped_low, "clipped_high": clipped_high, "dual_clipped": dual_clipped}


def _masked_metrics(indicators, ratio, mask):
  metrics = {k: v.astype(jnp.float32) * mask for k, v in indicators.items()}
  metrics["ratio"] = jax.lax.stop_gradient(ratio) * mask
  return metrics


def ppo_clip_loss(logps, old_logps, advantages, mask, *, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                  dual_clip: float | None = None, segment_ids=None):
  """Token-level PPO clipped surrogate (Schulman et al. 2017), as in GRPO; eps_high > eps_low is DAPO's
  clip-higher (Yu et al. 2025). r_t = exp(logp_t - old_logp_t); loss per token as in `_clipped_surrogate`.

  logps, old_logps, mask [B, T]; advantages [B] or [B, T] -> (loss [B, T], metrics of [B, T])."""
  del segment_ids  # token-level ratios need no sequence structure.
  mask = mask.astype(jnp.float32)
  ratio = jnp.exp(jnp.where(mask > 0, logps - old_logps, 0.0))  # (B, T)
  loss, indicators = _clipped_surrogate(ratio, _per_token(advantages, mask.shape), epsilon_low, epsilon_high,
                                        dual_clip)
  return loss * mask, _masked_metrics(indicators, ratio, mask)


def gspo_loss(logps, old_logps, advantages, mask, *, epsilon_low: float = 3e-4, epsilon_high: float = 4e-4,
              dual_clip: float | None = None, segment_ids=None):
  """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"), token form (GSPO-token, eq. 13-14):

    s_i = exp( (1/|o_i|) sum_t (logp_{i,t} - old_logp_{i,t}) )          sequence-level ratio
    s_{i,t} = sg[s_i] * pi(o_{i,t}) / sg[pi(o_{i,t})]                     value s_i, grad s_i * grad logp_{i,t}

  then the PPO clip of `_clipped_surrogate` with s_{i,t} on every token: the clip decision is one per
  sequence. With seq_mean_token_mean aggregation and A_{i,t} = A_i its gradient equals sequence-level GSPO.
  The paper's clip range is tiny (3e-4, 4e-4), hence these defaults."""
  mask = mask.astype(jnp.float32)
  log_ratio = jnp.where(mask > 0, logps - old_logps, 0.0)
  seq_log_ratio = jax.lax.stop_gradient(sequence_mean(log_ratio, mask, segment_ids))  # (B, T)
  ratio = jnp.exp(seq_log_ratio + logps - jax.lax.stop_gradient(logps))
  loss, indicators = _clipped_surrogate(ratio, _per_token(advantages, mask.shape), epsilon_low, epsilon_high,
                                        dual_clip)
  return loss * mask, _masked_metrics(indicators, ratio, mask)


def reinforce_loss(logps, old_logps, advantages, mask, *, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                   dual_clip: float | None = None, segment_ids=None):
  """Vanilla policy gradient (Williams 1992): loss_t = -A * logp_t. Exact only on-policy (no ratio, no clip);
  the clip arguments are accepted and ignored so all losses share one signature."""
  del epsilon_low, epsilon_high, dual_clip, segment_ids
  mask = mask.astype(jnp.float32)
  loss = -_per_token(advantages, mask.shape) * logps
  ratio = jnp.exp(jnp.where(mask > 0, logps - old_logps, 0.0))
  no_clip = jnp.zeros(mask.shape, bool)
  return loss * mask, _masked_metrics({"clipped_low": no_clip, "clipped_high": no_clip, "dual_clipped": no_clip},
                                      ratio, mask)


def cispo_loss(logps, old_logps, advantages, mask, *, epsilon_low: float = 0.2, epsilon_high: float = 4.0,
               dual_clip: float | None = None, segment_ids=None):
  """CISPO (MiniMax-M1, "Scaling Test-Time Compute Efficiently with Lightning Attention", 2025, eq. 4):

    loss_t = -sg[min(r_t, 1 + eps_high)] A_t log pi_theta(o_t)

  the importance weight is capped and its gradient stopped, but no token's gradient is dropped (PPO's clip
  zeroes the clipped tokens'). No lower cap (the paper's eps_low^IS is unbounded). TRL's `cispo` caps at
  `epsilon_high` itself: ours at eps_high = e equals TRL's at epsilon_high = 1 + e. Indicator: r_t above the cap."""
  del epsilon_low, dual_clip, segment_ids
  mask = mask.astype(jnp.float32)
  ratio = jnp.exp(jnp.where(mask > 0, logps - old_logps, 0.0))  # (B, T)
  weight = jax.lax.stop_gradient(jnp.minimum(ratio, 1.0 + epsilon_high))
  loss = -weight * _per_token(advantages, mask.shape) * logps
  capped = ratio > 1.0 + epsilon_high
  none = jnp.zeros(mask.shape, bool)
  return loss * mask, _masked_metrics({"clipped_low": none, "clipped_high": capped, "dual_clipped": none}, ratio, mask)


def sapo_loss(logps, old_logps, advantages, mask, *, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
              dual_clip: float | None = None, segment_ids=None, tau_pos: float = 1.0, tau_neg: float = 1.05):
  """SAPO (arXiv 2511.20347, "Soft Adaptive Policy Optimization"): a smooth gate instead of the hard clip,

    loss_t = -f_tau(r_t) A_t,   f_tau(r) = (4 / tau) sigmoid(tau (r - 1)),   tau = tau_pos if A_t > 0 else tau_neg

  f_tau(1) = 2 / tau, and d f_tau(r) / d log pi = r * 4 sigmoid'(tau (r - 1)) = 1 at r = 1 (sigmoid'(0) = 1/4):
  on-policy, the vanilla policy gradient; it decays smoothly as r leaves 1 (faster for tau_neg > tau_pos on
  negative advantages). No token is clipped; the
  indicators stay 0. The clip arguments are accepted and ignored (one signature for every loss)."""
  del epsilon_low, epsilon_high, dual_clip, segment_ids
  mask = mask.astype(jnp.float32)
  ratio = jnp.exp(jnp.where(mask > 0, logps - old_logps, 0.0))  # (B, T)
  adv = _per_token(advantages, mask.shape)
  tau = jnp.where(adv > 0, tau_pos, tau_neg)
  loss = -(4.0 / tau) * jax.nn.sigmoid(tau * (ratio - 1.0)) * adv
  none = jnp.zeros(mask.shape, bool)
  return loss * mask, _masked_metrics({"clipped_low": none, "clipped_high": none, "dual_clipped": none}, ratio, mask)


def vespo_loss(logps, old_logps, advantages, mask, *, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
               dual_clip: float | None = None, segment_ids=None, k_pos: float = 2.0, lambda_pos: float = 3.0,
               k_neg: float = 3.0, lambda_neg: float = 2.0):
  """VESPO (arXiv 2602.10693): a smooth, asymmetric weight of each sequence's importance ratio,

    w_i = exp(sum_t (logp_{i,t} - old_logp_{i,t}))                       (a sum over the sequence, not a mean)
    phi(w) = exp(lambda + k log w - lambda w)  (= e^lambda w^k e^{-lambda w}, so phi(1) = 1)
    loss_t = -sg[phi(w_i)] A_t logp_t,   (k, lambda) = (k_pos, lambda_pos) if A_t >= 0 else (k_neg, lambda_neg)

  phi peaks at w = k / lambda and vanishes for w -> 0 and w -> inf: stale or drifted sequences fade out instead
  of being clipped. Per-token log-ratios are clamped to [-20, 20] and log w to [ln 1e-8, 20] (TRL's and the
  paper code's ranges). The clip arguments are accepted and ignored (one signature for every loss)."""
  del epsilon_low, epsilon_high, dual_clip
  mask = mask.astype(jnp.float32)
  log_ratio = jnp.clip(jnp.where(mask > 0, logps - old_logps, 0.0), -20.0, 20.0)  # (B, T)
  sums, ids = _sequence_sums(log_ratio, mask, segment_ids)
  log_w = jnp.clip(sums[ids], np.log(1e-8), 20.0)  # (B, T): each token's sequence
  adv = _per_token(advantages, mask.shape)
  k = jnp.where(adv >= 0, k_pos, k_neg)
  lam = jnp.where(adv >= 0, lambda_pos, lambda_neg)
  phi = jax.lax.stop_gradient(jnp.nan_to_num(jnp.exp(lam + k * log_w - lam * jnp.exp(log_w)), nan=0.0, posinf=0.0))
  loss = -phi * adv * logps
  none = jnp.zeros(mask.shape, bool)
  ratio = jnp.exp(log_ratio)
  return loss * mask, _masked_metrics({"clipped_low": none, "clipped_high": none, "dual_clipped": none}, ratio, mask)


POLICY_LOSSES = {"ppo_clip": ppo_clip_loss, "gspo": gspo_loss, "reinforce": reinforce_loss, "cispo": cispo_loss,
                 "sapo": sapo_loss, "vespo": vespo_loss}

# ---------------------------------------------------------------------------------------------------------
# Aggregation: per-token loss -> (loss_sum, normalizer); the train step computes loss_sum / normalizer
# over the global batch, summing loss_sum over microbatches.
# ---------------------------------------------------------------------------------------------------------

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", "seq_mean_token_sum")


def aggregate(per_token, mask, mode: str, *, segment_ids=None, max_len: int | None = None):
  """(loss_sum, normalizer) such that loss_sum / normalizer is, with S the set of sequences:

    token_mean                sum_{s,t} l m / sum_{s,t} m                    (DAPO: every token weighs the same)
    seq_mean_token_mean       (1/|S|) sum_s (sum_t l m / sum_t m)            (GRPO paper)
    seq_mean_token_sum_norm   (1/|S|) sum_s (sum_t l m / max_len)            (Dr. GRPO: a constant length norm)
    seq_mean_token_sum        (1/|S|) sum_s sum_t l m                        (LUSPO with gspo: length-unbiased)

  per_token, mask, segment_ids [B, T]. loss_sum is a sum over sequences (so it adds up over microbatches)
  and normalizer depends on the mask only; it is at least 1 so an all-padding batch gives 0."""
  mask = mask.astype(jnp.float32)
  if mode == "token_mean":
    return jnp.sum(per_token * mask), jnp.maximum(jnp.sum(mask), 1.0)
  if mode not in AGGREGATIONS:
    raise ValueError(f"unknown aggregation {mode!r}; choose one of {AGGREGATIONS}")
  loss_sums, _ = _sequence_sums(per_token, mask, segment_ids)
  counts, _ = _sequence_sums(jnp.ones_like(mask), mask, segment_ids)
  num_sequences = jnp.maximum(jnp.sum((counts > 0).astype(jnp.float32)), 1.0)
  if mode == "seq_mean_token_mean":
    return jnp.sum(loss_sums / jnp.maximum(counts, 1.0)), num_sequences
  if mode == "seq_mean_token_sum":
    return jnp.sum(loss_sums), num_sequences
  if not max_len:
    raise ValueError("seq_mean_token_sum_norm needs max_len (the maximum completion length)")
  return jnp.sum(loss_sums) / max_len, num_sequences


# ---------------------------------------------------------------------------------------------------------
# The loss for the generic train step.
# ---------------------------------------------------------------------------------------------------------


def make_loss_fn(graphdef, *, policy_loss: str = "ppo_clip", aggregation: str = "seq_mean_token_mean",
                      beta: float = 0.0, kl_estimator: str = "k3", entropy_coef: float = 0.0,
                      epsilon_low: float = 0.2, epsilon_high: float | None = None, dual_clip: float | None = None,
                      logprob_impl: str = "naive", temperature: float = 1.0, max_len: int | None = None,
                      off_policy_correction: str = "none", is_cap: float = 0.0, sapo_tau_pos: float = 1.0,
                      sapo_tau_neg: float = 1.05, vespo: dict | None = None):
  """Returns (loss_fn(params, batch, frozen) -> (loss_sum, metric_sums), normalizer(batch)).

  Per token: l = w' * policy_loss + beta * KL(pi || pi_ref) - entropy_coef * H, aggregated by `aggregation`;
  w' = 1, or under `off_policy_correction` (tis | decoupled, cap `is_cap`, 0 = the correction's default) the
  behaviour weight of jaxpost/algorithms/off_policy.py from `old_logps` (the proximal policy, recomputed by
  the trainer) and `behav_logps` (the sampler's).

  batch: inputs, targets, positions, segment_ids, loss_mask (1 on completion tokens) [B, T] int32;
  advantages [B] (or [B, T]) f32; old_logps [B, T] (optional: absent means on-policy, ratio 1);
  ref_logps [B, T] (needed when beta > 0; when present with beta = 0 the KL is still reported);
  behav_logps [B, T] (needed by an off-policy correction: the sampler's log-probs).
  Metric sums share the normalizer: `loss` and `pg_loss` (the policy term alone) aggregate like the loss;
  `kl`, `entropy`, `ratio`, `clip_frac` (+ `_low`, `_high`, `dual_clip_frac`) are means per token
  (token_mean) or means of per-sequence token means (the other modes, so no max_len factor); under a
  correction also `is_weight`, `is_capped` (the fraction the cap changed) and `logp_gap`.
  `temperature` must be the sampler's, so that logps match the distribution the completions came from.
  """
  if policy_loss not in POLICY_LOSSES:
    raise ValueError(f"unknown policy loss {policy_loss!r}; choose one of {sorted(POLICY_LOSSES)}")
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
  if kl_estimator not in kl_lib.KL_ESTIMATORS:
    raise ValueError(f"unknown KL estimator {kl_estimator!r}; choose one of {sorted(kl_lib.KL_ESTIMATORS)}")
  if aggregation == "seq_mean_token_sum_norm" and not max_len:
    raise ValueError("aggregation='seq_mean_token_sum_norm' needs max_len (the maximum completion length)")
  if off_policy_correction not in off_policy.CORRECTIONS:
    raise ValueError(f"unknown off-policy correction {off_policy_correction!r}; choose one of "
                     f"{off_policy.CORRECTIONS}")
  is_cap = is_cap or off_policy.DEFAULT_CAPS.get(off_policy_correction, 0.0)
  epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
  metric_mode = "token_mean" if aggregation == "token_mean" else "seq_mean_token_mean"
  policy_fn = POLICY_LOSSES[policy_loss]
  if policy_loss == "sapo":
    policy_fn = functools.partial(sapo_loss, tau_pos=sapo_tau_pos, tau_neg=sapo_tau_neg)
  if policy_loss == "vespo":
    policy_fn = functools.partial(vespo_loss, **(vespo or {}))

  def normalizer(batch):
    mask = batch["loss_mask"]
    return aggregate(jnp.zeros(mask.shape, jnp.float32), mask, aggregation, segment_ids=batch["segment_ids"],
                     max_len=max_len)[1]

  def loss_fn(params, batch, frozen=None):
    del frozen  # the reference model's logps arrive precomputed as batch["ref_logps"].
    if beta > 0 and "ref_logps" not in batch:
      raise KeyError(f"beta={beta} > 0 needs batch['ref_logps']; batch has {sorted(batch)}")
    logps, entropy = logprobs_lib.token_logprobs(graphdef, params, batch, impl=logprob_impl,
                                                 temperature=temperature, return_entropy=True)  # (B, T)
    mask = batch["loss_mask"].astype(jnp.float32)
    segment_ids = batch["segment_ids"]
    old_logps = batch["old_logps"] if "old_logps" in batch else jax.lax.stop_gradient(logps)
    per_token, token_metrics = policy_fn(logps, old_logps, batch["advantages"], mask, epsilon_low=epsilon_low,
                                         epsilon_high=epsilon_high, dual_clip=dual_clip, segment_ids=segment_ids)
    metrics = {"pg_loss": per_token, "entropy": entropy, "ratio": token_metrics["ratio"],
               "clip_frac": jnp.maximum(token_metrics["clipped_low"], token_metrics["clipped_high"]),
               "clip_frac_low": token_metrics["clipped_low"], "clip_frac_high": token_metrics["clipped_high"],
               "dual_clip_frac": token_metrics["dual_clipped"]}
    if off_policy_correction != "none":
      if "behav_logps" not in batch or "old_logps" not in batch:
        raise KeyError(f"off_policy_correction={off_policy_correction!r} needs batch['old_logps'] (proximal) and "
                       f"batch['behav_logps'] (sampler); batch has {sorted(batch)}")
      weights, is_metrics = off_policy.behaviour_weights(old_logps, batch["behav_logps"], mask,
                                                         correction=off_policy_correction, cap=is_cap)
      per_token = per_token * weights  # (B, T)
      metrics.update(is_metrics)
      metrics["pg_loss"] = per_token
    if "ref_logps" in batch:
      kl = kl_lib.kl_estimate(logps, batch["ref_logps"], kl_estimator)  # (B, T)
      metrics["kl"] = kl
      if beta > 0:
        per_token = per_token + beta * kl
    if entropy_coef:
      per_token = per_token - entropy_coef * entropy
    loss_sum, _ = aggregate(per_token, mask, aggregation, segment_ids=segment_ids, max_len=max_len)
    metric_sums = {k: aggregate(jax.lax.stop_gradient(v), mask, metric_mode, segment_ids=segment_ids)[0]
                   for k, v in metrics.items()}
    metric_sums["pg_loss"] = aggregate(jax.lax.stop_gradient(metrics["pg_loss"]), mask, aggregation,
                                       segment_ids=segment_ids, max_len=max_len)[0]
    metric_sums["loss"] = loss_sum
    return loss_sum, metric_sums

  return loss_fn, normalizer


# ---------------------------------------------------------------------------------------------------------
# The online step's GRPO-family pieces: rollout rules (host) and batch preparation (device).
# ---------------------------------------------------------------------------------------------------------


def informative_groups(rewards: np.ndarray) -> np.ndarray:
  """DAPO's dynamic sampling (Yu et al. 2025): rewards (P, G) -> keep (P,) bool, the groups whose rewards
  are not all equal (an all-equal group has advantage 0 under every group baseline: no signal)."""
  return ~np.all(rewards == rewards[:, :1], axis=1)


def overlong_penalty(lengths: np.ndarray, *, max_len: int, buffer: int) -> np.ndarray:
  """DAPO's soft overlong punishment (Yu et al. 2025): with budget L_max and buffer L_c,
  penalty = clip((L - (L_max - L_c)) / L_c, 0, 1), so a row that hits the budget loses 1. (R,) -> (R,) f32."""
  start = max_len - buffer
  return np.clip((np.asarray(lengths) - start) / max(buffer, 1), 0.0, 1.0).astype(np.float32)


def keep_groups(config, rewards: np.ndarray) -> np.ndarray:
  """rewards (P, G) -> keep (P,) bool: the informative groups under rl.dynamic_sampling, else all."""
  if config.rl.dynamic_sampling:
    return informative_groups(rewards)
  return base.keep_all_groups(config, rewards)


def shape_rewards(config, rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """rewards, lengths (R,) -> rewards minus the overlong penalty under rl.overlong = soft."""
  rl = config.rl
  if rl.overlong != "soft":
    return rewards
  return rewards - overlong_penalty(lengths, max_len=rl.max_new_tokens, buffer=rl.overlong_buffer)


def prepare_batch(batch, rollout, params=None, frozen=None, *, num_generations: int, advantage: str, beta: float, kl_in_reward: bool,
                  filter_truncated: bool, advantage_options=None):
  """The rollout rows -> the policy loss's batch: group advantages from the (shaped) rewards.

  batch: rollout fields (R, T) with old_logps, and ref_logps when a reference is kept; rollout: rewards,
  valid (1 on sampled rows, 0 on the padding rows of dropped groups) and truncated (R,) f32.
    overlong filter   loss_mask <- 0 on rows that hit the budget (DAPO)
    KL in reward      r <- r - beta * sum_t (log pi_old - log pi_ref) over the completion (Ouyang et al. 2022)
    advantages        A = ADVANTAGES[advantage](r as (P, G)), 0 on padding rows
  Returns (batch + advantages (R,), {}); pure, jitted by the loop. (`params`: unused, no learned baseline;
  `frozen`: no teacher.)"""
  del params, frozen
  batch = dict(batch)
  if filter_truncated:
    batch["loss_mask"] = batch["loss_mask"] * (1 - rollout["truncated"]).astype(batch["loss_mask"].dtype)[:, None]
  rewards = rollout["rewards"]  # (R,)
  if kl_in_reward:
    mask = batch["loss_mask"].astype(jnp.float32)
    rewards = rewards - beta * jnp.sum((batch["old_logps"] - batch["ref_logps"]) * mask, axis=1)
  valid = rollout["valid"].reshape(-1, num_generations)[:, 0] > 0  # (P,)
  advantages = compute_advantages(rewards.reshape(-1, num_generations), None, advantage, valid=valid,
                                  **(advantage_options or {}))  # (P, G)
  batch["advantages"] = advantages.reshape(-1)
  return batch, {}


def loss_from_config(config, models):
  rl = config.rl
  return make_loss_fn(
      models.graphdef, policy_loss=rl.policy_loss, aggregation=rl.aggregation,
      beta=0.0 if rl.kl_in_reward else rl.beta, kl_estimator=rl.kl_estimator, entropy_coef=rl.entropy_coef,
      epsilon_low=rl.epsilon_low, epsilon_high=rl.epsilon_high, dual_clip=rl.dual_clip or None,
      logprob_impl=models.model_cfg.logprob_impl, temperature=rl.temperature, max_len=rl.max_new_tokens,
      off_policy_correction=rl.off_policy_correction, is_cap=rl.is_cap, sapo_tau_pos=rl.sapo_tau_pos,
      sapo_tau_neg=rl.sapo_tau_neg, vespo=dict(rl.vespo))


def batch_preparer(config, models):
  del models
  rl = config.rl
  return functools.partial(prepare_batch, num_generations=rl.num_generations, advantage=rl.advantage,
                           beta=rl.beta, kl_in_reward=rl.kl_in_reward, filter_truncated=rl.overlong == "filter",
                           advantage_options=advantage_options(rl))


def advantage_options(rl) -> dict:
  """The advantage estimator's keywords from config.rl: grpo's reward scaling, std ddof and eps."""
  if rl.advantage != "grpo":
    return {}
  return {"scale": rl.scale_rewards, "ddof": rl.std_ddof, "eps": rl.std_eps}


def validate(config, checks) -> None:
  r = config.rl
  checks.choice("rl.advantage", tuple(ADVANTAGES))
  checks.choice("rl.scale_rewards", SCALE_REWARDS)
  checks.choice("rl.std_ddof", (0, 1))
  checks.check(r.std_eps > 0, "rl.std_eps", f"must be > 0, got {r.std_eps}")
  if r.advantage != "grpo":
    checks.unused(("rl.scale_rewards", "rl.std_ddof", "rl.std_eps"), f"they shape advantage=grpo's, not {r.advantage}'s")
  checks.choice("rl.policy_loss", tuple(POLICY_LOSSES))
  checks.choice("rl.aggregation", AGGREGATIONS)
  checks.choice("rl.kl_estimator", tuple(kl_lib.KL_ESTIMATORS))
  checks.choice("rl.overlong", ("none", "filter", "soft"))
  checks.check(r.num_generations > 1 or r.advantage == "reinforce_pp", "rl.num_generations",
               f"group baselines need >= 2 samples per prompt, got {r.num_generations}")
  checks.check(r.dual_clip == 0 or r.dual_clip > 1, "rl.dual_clip", f"must be 0 (off) or > 1, got {r.dual_clip}")
  for key in ("sapo_tau_pos", "sapo_tau_neg"):
    checks.check(r[key] > 0, f"rl.{key}", f"must be > 0, got {r[key]}")
  for key in ("k_pos", "lambda_pos", "k_neg", "lambda_neg"):
    checks.check(r.vespo[key] > 0, f"rl.vespo.{key}", f"must be > 0, got {r.vespo[key]}")
  checks.choice("rl.off_policy_correction", off_policy.CORRECTIONS)
  checks.check(r.is_cap == 0 or r.is_cap > 1, "rl.is_cap",
               f"must be 0 (the correction's default) or > 1, got {r.is_cap}")
  checks.check(r.off_policy_correction == "none" or r.old_logps == "sampler", "rl.old_logps",
               f"{r.old_logps!r} with rl.off_policy_correction={r.off_policy_correction!r}: the correction recomputes "
               "the proximal log-probs itself and keeps the sampler's as the behaviour policy; leave it at 'sampler'")


ALGORITHM = Algorithm(
    name="grpo", loop="online", validate=validate, make_loss=loss_from_config,
    reference=lambda config: config.rl.beta > 0 or config.rl.kl_in_reward,
    keep_groups=keep_groups, shape_rewards=shape_rewards, prepare_batch=batch_preparer)
