"""Distillation's pieces: reverse-KL advantages and their batch preparation by hand, the GKD loss on a tiny model
(teacher == student gives 0 and no gradient; tiled == full logits; beta 0 and 1 are the two KLs), GKD's
seeded step mixture, the dataset's replies, and the config's one-line errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost import state as state_lib
from jaxpost.algorithms import distill
from jaxpost.config import ConfigError, base_config, validate
from jaxpost.models import ModelConfig

STUDENT = ModelConfig(vocab_size=29, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
TEACHER = ModelConfig(vocab_size=29, d_model=24, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=40,
                      final_logit_softcap=5.0)  # Another size, and a softcap on the teacher's side only.


def test_reverse_kl_advantages_by_hand():
  """A_t = -(logp - teacher_logp): -(-1 + 1.5) = -0.5, -(-2 + 1) = 1; the masked third token 0. With
  reward weight 2 and the row's group advantage 0.25: + 0.5 on every completion token."""
  logps, teacher = jnp.array([[-1.0, -2.0, 0.0]]), jnp.array([[-1.5, -1.0, -3.0]])
  mask = jnp.array([[1, 1, 0]])
  np.testing.assert_allclose(distill.reverse_kl_advantages(logps, teacher, mask), [[-0.5, 1.0, 0.0]])
  np.testing.assert_allclose(distill.reverse_kl_advantages(logps, teacher, mask, jnp.array([0.25]), reward_weight=2.0),
                             [[0.0, 1.5, 0.0]])


def test_prepare_batch_mixes_the_group_advantage():
  """Rewards (1, 0) of one group of 2: GRPO advantages (1 - 0.5) / (0.5 + 1e-6) = +-0.999998; weight 0.5 adds
  +-0.5 to the KL advantages -(old - teacher) = (0.5, -0.25) of each row's one completion token."""
  batch = {"old_logps": jnp.array([[0.0, -1.0], [0.0, -1.0]]), "teacher_logps": jnp.array([[0.0, -0.5], [0.0, -1.25]]),
           "loss_mask": jnp.array([[0, 1], [0, 1]])}
  rollout = {"rewards": jnp.array([1.0, 0.0]), "valid": jnp.ones(2)}
  out, _ = distill.prepare_batch(batch, rollout, loss="reverse_kl", reward_weight=0.5, num_generations=2,
                                 advantage="grpo")
  a = 0.5 / (0.5 + 1e-6)
  np.testing.assert_allclose(out["advantages"], [[0.0, 0.5 + 0.5 * a], [0.0, -0.25 - 0.5 * a]], rtol=1e-6)
  same, _ = distill.prepare_batch(batch, rollout, loss="gkd", reward_weight=0.0, num_generations=2, advantage="grpo")
  assert "advantages" not in same


def _params(cfg, seed):
  graphdef, shapes, _ = state_lib.abstract_model(cfg)
  rng = np.random.default_rng(seed)  # numpy: eager jax.random would compile once per leaf shape.
  return graphdef, jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def _batch(b=3, t=7, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 29, (b, t + 1)).astype(np.int32)
  mask = np.zeros((b, t), np.int32)
  mask[0, 2:5], mask[1, 1:7], mask[2, 3:4] = 1, 1, 1  # 3 + 6 + 1 = 10 loss tokens
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
          "positions": np.arange(t, dtype=np.int32)[None].repeat(b, 0), "segment_ids": np.ones((b, t), np.int32)}


def _full_logps(graphdef, params, batch, temperature):
  from flax import nnx
  logits = nnx.merge(graphdef, params)(batch["inputs"], batch["positions"], batch["segment_ids"])  # (B, T, V)
  return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _run(fn, *args):
  """fn(*args) jitted, compiled once (the session's cheap XLA:CPU codegen, tests/conftest.py)."""
  return jax.jit(fn)(*args)


