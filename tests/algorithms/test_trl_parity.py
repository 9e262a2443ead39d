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
and with beta > 0 TRL's KL term (k3) equals ours.
"""
import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.algorithms import grpo
from jaxpost.algorithms import kl as kl_lib

torch = pytest.importorskip("torch")
trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")


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
                                 sapo_temperature_neg=sapo[1], steps_per_generation=1),
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
