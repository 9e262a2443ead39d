"""Off-policy corrections: weighting a policy loss computed on samples that an older (or a different)
policy generated. Three policies meet here:

  mu        the behaviour policy: the sampler's log-probs as it sampled (stale weights under
            rl.max_staleness > 0, and the rollout engine's numerics even at staleness 0)
  pi_prox   the proximal policy: the trainer's params before this step's updates, log-probs recomputed
  pi_theta  the policy being optimised

With w_t = pi_prox(o_t) / mu(o_t) = exp(log pi_prox - log mu), both corrections keep PPO's clip around
pi_prox (ratio r_t = pi_theta / pi_prox) and weight each token's policy loss by a constant sg[w'_t]:

  tis        w'_t = min(w_t, C)                                 truncated importance sampling (Ionides 2008;
             Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training")
  decoupled  w'_t = w_t if w_t <= C else 0                      decoupled PPO (Hilton et al. 2022, "Batch size-
             invariance for policy optimization"; AReaL, Fu et al. 2025): tokens whose weight passes the cap
             are left out of the loss, as AReaL's behav_imp_weight_cap does
  none       w'_t = 1                                           (the clip is then around mu itself)

When mu == pi_prox every w_t is 1 and both reduce to the uncorrected loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

CORRECTIONS = ("none", "tis", "decoupled")
DEFAULT_CAPS = {"tis": 2.0, "decoupled": 5.0}  # C: Yao et al.'s example 2; AReaL's examples 5.

_LOG_W_CLIP = 20.0  # exp(20) ~ 5e8: far past any cap, and never inf.


def behaviour_weights(prox_logps, behav_logps, mask, *, correction: str, cap: float):
  """prox_logps, behav_logps, mask [B, T] -> (weights [B, T] (constant, 0 off the mask), metrics of [B, T]).

  metrics (0 off the mask): `is_weight` w_t before the cap; `is_capped` 1 where the cap changed w'_t;
  `logp_gap` |log pi_prox - log mu| (the sampler-vs-trainer mismatch)."""
  if correction not in CORRECTIONS:
    raise ValueError(f"unknown off-policy correction {correction!r}; choose one of {CORRECTIONS}")
  mask = mask.astype(jnp.float32)
  log_w = jnp.where(mask > 0, jax.lax.stop_gradient(prox_logps - behav_logps), 0.0)  # (B, T)
  w = jnp.exp(jnp.clip(log_w, -_LOG_W_CLIP, _LOG_W_CLIP))
  if correction == "none":
    weights, capped = jnp.ones_like(w), jnp.zeros_like(w)
  elif correction == "tis":
    weights, capped = jnp.minimum(w, cap), (w > cap).astype(jnp.float32)
  else:
    capped = (w > cap).astype(jnp.float32)
    weights = w * (1.0 - capped)
  metrics = {"is_weight": w * mask, "is_capped": capped * mask, "logp_gap": jnp.abs(log_w) * mask}
  return weights * mask, metrics
