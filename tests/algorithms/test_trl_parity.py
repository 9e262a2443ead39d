"""Our losses against TRL's own code (trl, a test-only dependency like transformers), on random inputs, in f32.

TRL's losses are methods of its trainers. Each is called through the smallest honest harness: a trainer made
with `object.__new__` (no model, no accelerator start-up) holding only the attributes the method reads, an
identity stand-in for the accelerator's gathers, and the model's per-token log-probs given as a tensor. The
method's own code computes the loss; nothing of its formula is re-typed here.

GRPO family (`GRPOTrainer._compute_loss`): each TRL `loss_type` and ours, values and gradients w.r.t. the
per-token log-probs within 1e-5:
  TRL grpo            == ppo_clip + seq_mean_token_mean
  TRL bnpo, dapo      == ppo_clip + token_mean       (one micro-batch, one process: both are the token mean)
  TRL dr_grpo         == ppo_clip + seq_mean_token_sum_norm (max_len = the completion budget)
  TRL grpo, sequence  == gspo + seq_mean_token_mean  (importance_sampling_level="sequence")
  TRL luspo, sequence == gspo + seq_mean_token_sum
  TRL cispo           == cispo + token_mean, TRL's epsilon_high = 1 + ours (TRL caps the ratio at epsilon_high)
  TRL sapo            == sapo + seq_mean_token_mean
  TRL vespo           == vespo + token_mean          (TRL's default k and lambda)
and with beta > 0 TRL's KL term (k3) equals ours.

DPO family (`DPOTrainer._compute_loss`, the model's per-token log-probs given): sigmoid (DPO) and ipo, values and
gradients. IPO's length normalisation is TRL's and our default (dpo.ipo_length_norm); off, the losses differ
(shown). TRL's label smoothing belongs to its `robust` loss (rDPO), not to `sigmoid`: our sigmoid's
label_smoothing is cDPO's, which TRL 1.16 no longer has, so it is checked by hand (tests/algorithms/test_dpo.py).

KTO (`KTOTrainer._compute_loss`, with its KL batch and precomputed reference log-probs): values and gradients,
desirable and undesirable weights.

SimPO (`CPOTrainer.cpo_loss`, loss_type="simpo", with label smoothing) and ORPO's odds-ratio term
(`ORPOTrainer.odds_ratio_loss`) on per-token-mean log-probs. ORPO's SFT term differs on purpose: ours is each
pair's token mean averaged over pairs, TRL's the token mean over the batch (tests/algorithms/test_dpo.py).

GKD's divergence (`GKDTrainer.generalized_jsd_loss`, a staticmethod on full logits) against our vocabulary-tiled
kernel (jaxpost.kernels.divergence) on hidden states and unembeddings: beta 0, 0.5 and 1, temperature, masked
token mean; values and gradients w.r.t. the student's hidden states.

Reward model (`RewardTrainer.compute_loss`, the model's scalar scores given): Bradley-Terry with a margin and
the centering term, values and gradients w.r.t. the scores.
"""
import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.algorithms import dpo
from jaxpost.algorithms import grpo
from jaxpost.algorithms import kl as kl_lib
from jaxpost.algorithms import rm

torch = pytest.importorskip("torch")
trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_rm = pytest.importorskip("trl.trainer.reward_trainer")
trl_kto = pytest.importorskip("trl.trainer.kto_trainer")
trl_gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
trl_cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
trl_orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")


class _OneProcess:
  """The accelerator's collectives on one process: identities."""
  device = "cpu"
  num_processes = 1
  sync_gradients = True

  def gather(self, x):
    return x

  gather_for_metrics = gather

  def reduce(self, x, reduction="sum"):
    del reduction
    return x


def _inputs(seed=0, b=4, t=6):
  """Per-token log-probs, behaviour log-probs ~0.3 away (ratios beyond the clip range both ways), reference
  log-probs, advantages of both signs, and completions of 6, 3, 5 and 1 tokens."""
  rng = np.random.default_rng(seed)
  logps = -rng.uniform(0.1, 3.0, (b, t)).astype(np.float32)
  old = (logps + 0.3 * rng.standard_normal((b, t))).astype(np.float32)
  ref = (logps + 0.2 * rng.standard_normal((b, t))).astype(np.float32)
  advantages = np.array([1.3, -0.7, 0.4, -1.6], np.float32)[:b]
  mask = np.zeros((b, t), np.float32)
  for i, n in enumerate((6, 3, 5, 1)[:b]):
    mask[i, :n] = 1
  return logps, old, ref, advantages, mask


