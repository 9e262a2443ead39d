"""The DPO family as small pure functions of sequence log-probabilities.

With  s(y) = sum_t log pi_theta(y_t | x, y_<t)  over the completion tokens,  s_ref(y) the same under the
frozen reference,  rho(y) = s(y) - s_ref(y)  and  |y| the completion length:

  sigmoid  DPO (Rafailov et al. 2023), conservative with label smoothing eps (Mitchell 2023, cDPO):
             L = -(1 - eps) log sig(beta h) - eps log sig(-beta h),         h = rho(y_w) - rho(y_l)
  ipo      IPO (Azar et al. 2023, "A General Theoretical Paradigm..."):  L = (h - 1 / (2 beta))^2
  simpo    SimPO (Meng et al. 2024), reference-free, length-normalised, target margin gamma:
             L = -log sig(beta s(y_w)/|y_w| - beta s(y_l)/|y_l| - gamma)
  orpo     ORPO (Hong et al. 2024), reference-free: SFT on y_w plus an odds-ratio term, weight beta (lambda):
             L = -s(y_w)/|y_w| - beta log sig(log odds(y_w) - log odds(y_l)),
             odds(y) = p / (1 - p),  p = exp(s(y)/|y|)
  kto      KTO (Ethayarajh et al. 2024), unpaired examples (x, y, desirable?) with reference point
             z0 = max(0, mean_{batch} [s(y'|x) - s_ref(y'|x)]),  y' a completion of another prompt:
             L = w_D (1 - sig(beta (rho(y) - z0)))  if desirable,   w_U (1 - sig(beta (z0 - rho(y))))  else

Batch layout (see `jaxpost.data.preferences`): every field is (B, 2, T); row b is pair b, `[:, 0]` the
chosen and `[:, 1]` the rejected sequence (for KTO `[:, 0]` the example and `[:, 1]` its mismatched
KL sequence, plus `label` (B,)). Keeping a pair in one row means sharding over rows and the train step's
microbatch split never separate a pair. The loss runs one forward pass over the (2B, T) rows.

Reference log-probs come from the batch (`ref_logps` (B, 2), precomputed once before training) or, when
the batch lacks them, from `frozen["ref_params"]` under stop_gradient; simpo and orpo need neither.

Conventions and deviations:
- Rewards (metrics) are beta * rho(y) (sigmoid, ipo, kto) or beta * s(y)/|y| (simpo, orpo), as in TRL.
- IPO (dpo.ipo_length_norm, default on) divides each completion's summed log-ratio by its length before the
  squared loss, as TRL does and as its authors confirmed the IPO paper's results were computed; off, the
  summed log-ratios of the paper's equation 17 (the same beta then means a regulariser ~length^2 weaker).
- ORPO's SFT term is a per-pair token mean, averaged over pairs (TRL: token mean over the batch).
- KTO's z0 is the mean over the (micro)batch, detached, as in TRL; with gradient accumulation each
  microbatch has its own z0. KTO's reward metrics are means over the desirable (resp. undesirable)
  examples of each microbatch, weighted by the microbatch size (exact with grad_accum = 1).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxpost import logprobs as logprobs_lib
from jaxpost.algorithms.base import Algorithm

# ---------------------------------------------------------------------------------------------------------
# Losses: per-pair (or per-example) values (B,) -> losses (B,). Pure, elementwise over the batch.
# ---------------------------------------------------------------------------------------------------------


def sigmoid_loss(chosen_logratios, rejected_logratios, *, beta: float, label_smoothing: float = 0.0):
  """DPO: -(1 - eps) log sig(beta h) - eps log sig(-beta h), h = rho_w - rho_l. (B,) -> (B,)."""
  h = beta * (chosen_logratios - rejected_logratios)
  return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * jax.nn.log_sigmoid(-h)


def ipo_loss(chosen_logratios, rejected_logratios, *, beta: float):
  """IPO: (h - 1/(2 beta))^2, h = rho_w - rho_l: regresses the margin onto 1/(2 beta). (B,) -> (B,)."""
  return jnp.square(chosen_logratios - rejected_logratios - 1.0 / (2.0 * beta))


def simpo_loss(chosen_avg_logps, rejected_avg_logps, *, beta: float, gamma: float, label_smoothing: float = 0.0):
  """SimPO: -log sig(beta (a_w - a_l) - gamma), a = s(y)/|y|; label smoothing as in DPO. (B,) -> (B,)."""
  h = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
  return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * jax.nn.log_sigmoid(-h)


def _log_odds(avg_logps):
  """log(p / (1 - p)) with p = exp(a); a is clipped just below 0 so that p = 1 stays finite."""
  a = jnp.minimum(avg_logps, -1e-6)
  return a - jnp.log(-jnp.expm1(a))


def orpo_loss(chosen_avg_logps, rejected_avg_logps, *, beta: float):
  """ORPO: -a_w - beta log sig(log odds_w - log odds_l), a = s(y)/|y|. (B,) -> (B,)."""
  ratio = jax.nn.log_sigmoid(_log_odds(chosen_avg_logps) - _log_odds(rejected_avg_logps))
  return -chosen_avg_logps - beta * ratio


def kto_loss(logratios, kl, desirable, *, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
  """KTO: w_D (1 - sig(beta (rho - z0))) for desirable, w_U (1 - sig(beta (z0 - rho))) otherwise.

  logratios (B,), kl the scalar reference point z0 (a constant), desirable (B,) bool -> losses (B,)."""
  return jnp.where(desirable, desirable_weight * (1.0 - jax.nn.sigmoid(beta * (logratios - kl))),
                   undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (kl - logratios))))


def kto_reference_point(kl_logps, ref_kl_logps, valid):
  """z0 = max(0, mean over valid rows of s(y'|x) - s_ref(y'|x)), detached. (B,) -> ()."""
  valid = valid.astype(jnp.float32)
  mean = jnp.sum((kl_logps - ref_kl_logps) * valid) / jnp.maximum(jnp.sum(valid), 1.0)
  return jax.lax.stop_gradient(jnp.maximum(mean, 0.0))


# ---------------------------------------------------------------------------------------------------------
# Registry: name -> fn(logps (B, 2), ref_logps (B, 2) | None, lengths (B, 2), options) -> (losses, rewards (B, 2)).
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
  beta: float = 0.1                 # Inverse temperature (ORPO: the odds-ratio weight lambda).
  label_smoothing: float = 0.0      # cDPO / SimPO: assumed probability that a label is flipped.
  gamma: float = 0.5                # SimPO target reward margin.
  desirable_weight: float = 1.0     # KTO lambda_D.
  undesirable_weight: float = 1.0   # KTO lambda_U.
  ipo_length_norm: bool = True      # IPO: per-token (length-normalised) log-ratios, TRL's form.


def _sigmoid(logps, ref_logps, lengths, o: Options):
  rho = logps - ref_logps  # (B, 2)
  return sigmoid_loss(rho[:, 0], rho[:, 1], beta=o.beta, label_smoothing=o.label_smoothing), o.beta * rho


def _ipo(logps, ref_logps, lengths, o: Options):
  rho = logps - ref_logps  # (B, 2)
  h = rho / jnp.maximum(lengths, 1.0) if o.ipo_length_norm else rho
  return ipo_loss(h[:, 0], h[:, 1], beta=o.beta), o.beta * rho


def _simpo(logps, ref_logps, lengths, o: Options):
  avg = logps / jnp.maximum(lengths, 1.0)
  losses = simpo_loss(avg[:, 0], avg[:, 1], beta=o.beta, gamma=o.gamma, label_smoothing=o.label_smoothing)
  return losses, o.beta * avg


def _orpo(logps, ref_logps, lengths, o: Options):
  avg = logps / jnp.maximum(lengths, 1.0)
  return orpo_loss(avg[:, 0], avg[:, 1], beta=o.beta), o.beta * avg


PAIRED_LOSSES = {"sigmoid": _sigmoid, "ipo": _ipo, "simpo": _simpo, "orpo": _orpo}
LOSS_TYPES = (*PAIRED_LOSSES, "kto")
REFERENCE_FREE = ("simpo", "orpo")


def needs_reference(loss_type: str) -> bool:
  return loss_type not in REFERENCE_FREE


# ---------------------------------------------------------------------------------------------------------
# Sequence log-probs and the loss in the train step's convention.
# ---------------------------------------------------------------------------------------------------------


def pair_valid(batch) -> jnp.ndarray:
  """(B,) f32: 1 for a real pair (its first sequence has a loss token), 0 for an eval padding row."""
  return jnp.any(batch["loss_mask"][:, 0] > 0, axis=-1).astype(jnp.float32)


def normalizer(batch) -> jnp.ndarray:
  """Number of pairs (KTO: examples) in the batch, at least 1: the loss is a mean over pairs."""
  return jnp.maximum(jnp.sum(pair_valid(batch)), 1.0)


def sequence_logps(graphdef, params, batch, *, impl: str = "naive"):
  """(B, 2, T) pair fields -> summed completion log-probs (B, 2) f32 and completion lengths (B, 2) f32."""
  b, two, t = batch["inputs"].shape
  flat = {k: batch[k].reshape(b * two, t) for k in ("inputs", "targets", "positions", "segment_ids")}
  logps = logprobs_lib.token_logprobs(graphdef, params, flat, impl=impl).reshape(b, two, t)  # (B, 2, T)
  mask = batch["loss_mask"].astype(jnp.float32)  # (B, 2, T)
  return jnp.sum(logps * mask, axis=-1), jnp.sum(mask, axis=-1)


def make_loss_fn(graphdef, logprob_impl: str = "naive", *, loss_type: str = "sigmoid", options: Options = Options()):
  """Returns (loss_fn(params, batch, frozen) -> (sum of per-pair losses, metric sums), normalizer), for
  `step.py`.

  Metrics (means over pairs once divided by `normalizer`): loss, rewards/chosen, rewards/rejected,
  rewards/margins, rewards/accuracies, logps/chosen, logps/rejected; KTO: loss, kl, rewards/chosen,
  rewards/rejected (over desirable / undesirable examples), rewards/margins, logps/completion."""
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"dpo.loss_type {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")

  def reference(batch, frozen):
    if "ref_logps" in batch:
      return batch["ref_logps"].astype(jnp.float32)
    if not frozen or "ref_params" not in frozen:
      raise ValueError(f"loss_type {loss_type!r} needs reference log-probs: the batch has no `ref_logps` and "
                       "`frozen` has no `ref_params`")
    ref_logps, _ = sequence_logps(graphdef, frozen["ref_params"], batch, impl=logprob_impl)
    return jax.lax.stop_gradient(ref_logps)

  def paired(params, batch, frozen):
    valid = pair_valid(batch)  # (B,)
    ref_logps = reference(batch, frozen) if needs_reference(loss_type) else None  # (B, 2)
    logps, lengths = sequence_logps(graphdef, params, batch, impl=logprob_impl)  # (B, 2) each
    losses, rewards = PAIRED_LOSSES[loss_type](logps, ref_logps, lengths, options)
    rewards = jax.lax.stop_gradient(rewards)
    margins = rewards[:, 0] - rewards[:, 1]
    total = jnp.sum(losses * valid)
    return total, {"loss": total, "rewards/chosen": jnp.sum(rewards[:, 0] * valid),
                   "rewards/rejected": jnp.sum(rewards[:, 1] * valid), "rewards/margins": jnp.sum(margins * valid),
                   "rewards/accuracies": jnp.sum((margins > 0) * valid),
                   "logps/chosen": jnp.sum(logps[:, 0] * valid), "logps/rejected": jnp.sum(logps[:, 1] * valid)}

  def kto(params, batch, frozen):
    valid = pair_valid(batch)  # (B,)
    ref_logps = reference(batch, frozen)  # (B, 2)
    logps, _ = sequence_logps(graphdef, params, batch, impl=logprob_impl)  # (B, 2): example, KL sequence
    kl = kto_reference_point(logps[:, 1], ref_logps[:, 1], valid)
    rho = logps[:, 0] - ref_logps[:, 0]  # (B,)
    desirable = batch["label"] > 0
    losses = kto_loss(rho, kl, desirable, beta=options.beta, desirable_weight=options.desirable_weight,
                      undesirable_weight=options.undesirable_weight)
    rewards = jax.lax.stop_gradient(options.beta * rho)
    n = jnp.sum(valid)
    d_mask, u_mask = valid * desirable, valid * (1.0 - desirable)
    # Sums scaled by n / count so that dividing by the normaliser (n) gives the mean over that subset.
    chosen = jnp.sum(rewards * d_mask) * n / jnp.maximum(jnp.sum(d_mask), 1.0)
    rejected = jnp.sum(rewards * u_mask) * n / jnp.maximum(jnp.sum(u_mask), 1.0)
    total = jnp.sum(losses * valid)
    return total, {"loss": total, "kl": kl * n, "rewards/chosen": chosen, "rewards/rejected": rejected,
                   "rewards/margins": chosen - rejected, "logps/completion": jnp.sum(logps[:, 0] * valid)}

  return (kto if loss_type == "kto" else paired), normalizer


def make_reference_logps_fn(graphdef, logprob_impl: str = "naive"):
  """Returns fn(ref_params, batch) -> ref_logps (B, 2) f32: the precompute pass before training."""
  def fn(ref_params, batch):
    return sequence_logps(graphdef, ref_params, batch, impl=logprob_impl)[0]
  return fn


def options_from_config(d) -> Options:
  """config.dpo -> Options."""
  return Options(beta=d.beta, label_smoothing=d.label_smoothing, gamma=d.gamma,
                 desirable_weight=d.desirable_weight, undesirable_weight=d.undesirable_weight,
                 ipo_length_norm=d.ipo_length_norm)


PAIR_ROWS = "a row holds one pair, chosen and rejected side by side (fields (R, 2, T)), never packed"


def validate(config, checks) -> None:
  checks.unused(("data.pack",), PAIR_ROWS)
  d = config.dpo
  checks.choice("dpo.loss_type", LOSS_TYPES)
  checks.choice("dpo.ref_logps", ("precompute", "online"))
  checks.check(d.beta > 0, "dpo.beta", f"must be > 0, got {d.beta}")
  checks.check(0 <= d.label_smoothing < 0.5, "dpo.label_smoothing", f"must be in [0, 0.5), got {d.label_smoothing}")
  for key in ("desirable_weight", "undesirable_weight"):
    checks.check(d[key] > 0, f"dpo.{key}", f"must be > 0, got {d[key]}")


ALGORITHM = Algorithm(
    name="dpo", loop="offline", validate=validate, eval_accuracy="rewards/accuracies",
    data=lambda config: "unpaired" if config.dpo.loss_type == "kto" else "pairs",
    reference=lambda config: needs_reference(config.dpo.loss_type),
    make_loss=lambda config, models: make_loss_fn(models.graphdef, models.model_cfg.logprob_impl,
                                                  loss_type=config.dpo.loss_type,
                                                  options=options_from_config(config.dpo)))
