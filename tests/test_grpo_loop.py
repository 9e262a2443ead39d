"""The online GRPO loop end to end on a toy reward, and the GRPO step sharded == single device."""
import json
import os

import jax
import numpy as np

from jaxpost import mesh as mesh_lib, optim, state as state_lib, step as step_lib
from jaxpost.algorithms import grpo
from jaxpost.config import base_config
from jaxpost.loops import online
from jaxpost.models import ModelConfig
from jaxpost.tasks import arithmetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def starts_with_digit(completion: str, example: dict) -> float:
  """Toy reward a random model can already earn sometimes (about 10/105 of first tokens are digits)."""
  return float(completion[:1].isdigit())


def _toy_config(tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in arithmetic.prompt_records(arithmetic.TRAIN_PAIRS[:64])))
  c = base_config()
  c.algorithm = "grpo"
  c.tokenizer.path = os.path.join(ROOT, "assets", "arithmetic", "tokenizer.model")
  c.data.train_path = str(prompts)
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 32, 1, 64
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 2, 1, 16
  c.train.steps, c.train.log_every, c.train.progress = 12, 1, False
  c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 1e-2, 0, "constant"
  c.rl.prompts_per_step, c.rl.num_generations, c.rl.max_prompt_len, c.rl.max_new_tokens = 8, 8, 32, 3
  c.rl.beta, c.rl.old_logps = 0.1, "recompute"
  c.rl.reward_fns = "test_grpo_loop:starts_with_digit"  # A user function by import path.
  return c


def test_grpo_raises_a_toy_reward_and_starts_on_policy(tmp_path):
  c = _toy_config(tmp_path)
  online.run(c, str(tmp_path / "run"))
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  first = records[0]
  assert first["step"] == 1
  # First update of an on-policy batch: the policy is its own behaviour and reference policy.
  np.testing.assert_allclose(first["ratio"], 1.0, atol=1e-6)
  assert first["clip_frac"] == 0.0
  np.testing.assert_allclose(first["kl"], 0.0, atol=1e-6)
  rewards = [r["reward/mean"] for r in records]
  assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.2, rewards
  for key in ("reward/std", "entropy", "response_length/mean", "loss", "grad_norm", "rollout_time",
              "train_time", "tokens_per_sec"):
    assert key in first
  assert "accuracy" not in first  # The toy reward is shaping, not a verifier: it defines no accuracy.


def test_grpo_with_lora_uses_the_base_as_reference(tmp_path):
  """lora.rank=8: only adapters train; the reference is the base with adapters disabled, so the KL is
  0 on the first update (B = 0: policy == base) and positive once the adapters have moved."""
  c = _toy_config(tmp_path)
  c.train.steps, c.lora.rank = 3, 8
  online.run(c, str(tmp_path / "run"))
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if '"kl"' in line]
  np.testing.assert_allclose(records[0]["kl"], 0.0, atol=1e-6)
  assert records[-1]["kl"] > 1e-4


def _batch(rows=8, seq=12, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 29, (rows, seq + 1)).astype(np.int32)
  mask = np.zeros((rows, seq), np.int32)
  mask[:, 5:10] = 1
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask,
          "positions": np.tile(np.arange(seq, dtype=np.int32), (rows, 1)), "segment_ids": np.ones((rows, seq), np.int32),
          "advantages": rng.normal(size=rows).astype(np.float32),
          "old_logps": (-3.4 + 0.1 * rng.normal(size=(rows, seq))).astype(np.float32),
          "ref_logps": (-3.4 + 0.1 * rng.normal(size=(rows, seq))).astype(np.float32)}


def test_grpo_step_sharded_equals_single_device():
  """ppo_clip + k3 KL (beta 0.05): 2 steps on data=2 x fsdp=2 x tensor=2 == 1 device (f32, rtol 1e-5)."""
  model = ModelConfig(vocab_size=29, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
  results = []
  graphdef, shapes, _ = state_lib.abstract_model(model)
  rng = np.random.default_rng(0)  # Host values: the model's random init compiles for seconds per mesh.
  values = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype) * 0.2, shapes)
  for shape, n in (((1, 1, 1), 1), ((2, 2, 2), 8)):
    mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor"), devices=jax.devices()[:n],
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    tx, schedule = optim.make_optimizer(base_config().optim, 2)
    ss = state_lib.state_shardings(shapes, state_lib.param_shardings(model, mesh), tx, mesh)
    state = state_lib.create_state(jax.device_put(values, state_lib.param_shardings(model, mesh)), tx, ss)
    loss_fn, normalizer = grpo.make_loss_fn(graphdef, beta=0.05, kl_estimator="k3")
    step = jax.jit(step_lib.make_train_step(loss_fn, normalizer, tx, schedule),
                   in_shardings=(ss, mesh_lib.batch_sharding(mesh), None),
                   out_shardings=(ss, mesh_lib.replicated(mesh)))
    losses = []
    with jax.set_mesh(mesh):
      for i in range(2):
        state, metrics = step(state, _batch(seed=i), None)
        losses.append((float(metrics["loss"]), float(metrics["kl"]), float(metrics["clip_frac"])))
    results.append((losses, jax.device_get(state["params"])))
  (l1, p1), (l8, p8) = results
  np.testing.assert_allclose(l1, l8, rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_grpo_with_kl_resumed_equals_uninterrupted(tmp_path):
  """beta 0.1, full fine-tuning: 4 steps straight vs 2 steps + restart from the step-2 checkpoint + 2
  steps. The KL reference is the starting policy in both (reloaded from its source on resume, here the
  seeded init), so steps 3-4 log the same kl and loss, bitwise on CPU. (With the resumed params as the
  reference, as before, step 3's kl restarts near 0 while the straight run's has grown.)"""
  import shutil
  c = _toy_config(tmp_path)
  c.train.steps, c.train.checkpoint_every = 4, 2
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  online.run(c, straight)
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))  # As if the run died after step 2's save.
  os.remove(os.path.join(resumed, "metrics.jsonl"))
  online.run(c, resumed)

  def logged(workdir):
    return {r["step"]: (r["kl"], r["loss"]) for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
            if "kl" in r}
  a, b = logged(straight), logged(resumed)
  assert sorted(b) == [3, 4] and a[3][0] > 1e-4  # The policy has moved from the reference by step 3.
  assert [a[3], a[4]] == [b[3], b[4]]