def test_gkd_loss_equals_the_divergence_of_the_models_full_distributions():
  """For beta 0, 0.5, 1 the loss (token mean over the 10 loss tokens) equals JSD_beta computed from each
  model's own logits (`__call__`, the teacher's softcap included) at temperature 1.5: beta 0 = KL(p_t || p_s),
  1 = KL(p_s || p_t), 0.5 = the mixture form; the tiled and the naive paths both. (Tiled == naive gradients:
  tests/kernels/test_divergence.py.)"""
  graphdef, params = _params(STUDENT, 0)
  teacher_graphdef, teacher = _params(TEACHER, 1)
  batch = _batch()

  def losses(params, teacher, batch):
    lp_s, lp_t = _full_logps(graphdef, params, batch, 1.5), _full_logps(teacher_graphdef, teacher, batch, 1.5)
    p_s, p_t = jnp.exp(lp_s), jnp.exp(lp_t)
    kl = lambda p, lp, lq: jnp.sum(p * (lp - lq), axis=-1)  # KL(p || q) per token
    lm = jnp.log(0.5 * p_t + 0.5 * p_s)
    mask = batch["loss_mask"]
    expected = {0.0: kl(p_t, lp_t, lp_s), 1.0: kl(p_s, lp_s, lp_t), 0.5: 0.5 * kl(p_t, lp_t, lm) + 0.5 * kl(p_s, lp_s, lm)}
    out = {}
    for beta, per_token in expected.items():
      out[("expected", beta)] = jnp.sum(per_token * mask) / 10
      for impl in ("naive", "chunked"):
        loss_fn, normalizer = distill.make_gkd_loss_fn(graphdef, teacher_graphdef, beta=beta, temperature=1.5,
                                                       impl=impl)
        loss_sum, metrics = loss_fn(params, batch, teacher)
        out[(impl, beta)] = loss_sum / normalizer(batch)
        out[("metric", impl, beta)] = metrics["gkd/divergence"] - loss_sum
    return out

  out = _run(losses, params, teacher, batch)
  for beta in (0.0, 0.5, 1.0):
    assert float(out[("expected", beta)]) > 0.01
    for impl in ("naive", "chunked"):
      np.testing.assert_allclose(float(out[(impl, beta)]), float(out[("expected", beta)]), rtol=1e-5)
      assert float(out[("metric", impl, beta)]) == 0.0


def test_gkd_loss_is_zero_with_no_gradient_when_the_teacher_is_the_student():
  graphdef, params = _params(STUDENT, 0)
  loss_fn, _ = distill.make_gkd_loss_fn(graphdef, graphdef, beta=0.5, temperature=1.0, impl="chunked")
  (loss_sum, _), grads = _run(jax.value_and_grad(loss_fn, has_aux=True), params, _batch(), params)
  assert abs(float(loss_sum)) < 1e-5
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) < 1e-5