def _trl_grpo(loss_type, logps, old, ref, advantages, mask, *, level="token", beta=0.0, epsilon_low=0.2,
              epsilon_high=0.2, sapo=(1.0, 1.05)):
  """TRL's GRPOTrainer._compute_loss on these log-probs -> (loss, d loss / d logps)."""
  trainer = object.__new__(trl_grpo.GRPOTrainer)
  b, t = logps.shape
  logps_t = torch.tensor(logps, requires_grad=True)
  trainer.__dict__.update(
      loss_type=loss_type, importance_sampling_level=level, beta=beta, epsilon_low=epsilon_low,
      epsilon_high=epsilon_high, top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
      vllm_importance_sampling_correction=False, aux_loss_enabled=False, _entropy_bonus_enabled=False,
      current_gradient_accumulation_steps=1, max_completion_length=t, accelerator=_OneProcess(),
      model=types.SimpleNamespace(training=True),
      _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
      args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, sapo_temperature_pos=sapo[0],
                                 sapo_temperature_neg=sapo[1], steps_per_generation=1, vespo_k_pos=2.0,
                                 vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0),
      _get_per_token_logps_and_entropies=lambda *a, **k: (logps_t, torch.zeros(b, t), None))
  inputs = {"prompt_ids": torch.ones(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
            "completion_ids": torch.ones(b, t, dtype=torch.long), "completion_mask": torch.tensor(mask),
            "advantages": torch.tensor(advantages), "old_per_token_logps": torch.tensor(old),
            "ref_per_token_logps": torch.tensor(ref), "num_items_in_batch": torch.tensor(mask.sum())}
  loss = trainer._compute_loss(trainer.model, inputs)
  loss.backward()
  return float(loss.detach()), logps_t.grad.numpy()


def _ours(policy_loss, aggregation, logps, old, ref, advantages, mask, *, beta=0.0, epsilon_low=0.2,
          epsilon_high=0.2, max_len=None, **options):
  """Our per-token loss (POLICY_LOSSES) + beta k3 KL, aggregated -> (loss, d loss / d logps)."""
  fn = grpo.POLICY_LOSSES[policy_loss]

  def loss(lp):
    per_token, _ = fn(lp, jnp.asarray(old), jnp.asarray(advantages), jnp.asarray(mask), epsilon_low=epsilon_low,
                      epsilon_high=epsilon_high, dual_clip=None, **options)
    if beta:
      per_token = per_token + beta * kl_lib.kl_estimate(lp, jnp.asarray(ref), "k3")
    total, norm = grpo.aggregate(per_token, jnp.asarray(mask), aggregation, max_len=max_len)
    return total / norm

  value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(logps))
  return float(value), np.asarray(grad)


@pytest.mark.parametrize("trl_loss,level,ours,aggregation,extra", [
    ("grpo", "token", "ppo_clip", "seq_mean_token_mean", {}),
    ("bnpo", "token", "ppo_clip", "token_mean", {}),
    ("dapo", "token", "ppo_clip", "token_mean", {"epsilon_high": 0.28}),
    ("dr_grpo", "token", "ppo_clip", "seq_mean_token_sum_norm", {"max_len": 6}),
    ("grpo", "sequence", "gspo", "seq_mean_token_mean", {"epsilon_low": 3e-4, "epsilon_high": 4e-4}),
    ("luspo", "sequence", "gspo", "seq_mean_token_sum", {"epsilon_low": 3e-4, "epsilon_high": 4e-4}),
    ("sapo", "token", "sapo", "seq_mean_token_mean", {}),
    ("vespo", "token", "vespo", "token_mean", {}),
    ("grpo", "token", "ppo_clip", "seq_mean_token_mean", {"beta": 0.04}),
])
def test_grpo_family_losses_equal_trls(trl_loss, level, ours, aggregation, extra):
  logps, old, ref, advantages, mask = _inputs()
  trl_kwargs = {k: v for k, v in extra.items() if k != "max_len"}
  expected, expected_grad = _trl_grpo(trl_loss, logps, old, ref, advantages, mask, level=level, **trl_kwargs)
  value, grad = _ours(ours, aggregation, logps, old, ref, advantages, mask, **extra)
  assert abs(expected) > 1e-3  # Not a trivial zero.
  np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_cispo_equals_trls_with_its_cap_convention():
  """TRL caps CISPO's weight at `epsilon_high` itself; ours at 1 + epsilon_high (the paper's 1 + eps_high^IS).
  With the ratios here (exp of +-0.3 noise: 0.64 to 1.46 on the completion tokens) a cap of 1.2 binds on some."""
  logps, old, ref, advantages, mask = _inputs()
  assert (np.exp(logps - old)[mask > 0] > 1.2).any()
  expected, expected_grad = _trl_grpo("cispo", logps, old, ref, advantages, mask, epsilon_high=1.2)
  value, grad = _ours("cispo", "token_mean", logps, old, ref, advantages, mask, epsilon_high=0.2)
  np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


