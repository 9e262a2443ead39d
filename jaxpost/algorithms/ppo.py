"""PPO with a learned critic for RLHF (Schulman et al., 2017; Ouyang et al., 2022): the pieces GRPO lacks.

Per completion token t of a row (mask m_t = 1 on completion tokens, which are contiguous):

  reward    r_t = -beta (log pi_old(y_t) - log pi_ref(y_t))  +  [t = last] * score        (KL-shaped reward)
  TD error  delta_t = r_t + gamma V_{t+1} m_{t+1} - V_t          (V after the last token is 0: terminal)
  GAE       A_t = delta_t + gamma lambda m_{t+1} A_{t+1}         (Schulman et al., 2016)
  returns   R_t = A_t + V_t
  value     L_V = 1/2 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)

The policy term is `grpo.ppo_clip_loss` with these per-token advantages (whitened over the batch), and
the critic is a transformer with a scalar head (`head = "scalar"`) whose `scores` at column t estimate
V(prefix up to t), the value of the state in which y_t is chosen. Actor and critic train as one param
tree {"policy", "value"} under one optimizer, as TRL's PolicyAndValueWrapper does.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpost.algorithms import grpo
from jaxpost.algorithms.base import Algorithm


def token_rewards(scores, old_logps, ref_logps, mask, *, beta: float) -> jnp.ndarray:
  """scores (B,), old/ref logps and mask (B, T) -> r (B, T): per-token KL penalty, score on the last token."""
  mask = mask.astype(jnp.float32)
  t = jnp.arange(mask.shape[1])
  last = jnp.max(jnp.where(mask > 0, t, -1), axis=1)  # (B,) column of the last completion token
  rewards = -beta * (old_logps - ref_logps) * mask if ref_logps is not None else jnp.zeros_like(mask)
  return rewards + jnp.where(t[None, :] == last[:, None], scores[:, None], 0.0)


def gae(rewards, values, mask, *, gamma: float, lam: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """rewards, values, mask (B, T) -> (advantages, returns) (B, T), zero off the mask (see module docstring)."""
  mask = mask.astype(jnp.float32)
  values = values * mask

  def step(carry, xs):
    next_value, next_adv, next_mask = carry
    r, v, m = xs
    delta = r + gamma * next_value * next_mask - v
    adv = (delta + gamma * lam * next_mask * next_adv) * m
    return (v, adv, m), adv

  zeros = jnp.zeros(mask.shape[0], jnp.float32)
  xs = (rewards.T, values.T, mask.T)  # scan over T, reversed
  _, adv = jax.lax.scan(step, (zeros, zeros, zeros), xs, reverse=True)
  advantages = adv.T  # (B, T)
  return advantages, (advantages + values) * mask


def whiten(x, mask, *, shift_mean: bool = True, eps: float = 1e-8) -> jnp.ndarray:
  """(x - mean) / std over the masked entries (mean kept when not shift_mean); zero off the mask."""
  mask = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(mask), 1.0)
  mean = jnp.sum(x * mask) / n
  var = jnp.sum(jnp.square(x - mean) * mask) / n
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  return (out if shift_mean else out + mean) * mask


def value_loss(values, old_values, returns, mask, *, clip: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per-token clipped value loss (B, T) (zero off the mask) and the clipped indicator (B, T)."""
  mask = mask.astype(jnp.float32)
  clipped = old_values + jnp.clip(values - old_values, -clip, clip)
  plain_loss, clipped_loss = jnp.square(values - returns), jnp.square(clipped - returns)
  return 0.5 * jnp.maximum(plain_loss, clipped_loss) * mask, (clipped_loss > plain_loss).astype(jnp.float32) * mask


def explained_variance(values, returns, mask) -> jnp.ndarray:
  """1 - Var[R - V] / Var[R] over the masked tokens: 1 is a perfect critic, 0 predicts the mean."""
  mask = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(mask), 1.0)
  var = lambda x: jnp.sum(jnp.square(x - jnp.sum(x * mask) / n) * mask) / n
  return 1.0 - var(returns - values) / jnp.maximum(var(returns), 1e-8)


def make_loss_fn(policy_graphdef, value_graphdef, *, vf_coef: float = 0.1, value_clip: float = 0.2,
                     epsilon_low: float = 0.2, epsilon_high: float | None = None, entropy_coef: float = 0.0,
                     logprob_impl: str = "naive", temperature: float = 1.0):
  """Returns (loss_fn(params, batch, frozen), normalizer) for params {"policy", "value"}.

  batch: the GRPO rollout fields with per-token `advantages` (B, T) (whitened GAE), `old_logps`,
  `old_values` and `returns` (B, T). Loss per token: ppo_clip + vf_coef * L_V - entropy_coef * H,
  token-mean over the completion tokens of the global batch.
  """
  policy_loss_fn, normalizer = grpo.make_loss_fn(
      policy_graphdef, policy_loss="ppo_clip", aggregation="token_mean", epsilon_low=epsilon_low,
      epsilon_high=epsilon_high, entropy_coef=entropy_coef, logprob_impl=logprob_impl, temperature=temperature)

  def loss_fn(params, batch, frozen=None):
    policy_sum, metrics = policy_loss_fn(params["policy"], batch, frozen)
    critic = nnx.merge(value_graphdef, params["value"])
    values = critic.scores(batch["inputs"], batch["positions"], batch["segment_ids"])  # (B, T)
    mask = batch["loss_mask"].astype(jnp.float32)
    v_loss, v_clipped = value_loss(values, batch["old_values"], batch["returns"], mask, clip=value_clip)
    metrics = dict(metrics)
    metrics["policy_loss"] = metrics.pop("loss")
    metrics["value_loss"] = jnp.sum(v_loss)
    metrics["value_clip_frac"] = jnp.sum(v_clipped)
    total = policy_sum + vf_coef * jnp.sum(v_loss)
    metrics["loss"] = total
    return total, metrics

  return loss_fn, normalizer