def test_gkd_loss_sharded_equals_one_device(monkeypatch):
  """8 rows x 7 tokens over a (data 4, fsdp 2) mesh: the tiled divergence runs per token shard (shard_map), and
  the loss and the student's gradients equal the one-device ones."""
  from jaxpost.kernels import divergence
  calls = []
  sharded_fn = divergence.token_divergence_sharded
  monkeypatch.setattr(divergence, "token_divergence_sharded", lambda *a, **k: calls.append(1) or sharded_fn(*a, **k))
  graphdef, params = _params(STUDENT, 0)
  teacher_graphdef, teacher = _params(TEACHER, 1)
  batch = {k: np.concatenate([v, v, v[:2]]) for k, v in _batch().items()}  # 8 rows
  loss_fn, _ = distill.make_gkd_loss_fn(graphdef, teacher_graphdef, beta=0.5, temperature=1.0, impl="chunked")
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (one, _), one_grads = _run(grad_fn, params, batch, teacher)
  mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh):
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    (sharded, _), grads = _run(grad_fn, params, jax.device_put(batch, rows), teacher)
  assert calls  # The per-shard path ran (traced once).
  np.testing.assert_allclose(float(sharded), float(one), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(one_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_teacher_stats_reports_the_reverse_kl_and_the_teachers_logps():
  """teacher_logps are the teacher's log-probs of the targets; distill/reverse_kl the masked mean of
  KL(p_s || p_t) from full logits; agreement the fraction of loss tokens where both argmaxes agree."""
  graphdef, params = _params(STUDENT, 0)
  teacher_graphdef, teacher = _params(TEACHER, 1)
  batch = _batch()

  def stats(batch, params, teacher):
    out, metrics = distill.teacher_stats(batch, params, teacher, graphdef=graphdef, teacher_graphdef=teacher_graphdef,
                                         temperature=1.0, impl="chunked", logprob_impl="naive")
    return out, metrics, _full_logps(graphdef, params, batch, 1.0), _full_logps(teacher_graphdef, teacher, batch, 1.0)

  out, metrics, lp_s, lp_t = _run(stats, batch, params, teacher)
  mask = batch["loss_mask"].astype(bool)
  np.testing.assert_allclose(out["teacher_logps"], np.take_along_axis(lp_t, batch["targets"][..., None], -1)[..., 0],
                             atol=1e-5)
  reverse = np.sum(np.exp(lp_s) * (lp_s - lp_t), axis=-1)
  np.testing.assert_allclose(float(metrics["distill/reverse_kl"]), float(reverse[mask].mean()), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["distill/teacher_logp"]), float(out["teacher_logps"][mask].mean()),
                             rtol=1e-6)
  agree = (np.argmax(lp_s, -1) == np.argmax(lp_t, -1))[mask].mean()
  np.testing.assert_allclose(float(metrics["distill/argmax_agreement"]), float(agree))


def _config(**distill_fields):
  c = base_config()
  c.algorithm = "distill"
  c.data.train_path = "prompts.jsonl"
  c.distill.teacher = "teacher"
  for k, v in distill_fields.items():
    c.distill[k] = v
  return c


def test_gkd_mixes_dataset_steps_at_one_minus_lambda_seeded_by_step():
  c = _config(loss="gkd", on_policy_fraction=0.25)
  steps = [distill.dataset_step(c, s) for s in range(1, 401)]
  assert steps == [distill.dataset_step(c, s) for s in range(1, 401)]  # A resumed run decides the same.
  assert set(steps) == {"", "answer"}
  assert 0.7 < steps.count("answer") / 400 < 0.8  # 1 - lambda = 0.75 (binomial sd 0.022)
  assert not any(distill.dataset_step(_config(loss="gkd"), s) for s in range(1, 50))  # lambda = 1
  assert not any(distill.dataset_step(_config(), s) for s in range(1, 50))  # reverse_kl


def test_reply_tokens_are_the_conversation_after_the_prompt(tmp_path):
  from jaxpost import tokenizers
  from jaxpost.data.jsonl import DataError
  from jaxpost.data.prompts import load_prompts, reply_tokens
  import os
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  tokenizer = tokenizers.load(os.path.join(root, "assets", "arithmetic", "tokenizer.model"))
  path = tmp_path / "p.jsonl"
  path.write_text('{"prompt": "what is 2 + 3?", "answer": "5"}\n{"prompt": "what is 1 + 1?", "tests": "x"}\n')
  prompts, _ = load_prompts([str(path)], tokenizer, max_prompt_len=64)
  reply, cut = reply_tokens(prompts[0], "answer", tokenizer, max_tokens=8)
  whole, _ = tokenizer.encode_chat([{"role": "user", "content": "what is 2 + 3?"},
                                    {"role": "assistant", "content": "5"}])
  assert not cut and prompts[0]["tokens"] + reply == whole.tolist()[:len(prompts[0]["tokens"]) + len(reply)]
  assert reply[-1] in tokenizer.chat_stop_ids and tokenizer.decode(reply[:-1]).strip() == "5"
  assert reply_tokens(prompts[0], "answer", tokenizer, max_tokens=1) == (reply[:1], True)
  with pytest.raises(DataError, match=rf"^{path}:2: no 'answer' string"):
    reply_tokens(prompts[1], "answer", tokenizer, max_tokens=8)


@pytest.mark.parametrize("fields,key", [
    ({"loss": "gkd", "reward_weight": 1.0}, "distill.reward_weight"),
    ({"on_policy_fraction": 0.5}, "distill.on_policy_fraction"),
    ({"beta": 1.5}, "distill.beta"),
    ({"loss": "jsd"}, "distill.loss"),
    ({"teacher": ""}, "distill.teacher")])
def test_config_errors_name_the_key(fields, key):
  with pytest.raises(ConfigError, match=rf"^config\.{key}[:=]"):
    validate(_config(**fields))
  validate(_config())  # The defaults (with a teacher and prompts) are valid.