def _pairs(seed=1, b=3, t=7):
  """Per-token log-probs of 2B rows (chosen rows first, TRL's layout), 0 off the completions; completions of
  (4, 2), (1, 5), (3, 3) tokens starting at position 1; reference sequence log-probs."""
  rng = np.random.default_rng(seed)
  mask = np.zeros((2 * b, t), np.float32)
  for i, (nc, nr) in enumerate(((4, 2), (1, 5), (3, 3))[:b]):
    mask[i, 1:1 + nc], mask[b + i, 1:1 + nr] = 1, 1
  per_token = (-rng.uniform(0.1, 2.0, (2 * b, t)) * mask).astype(np.float32)
  ref = (per_token.sum(1) + rng.normal(0, 0.7, 2 * b)).astype(np.float32)
  return per_token, mask, ref


def _trl_dpo(loss_type, per_token, mask, ref, *, beta):
  """TRL's DPOTrainer._compute_loss with the model's per-token log-probs given -> (loss, d loss / d per_token)."""
  trainer = object.__new__(trl_dpo.DPOTrainer)
  rows, t = per_token.shape
  lp = torch.tensor(per_token[:, 1:], requires_grad=True)  # (2B, T-1): the log-prob of token j+1 at column j
  outputs = types.SimpleNamespace(log_probs=lp, entropy=torch.zeros(rows, t - 1), mean_logits=torch.zeros(rows, t - 1),
                                  is_top1=torch.zeros(rows, t - 1, dtype=torch.bool))
  model = lambda **kwargs: outputs
  model.training = True
  trainer.__dict__.update(
      model=model, accelerator=_OneProcess(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
      f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0,
      use_weighting=False, _total_train_tokens=0, _tp_size=1,
      _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)})
  b = rows // 2
  inputs = {"input_ids": torch.ones(rows, t, dtype=torch.long), "attention_mask": torch.ones(rows, t, dtype=torch.long),
            "completion_mask": torch.tensor(mask, dtype=torch.long), "ref_chosen_logps": torch.tensor(ref[:b]),
            "ref_rejected_logps": torch.tensor(ref[b:])}
  loss = trainer._compute_loss(model, inputs, return_outputs=False)
  loss.backward()
  grad = np.zeros_like(per_token)
  grad[:, 1:] = lp.grad.numpy()
  return float(loss.detach()), grad * mask  # (TRL sums log_probs unmasked: they are 0 off the completions.)


def _ours_dpo(loss_type, per_token, mask, ref, **options):
  """Our paired loss on the same sequences -> (mean loss, d loss / d per-token log-probs)."""
  b = per_token.shape[0] // 2
  pair = lambda x: jnp.stack([x[:b], x[b:]], axis=1)  # (2B, ...) -> (B, 2, ...)
  lengths = pair(jnp.asarray(mask.sum(1)))

  def loss(per_token):
    losses, _ = dpo.PAIRED_LOSSES[loss_type](pair(per_token.sum(1)), pair(jnp.asarray(ref)), lengths,
                                             dpo.Options(**options))
    return jnp.mean(losses)

  value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(per_token))
  return float(value), np.asarray(grad) * mask


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("sigmoid", 2.0), ("ipo", 0.1), ("ipo", 0.5)])
def test_dpo_losses_equal_trls(loss_type, beta):
  per_token, mask, ref = _pairs()
  expected, expected_grad = _trl_dpo(loss_type, per_token, mask, ref, beta=beta)
  value, grad = _ours_dpo(loss_type, per_token, mask, ref, beta=beta)
  np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)
  if loss_type == "ipo":  # The summed form (dpo.ipo_length_norm = False) is another regulariser.
    summed, _ = _ours_dpo(loss_type, per_token, mask, ref, beta=beta, ipo_length_norm=False)
    assert abs(summed - expected) > 0.01 * abs(expected)