def make_values_fn(value_graphdef):
  """values(params_value, batch) -> (B, T) f32 critic estimates (no gradient)."""
  def values(params, batch):
    critic = nnx.merge(value_graphdef, params)
    return jax.lax.stop_gradient(critic.scores(batch["inputs"], batch["positions"], batch["segment_ids"]))
  return values



def prepare_batch(batch, rollout, params, frozen=None, *, value_graphdef, beta: float, gamma: float, lam: float,
                  whiten_advantages: bool):
  """The rollout rows -> the actor-critic loss's batch (see the module docstring):

    V_old = critic(prefix) (B, T);  r_t = KL-shaped token rewards;  (A, R) = GAE(r, V_old);  A whitened

  batch: rollout fields (B, T) with old_logps, and ref_logps when beta > 0; rollout: rewards (B,) scores.
  Returns (batch + old_values, advantages, returns (B, T), {explained_variance[, kl]}); kl is the mean
  per-token k1 of the behaviour policy against the reference. Pure, jitted by the loop (`frozen`: no teacher)."""
  del frozen
  batch = dict(batch)
  mask = batch["loss_mask"]
  batch["old_values"] = make_values_fn(value_graphdef)(params["value"], batch)  # (B, T)
  rewards = token_rewards(rollout["rewards"], batch["old_logps"], batch.get("ref_logps"), mask, beta=beta)
  advantages, returns = gae(rewards, batch["old_values"], mask, gamma=gamma, lam=lam)
  batch["advantages"] = whiten(advantages, mask) if whiten_advantages else advantages
  batch["returns"] = returns
  metrics = {"explained_variance": explained_variance(batch["old_values"], returns, mask)}
  if "ref_logps" in batch:
    m = mask.astype(jnp.float32)
    metrics["kl"] = jnp.sum((batch["old_logps"] - batch["ref_logps"]) * m) / jnp.maximum(jnp.sum(m), 1.0)
  return batch, metrics


def loss_from_config(config, models):
  rl, pc = config.rl, config.ppo
  return make_loss_fn(models.graphdef, models.value_graphdef, vf_coef=pc.vf_coef, value_clip=pc.value_clip,
                      epsilon_low=rl.epsilon_low, epsilon_high=rl.epsilon_high, entropy_coef=rl.entropy_coef,
                      logprob_impl=models.model_cfg.logprob_impl, temperature=rl.temperature)


def batch_preparer(config, models):
  pc = config.ppo
  return functools.partial(prepare_batch, value_graphdef=models.value_graphdef, beta=config.rl.beta, gamma=pc.gamma,
                           lam=pc.lam, whiten_advantages=pc.whiten_advantages)


# GRPO-family settings PPO does not read: set away from their defaults, they would do nothing.
UNUSED_RL = ("rl.advantage", "rl.policy_loss", "rl.aggregation", "rl.dual_clip", "rl.kl_estimator",
             "rl.kl_in_reward", "rl.dynamic_sampling", "rl.max_refills", "rl.overlong", "rl.overlong_buffer",
             "rl.off_policy_correction", "rl.is_cap", "rl.sapo_tau_pos", "rl.sapo_tau_neg", "rl.scale_rewards",
             "rl.std_ddof", "rl.std_eps", "rl.vespo")


def validate(config, checks) -> None:
  checks.unused(UNUSED_RL, "PPO's advantages are GAE from its critic (ppo.*), its loss the clipped PPO objective "
                "with the KL in the reward")
  p = config.ppo
  checks.check(0 < p.gamma <= 1, "ppo.gamma", f"must be in (0, 1], got {p.gamma}")
  checks.check(0 <= p.lam <= 1, "ppo.lam", f"must be in [0, 1], got {p.lam}")
  checks.check(p.vf_coef > 0, "ppo.vf_coef", f"must be > 0, got {p.vf_coef}")
  checks.check(p.value_clip > 0, "ppo.value_clip", f"must be > 0, got {p.value_clip}")
  checks.check(config.lora.rank == 0, "lora.rank", "LoRA with ppo is not implemented yet (sft, rm, dpo, grpo have it)")


ALGORITHM = Algorithm(
    name="ppo", loop="online", validate=validate, make_loss=loss_from_config, critic=True,
    reference=lambda config: config.rl.beta > 0, prepare_batch=batch_preparer)
