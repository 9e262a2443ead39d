"""Distillation from a frozen teacher in the online loop: on-policy distillation and GKD.

  reverse_kl  on-policy distillation (Agarwal et al. 2024, "On-Policy Distillation of Language Models:
              Learning from Self-Generated Mistakes", the beta = 1 case; Thinking Machines, "On-Policy
              Distillation", 2025): the student samples o ~ pi_s(. | q) and every sampled token gets

                A_t = -(log pi_s(o_t | q, o_<t) - log pi_t(o_t | q, o_<t))  [+ w_R A_i]

              a one-sample estimate of the per-token reverse KL(pi_s || pi_t) (discount 0), trained through
              the GRPO family's policy loss (rl.policy_loss, rl.aggregation): minimising sum_t KL(pi_s || pi_t)
              on the student's own samples. w_R = distill.reward_weight mixes in the task reward's group
              advantage A_i (rl.advantage over the G samples of prompt q); log pi_s is the sampler's.
  gkd         generalized knowledge distillation (Agarwal et al. 2024, sec. 3.1): with probability lambda
              (distill.on_policy_fraction) a step trains on student samples, else on the dataset's own
              completions; the loss is the token mean over completion tokens of

                JSD_beta(p_t || p_s) = beta KL(p_t || m) + (1 - beta) KL(p_s || m),  m = beta p_t + (1 - beta) p_s

              over the full next-token distributions at the sampling temperature; beta = 0 is the forward
              KL(p_t || p_s), beta = 1 the reverse KL(p_s || p_t) (TRL's `generalized_jsd_loss` convention).
              The divergence is vocabulary-tiled (jaxpost.kernels.divergence): no [T, V] logits of either model.

Both report, per rollout batch under the policy that sampled it (`teacher_stats`): the exact per-token reverse
KL over the full distributions, the teacher's log-prob of the sampled tokens and the argmax agreement.

Deviations: GKD's dataset steps repeat each prompt's one completion over its G rows (set rl.num_generations=1
for one row a prompt); a step is on-policy when a uniform draw seeded by (train.seed, step) is < lambda, so a
resumed run makes the same choices.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost import logprobs as logprobs_lib
from jaxpost import mesh as mesh_lib
from jaxpost.algorithms import grpo
from jaxpost.algorithms.base import Algorithm

LOSSES = ("reverse_kl", "gkd")


# ---------------------------------------------------------------------------------------------------------
# The math: advantages (reverse_kl) and the divergence loss (gkd).
# ---------------------------------------------------------------------------------------------------------


def reverse_kl_advantages(logps, teacher_logps, mask, group_advantages=None, *, reward_weight: float = 0.0):
  """A_t = -(log pi_s(o_t) - log pi_t(o_t)) [+ w_R A_i] on completion tokens, 0 elsewhere.

  logps (the sampler's), teacher_logps, mask [B, T]; group_advantages [B] (the task reward's, when
  reward_weight > 0) -> advantages [B, T] f32."""
  mask = mask.astype(jnp.float32)
  advantages = -(logps - teacher_logps)  # (B, T)
  if reward_weight:
    advantages = advantages + reward_weight * group_advantages[:, None]
  return advantages * mask


def divergence_impl(logprob_impl: str) -> str:
  """The divergence's implementation from model.logprob_impl: naive (full logits) only when asked or on CPU
  under auto (small vocabularies), else the tiled one."""
  if logprob_impl == "auto":
    return "chunked" if jax.default_backend() != "cpu" else "naive"
  return "naive" if logprob_impl == "naive" else "chunked"


def _hidden(graphdef, params, batch):
  """(final-normed hidden (B*T, D), unembedding (D, V), final logit softcap or None) of a model on batch."""
  model = nnx.merge(graphdef, params)
  hidden = model.hidden(batch["inputs"], batch["positions"], batch["segment_ids"])  # (B, T, D)
  return hidden.reshape(-1, hidden.shape[-1]), model.unembedding(), model.cfg.final_logit_softcap or None


def token_divergences(graphdef, params, teacher_graphdef, teacher_params, batch, *, beta: float, temperature: float,
                      impl: str, return_argmax: bool = False):
  """JSD_beta(p_t || p_s) per token [B, T] f32 (student differentiable, teacher frozen) [, argmax_s, argmax_t
  (B, T) int32], from both models' hidden states and unembeddings (see `_divergences`)."""
  return _divergences(_hidden(graphdef, params, batch), _hidden(teacher_graphdef, teacher_params, batch),
                      batch["inputs"].shape, beta=beta, temperature=temperature, impl=impl, return_argmax=return_argmax)