@pytest.mark.parametrize("margin,center", [(False, None), (True, 0.01)])
def test_reward_model_loss_equals_trls(margin, center):
  rng = np.random.default_rng(2)
  scores = rng.normal(0, 1.5, 8).astype(np.float32)  # chosen (first 4), rejected (last 4), TRL's layout
  margins = rng.uniform(0, 1, 4).astype(np.float32)
  trainer = object.__new__(trl_rm.RewardTrainer)
  logits = torch.tensor(scores[:, None], requires_grad=True)  # (2B, 1)
  model = lambda **kwargs: types.SimpleNamespace(logits=logits)
  model.training = True
  trainer.__dict__.update(model=model, accelerator=_OneProcess(), _total_train_tokens=0, _tp_size=1,
                          args=types.SimpleNamespace(center_rewards_coefficient=center),
                          _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)})
  inputs = {"input_ids": torch.ones(8, 3, dtype=torch.long), "attention_mask": torch.ones(8, 3, dtype=torch.long)}
  if margin:
    inputs["margin"] = torch.tensor(margins)
  loss = trainer.compute_loss(model, inputs)
  loss.backward()

  def ours(s):
    return jnp.mean(rm.bradley_terry_loss(s[:4], s[4:], jnp.asarray(margins) if margin else 0.0,
                                          center_coef=center or 0.0))
  value, grad = jax.value_and_grad(ours)(jnp.asarray(scores))
  np.testing.assert_allclose(float(value), float(loss.detach()), rtol=1e-6)
  np.testing.assert_allclose(grad, logits.grad.numpy()[:, 0], rtol=1e-5, atol=1e-7)


def _avg_logps(seed=3, b=5):
  rng = np.random.default_rng(seed)
  return (-rng.uniform(0.05, 2.5, b)).astype(np.float32), (-rng.uniform(0.05, 2.5, b)).astype(np.float32)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_equals_trls_cpo_simpo(label_smoothing):
  chosen, rejected = _avg_logps()
  trainer = object.__new__(trl_cpo.CPOTrainer)
  trainer.__dict__.update(alpha=0.0, loss_type="simpo", simpo_gamma=0.5, beta=2.0, label_smoothing=label_smoothing,
                          accelerator=_OneProcess())
  c, r = torch.tensor(chosen, requires_grad=True), torch.tensor(rejected, requires_grad=True)
  losses, _, _ = trainer.cpo_loss(c, r)
  losses.sum().backward()
  ours = lambda c, r: jnp.sum(dpo.simpo_loss(c, r, beta=2.0, gamma=0.5, label_smoothing=label_smoothing))
  np.testing.assert_allclose(dpo.simpo_loss(chosen, rejected, beta=2.0, gamma=0.5, label_smoothing=label_smoothing),
                             losses.detach().numpy(), rtol=1e-5)
  grads = jax.grad(ours, argnums=(0, 1))(jnp.asarray(chosen), jnp.asarray(rejected))
  np.testing.assert_allclose(grads[0], c.grad.numpy(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grads[1], r.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_orpo_odds_ratio_term_equals_trls():
  """TRL returns beta log sig(log odds ratio) and subtracts its mean from the NLL; ours returns the whole
  per-pair loss -a_w - beta log sig(...): its odds-ratio part, orpo_loss + a_w, is minus TRL's term."""
  chosen, rejected = _avg_logps()
  trainer = object.__new__(trl_orpo.ORPOTrainer)
  trainer.__dict__.update(beta=0.1, accelerator=_OneProcess())
  c, r = torch.tensor(chosen, requires_grad=True), torch.tensor(rejected, requires_grad=True)
  losses = trainer.odds_ratio_loss(c, r)[0]
  (-losses.sum()).backward()
  ours = lambda c, r: dpo.orpo_loss(c, r, beta=0.1) + c
  np.testing.assert_allclose(ours(chosen, rejected), -losses.detach().numpy(), rtol=1e-5)
  grads = jax.grad(lambda c, r: jnp.sum(ours(c, r)), argnums=(0, 1))(jnp.asarray(chosen), jnp.asarray(rejected))
  np.testing.assert_allclose(grads[0], c.grad.numpy(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grads[1], r.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_kto_equals_trls():
  """5 examples (3 desirable), completions at positions 1.., per-token log-probs given for the examples and for
  their mismatched KL completions; z0 = max(0, mean(KL - ref KL)) as both compute it (detached)."""
  rng = np.random.default_rng(4)
  b, t = 5, 6
  mask = np.zeros((b, t), np.float32)
  for i, n in enumerate((3, 1, 4, 2, 5)):
    mask[i, 1:1 + n] = 1
  per_token = (-rng.uniform(0.1, 2.0, (b, t)) * mask).astype(np.float32)
  kl_per_token = (-rng.uniform(0.1, 2.0, (b, t)) * mask).astype(np.float32)
  ref = (per_token.sum(1) + rng.normal(0, 0.8, b)).astype(np.float32)
  ref_kl = (kl_per_token.sum(1) - 0.5 + rng.normal(0, 0.3, b)).astype(np.float32)  # KL - ref KL ~ +0.5: z0 > 0
  labels = np.array([True, False, True, True, False])
  lp = torch.tensor(per_token[:, 1:], requires_grad=True)
  empty = lambda: torch.zeros(b, t - 1)
  outputs = types.SimpleNamespace(log_probs=lp, entropy=empty(), mean_logits=empty())
  kl_outputs = types.SimpleNamespace(log_probs=torch.tensor(kl_per_token[:, 1:]))
  ids, kl_ids = torch.ones(b, t, dtype=torch.long), torch.ones(b, t, dtype=torch.long)
  model = lambda **kwargs: kl_outputs if kwargs["input_ids"] is kl_ids else outputs
  model.training = True
  trainer = object.__new__(trl_kto.KTOTrainer)
  trainer.__dict__.update(model=model, accelerator=_OneProcess(), calculate_KL=True, aux_loss_enabled=False,
                          precompute_ref_logps=True, loss_type="kto", beta=0.3, desirable_weight=1.0,
                          undesirable_weight=1.5, _total_train_tokens=0, _tp_size=1,
                          _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)})
  inputs = {"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.long),
            "completion_mask": torch.tensor(mask, dtype=torch.long), "KL_input_ids": kl_ids,
            "KL_attention_mask": torch.ones(b, t, dtype=torch.long), "KL_completion_mask": torch.tensor(mask, dtype=torch.long),
            "label": torch.tensor(labels), "ref_logps": torch.tensor(ref), "ref_KL_logps": torch.tensor(ref_kl)}
  loss = trainer._compute_loss(model, inputs, return_outputs=False)
  loss.backward()

  def ours(per_token):
    z0 = dpo.kto_reference_point(jnp.asarray(kl_per_token.sum(1)), jnp.asarray(ref_kl), jnp.ones(b))
    return jnp.mean(dpo.kto_loss(per_token.sum(1) - ref, z0, jnp.asarray(labels), beta=0.3, desirable_weight=1.0,
                                 undesirable_weight=1.5))
  value, grad = jax.value_and_grad(ours)(jnp.asarray(per_token))
  assert float(dpo.kto_reference_point(jnp.asarray(kl_per_token.sum(1)), jnp.asarray(ref_kl), jnp.ones(b))) > 0
  np.testing.assert_allclose(float(value), float(loss.detach()), rtol=1e-5)
  expected_grad = np.zeros_like(per_token)
  expected_grad[:, 1:] = lp.grad.numpy()
  np.testing.assert_allclose(np.asarray(grad) * mask, expected_grad * mask, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gkd_divergence_equals_trls_generalized_jsd(beta):
  from jaxpost.kernels.divergence import token_divergence
  rng = np.random.default_rng(5)
  b, t, v = 2, 5, 37
  h_s, h_t = rng.normal(0, 1, (b * t, 16)).astype(np.float32), rng.normal(0, 1, (b * t, 24)).astype(np.float32)
  w_s, w_t = rng.normal(0, 0.5, (16, v)).astype(np.float32), rng.normal(0, 0.5, (24, v)).astype(np.float32)
  labels = np.where(rng.uniform(size=(b, t)) < 0.7, 1, -100)
  hs = torch.tensor(h_s, requires_grad=True)
  student_logits = (hs @ torch.tensor(w_s)).reshape(b, t, v)
  teacher_logits = (torch.tensor(h_t) @ torch.tensor(w_t)).reshape(b, t, v)
  loss = trl_gkd.GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, labels=torch.tensor(labels), beta=beta,
                                                 temperature=1.5)
  loss.backward()
  mask = jnp.asarray((labels != -100).reshape(-1), jnp.float32)

  def ours(h):
    per_token = token_divergence(h, jnp.asarray(w_s), jnp.asarray(h_t), jnp.asarray(w_t), beta=beta, temperature=1.5,
                                 impl="chunked", block_v=16)  # (N,): 37 columns in 3 chunks, the last clamped
    return jnp.sum(per_token * mask) / jnp.sum(mask)
  value, grad = jax.jit(jax.value_and_grad(ours))(jnp.asarray(h_s))
  np.testing.assert_allclose(float(value), float(loss.detach()), rtol=1e-5)
  np.testing.assert_allclose(grad, hs.grad.numpy(), rtol=1e-5, atol=1e-6)