def _divergences(student, teacher, shape, *, beta: float, temperature: float, impl: str, return_argmax: bool):
  """`token_divergences` from both models' `_hidden` states, reshaped to `shape` (B, T): vocabulary-tiled unless
  impl = naive; under a context mesh the tiled path runs per token shard over (data, fsdp), as the log-probs do
  (logprobs.py)."""
  from jaxpost.kernels.divergence import token_divergence, token_divergence_sharded
  (h_s, w_s, cap_s), (h_t, w_t, cap_t) = student, teacher
  h_t, w_t = jax.lax.stop_gradient(h_t), jax.lax.stop_gradient(w_t)  # The teacher is frozen.
  kwargs = dict(beta=beta, temperature=temperature, student_softcap=cap_s, teacher_softcap=cap_t, impl=impl,
                return_argmax=return_argmax)
  b, t = shape
  found = None if impl == "naive" else mesh_lib.context_row_axes(b * t)
  if found is None or not found[0]:
    out = token_divergence(h_s, w_s, h_t, w_t, **kwargs)
  else:
    out = token_divergence_sharded(h_s, w_s, h_t, w_t, found[1], token_axes=found[0], **kwargs)
  return jax.tree.map(lambda x: x.reshape(b, t), out)


def make_gkd_loss_fn(graphdef, teacher_graphdef, *, beta: float, temperature: float, impl: str):
  """Returns (loss_fn(params, batch, frozen = teacher params) -> (loss_sum, metric_sums), normalizer): the
  token mean of JSD_beta over loss_mask tokens. batch: inputs, targets, positions, segment_ids, loss_mask
  [B, T]."""

  def normalizer(batch):
    return jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)

  def loss_fn(params, batch, frozen):
    if frozen is None:
      raise ValueError("the gkd loss needs the teacher's params as `frozen`")
    mask = batch["loss_mask"].astype(jnp.float32)
    divergence = token_divergences(graphdef, params, teacher_graphdef, frozen, batch, beta=beta,
                                   temperature=temperature, impl=impl)  # (B, T)
    loss_sum = jnp.sum(divergence * mask)
    return loss_sum, {"loss": loss_sum, "gkd/divergence": jax.lax.stop_gradient(loss_sum)}

  return loss_fn, normalizer


# ---------------------------------------------------------------------------------------------------------
# The online step's pieces.
# ---------------------------------------------------------------------------------------------------------


def teacher_stats(batch, policy_params, teacher_params, *, graphdef, teacher_graphdef, temperature: float,
                  impl: str, logprob_impl: str):
  """The teacher's view of the rollout rows: batch + teacher_logps (B, T) (log pi_t of each target token at
  the sampling temperature), and masked means over completion tokens: distill/reverse_kl (exact KL(p_s || p_t)
  over the full distributions), distill/teacher_logp, distill/argmax_agreement (student and teacher argmax
  equal). Nothing here is differentiated."""
  batch = dict(batch)
  teacher = _hidden(teacher_graphdef, teacher_params, batch)  # The teacher's forward, once for both uses.
  h_t, w_t, cap_t = teacher
  batch["teacher_logps"] = logprobs_lib.flat_token_logprobs(
      h_t, w_t, batch["targets"].reshape(-1), impl=logprob_impl, temperature=temperature,
      logit_softcap=cap_t).reshape(batch["targets"].shape)  # (B, T)
  reverse_kl, argmax_s, argmax_t = _divergences(_hidden(graphdef, policy_params, batch), teacher,
                                                batch["inputs"].shape, beta=1.0, temperature=temperature, impl=impl,
                                                return_argmax=True)  # (B, T) each
  mask = batch["loss_mask"].astype(jnp.float32)
  mean = lambda x: jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  metrics = {"distill/reverse_kl": mean(reverse_kl), "distill/teacher_logp": mean(batch["teacher_logps"]),
             "distill/argmax_agreement": mean((argmax_s == argmax_t).astype(jnp.float32))}
  return batch, metrics


def prepare_batch(batch, rollout, params=None, frozen=None, *, loss: str, reward_weight: float, num_generations: int,
                  advantage: str, advantage_options=None):
  """reverse_kl: batch + advantages (R, T) from old_logps (the sampler's) and teacher_logps (see
  `reverse_kl_advantages`; the task reward's group advantages from rollout["rewards"] when reward_weight > 0).
  gkd: the batch as it is (its loss reads the teacher itself). Pure, jitted by the loop."""
  del params, frozen
  batch = dict(batch)
  if loss == "reverse_kl":
    group = None
    if reward_weight:
      valid = rollout["valid"].reshape(-1, num_generations)[:, 0] > 0  # (P,)
      group = grpo.compute_advantages(rollout["rewards"].reshape(-1, num_generations), None, advantage,
                                      valid=valid, **(advantage_options or {})).reshape(-1)  # (R,)
    batch["advantages"] = reverse_kl_advantages(batch["old_logps"], batch["teacher_logps"], batch["loss_mask"], group,
                                                reward_weight=reward_weight)
  return batch, {}


def dataset_step(config, step: int) -> str:
  """GKD's mixture: step trains on the dataset's completions (the records' distill.completion_field, returned)
  when a uniform draw seeded by (train.seed, step) is >= distill.on_policy_fraction (lambda); else on samples
  (""). Always samples at lambda = 1 and under reverse_kl."""
  d = config.distill
  if d.loss != "gkd" or d.on_policy_fraction >= 1.0:
    return ""
  on_policy = np.random.default_rng([config.train.seed, step, 0x6B64]).random() < d.on_policy_fraction
  return "" if on_policy else d.completion_field


def loss_from_config(config, models):
  d, rl = config.distill, config.rl
  if d.loss == "gkd":
    return make_gkd_loss_fn(models.graphdef, models.teacher_graphdef, beta=d.beta, temperature=rl.temperature,
                            impl=divergence_impl(models.model_cfg.logprob_impl))
  return grpo.loss_from_config(config, models)


def batch_preparer(config, models):
  del models
  d, rl = config.distill, config.rl
  return functools.partial(prepare_batch, loss=d.loss, reward_weight=d.reward_weight,
                           num_generations=rl.num_generations, advantage=rl.advantage,
                           advantage_options=grpo.advantage_options(rl))


def stats_from_config(config, models):
  return functools.partial(teacher_stats, graphdef=models.graphdef, teacher_graphdef=models.teacher_graphdef,
                           temperature=config.rl.temperature, impl=divergence_impl(models.model_cfg.logprob_impl),
                           logprob_impl=models.teacher_cfg.logprob_impl)


# GRPO-family settings the gkd loss does not read.
UNUSED_BY_GKD = ("rl.advantage", "rl.policy_loss", "rl.aggregation", "rl.epsilon_low", "rl.epsilon_high",
                 "rl.dual_clip", "rl.beta", "rl.kl_estimator", "rl.kl_in_reward", "rl.entropy_coef",
                 "rl.dynamic_sampling", "rl.overlong", "rl.off_policy_correction", "rl.is_cap", "rl.old_logps",
                 "rl.sapo_tau_pos", "rl.sapo_tau_neg", "rl.scale_rewards", "rl.std_ddof", "rl.std_eps", "rl.vespo")


def validate(config, checks) -> None:
  d, r = config.distill, config.rl
  checks.check(bool(d.teacher), "distill.teacher", "empty; name the teacher: a Hugging Face model directory or a "
               "jaxpost training workdir")
  checks.choice("distill.loss", LOSSES)
  checks.check(0.0 <= d.beta <= 1.0, "distill.beta", f"must be in [0, 1], got {d.beta}")
  checks.check(0.0 <= d.on_policy_fraction <= 1.0, "distill.on_policy_fraction",
               f"must be in [0, 1], got {d.on_policy_fraction}")
  checks.check(d.reward_weight >= 0.0, "distill.reward_weight", f"must be >= 0, got {d.reward_weight}")
  checks.check(not r.env, "rl.env", "distillation runs on single replies so far; leave rl.env empty")
  if d.loss == "gkd":
    checks.check(d.reward_weight == 0.0, "distill.reward_weight",
                 f"{d.reward_weight} mixes a task reward into reverse_kl's advantages; gkd has none (set 0)")
    checks.unused(UNUSED_BY_GKD, "the gkd loss is the divergence over full distributions alone")
    return
  checks.check(d.on_policy_fraction == 1.0, "distill.on_policy_fraction",
               f"{d.on_policy_fraction}: reverse_kl trains on the student's own samples only (1.0); dataset "
               "steps are gkd's")
  checks.check(d.beta == 0.5, "distill.beta", f"{d.beta} is gkd's; reverse_kl does not read it (leave 0.5)")
  checks.choice("rl.advantage", tuple(grpo.ADVANTAGES))
  checks.choice("rl.policy_loss", tuple(grpo.POLICY_LOSSES))
  checks.choice("rl.aggregation", grpo.AGGREGATIONS)
  checks.check(r.num_generations > 1 or not d.reward_weight, "rl.num_generations",
               f"distill.reward_weight={d.reward_weight} needs group baselines: >= 2 samples a prompt")
  checks.check(not r.dynamic_sampling, "rl.dynamic_sampling",
               "every sample carries the teacher's signal; dropping groups of equal rewards would waste them")
  checks.check(r.off_policy_correction == "none", "rl.off_policy_correction",
               "not built for distillation yet: advantages use the sampler's log-probs")


ALGORITHM = Algorithm(
    name="distill", loop="online", validate=validate, make_loss=loss_from_config,
    reference=lambda config: config.distill.loss == "reverse_kl" and config.rl.beta > 0,
    prepare_batch=batch_preparer, teacher=lambda config: config.distill.teacher, teacher_stats=stats_from_config,
    dataset_step=dataset_step)
