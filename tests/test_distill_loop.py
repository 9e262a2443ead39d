"""Distillation end to end: a student distilled on-policy from a fixed teacher of another size (a workdir) moves
its greedy answers towards the teacher's; GKD with a teacher in a Hugging Face directory mixes dataset and
sampled steps; a teacher with another vocabulary is a one-line error."""
import json
import os

import jax
import numpy as np
import pytest

from jaxpost import mesh as mesh_lib
from jaxpost import sampling
from jaxpost import state as state_lib
from jaxpost import tokenizers
from jaxpost import workdir as workdir_lib
from jaxpost.algorithms import distill
from jaxpost.config import ConfigError, base_config, validate
from jaxpost.loops import online
from jaxpost.loops import teacher as teacher_lib
from jaxpost.models import ModelConfig, hf
from jaxpost.tasks import arithmetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "assets", "arithmetic", "tokenizer.model")


def _random_teacher(path, vocab_size, seed=7):
  """A fixed random model, saved as a Hugging Face directory."""
  cfg = ModelConfig(vocab_size=vocab_size, d_model=48, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16,
                    mlp_dim=96)
  _, shapes, _ = state_lib.abstract_model(cfg)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype) if len(s.shape) == 1
                        else (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  hf.save_pretrained(cfg, str(path), params)
  return cfg, params


def _sft_teacher(workdir, steps=40):
  """A teacher of another size (wider, deeper than the student): SFT from scratch on the arithmetic
  conversations for a few steps, enough for replies of digits closed by <|im_end|>."""
  from jaxpost.loops import offline
  c = base_config()
  c.tokenizer.path = TOKENIZER
  c.data.train_path = os.path.join(ROOT, "assets", "arithmetic", "sft_train.jsonl")
  c.data.seq_len = 48
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 48, 2, 96
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 2, 2, 16
  c.train.steps, c.train.batch_size, c.train.log_every, c.train.progress = steps, 16, steps, False
  c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 1e-2, 0, "constant"
  offline.run(c, str(workdir))
  cfg, record = workdir_lib.read_model_record(str(workdir))
  return cfg, workdir_lib.load_trained(str(workdir), cfg, record, mesh_lib.make_mesh(c, jax.devices()[:1]))


def _config(tmp_path, teacher):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in arithmetic.prompt_records(arithmetic.TRAIN_PAIRS[:64])))
  c = base_config()
  c.algorithm = "distill"
  c.distill.teacher = str(teacher)
  c.tokenizer.path = TOKENIZER
  c.data.train_path = str(prompts)
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 32, 1, 64
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 2, 1, 16
  c.train.steps, c.train.log_every, c.train.progress = 30, 1, False
  c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 1e-2, 0, "constant"
  c.rl.prompts_per_step, c.rl.num_generations, c.rl.max_prompt_len, c.rl.max_new_tokens = 8, 2, 32, 4
  c.rl.policy_loss, c.rl.aggregation = "reinforce", "token_mean"
  validate(c, num_devices=8)
  return c


def _greedy(cfg, params, prompts):
  graphdef, _, _ = state_lib.abstract_model(cfg)
  out = sampling.generate(graphdef, params, prompts, sampling.SamplingConfig(max_new_tokens=4, temperature=0.0))
  return out.tokens  # (P, 4): no stop tokens, every row runs to the budget


def test_on_policy_distillation_moves_greedy_answers_to_the_teachers(tmp_path):
  tokenizer = tokenizers.load(TOKENIZER)
  teacher_cfg, teacher_params = _sft_teacher(tmp_path / "teacher")
  c = _config(tmp_path, tmp_path / "teacher")
  workdir = str(tmp_path / "run")
  online.run(c, workdir)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if '"loss"' in line]
  first, last = records[0], records[-1]
  for key in ("distill/reverse_kl", "distill/teacher_logp", "distill/argmax_agreement", "reward/mean"):
    assert key in first, key
  # The exact per-token reverse KL on the samples falls, the teacher likes the samples more, the argmaxes agree
  # (seen: KL 7.09 -> 0.79, teacher log-prob -10.8 -> -2.5, agreement 0 -> 0.66 over the 30 steps).
  assert np.mean([r["distill/reverse_kl"] for r in records[-3:]]) < 0.5 * first["distill/reverse_kl"], records
  assert last["distill/teacher_logp"] > first["distill/teacher_logp"] + 0.5
  assert last["distill/argmax_agreement"] > first["distill/argmax_agreement"] + 0.2

  # Greedy answers on 16 prompts: the fraction of tokens equal to the teacher's (seen: 0 -> 0.73).
  prompts = [tokenizer.encode_chat([{"role": "user", "content": f"what is {a} + {b}?"}], add_generation_prompt=True)[0]
             .tolist() for a, b in arithmetic.TRAIN_PAIRS[:16]]
  cfg, record = workdir_lib.read_model_record(workdir)
  one = mesh_lib.make_mesh(c, jax.devices()[:1])
  start = state_lib.init_params(cfg, one, c.train.seed)  # The run's own starting point (same seed).
  teacher = _greedy(teacher_cfg, teacher_params, prompts)
  before = (_greedy(cfg, start, prompts) == teacher).mean()
  after = (_greedy(cfg, workdir_lib.load_trained(workdir, cfg, record, one), prompts) == teacher).mean()
  assert after > before + 0.3, (before, after)


def test_gkd_mixes_dataset_and_sampled_steps(tmp_path):
  """GKD from a teacher in a Hugging Face directory, lambda = 0.5: the steps trained on the records' answers are
  exactly distill.dataset_step's, and the loss is the divergence."""
  tokenizer = tokenizers.load(TOKENIZER)
  _random_teacher(tmp_path / "teacher", tokenizer.vocab_size)
  c = _config(tmp_path, tmp_path / "teacher")
  c.train.steps = 4
  c.distill.loss, c.distill.on_policy_fraction, c.distill.beta = "gkd", 0.5, 0.5
  c.rl.policy_loss, c.rl.aggregation = "ppo_clip", "seq_mean_token_mean"  # (unused by gkd: their defaults)
  validate(c, num_devices=8)
  online.run(c, str(tmp_path / "gkd"))
  records = [json.loads(line) for line in open(tmp_path / "gkd" / "metrics.jsonl") if '"loss"' in line]
  expected = [float(bool(distill.dataset_step(c, s))) for s in range(1, 5)]
  assert [r["dataset_step"] for r in records] == expected and 0 < sum(expected) < 4, expected
  for r in records:
    np.testing.assert_allclose(r["loss"], r["gkd/divergence"], rtol=1e-6)
    assert r["loss"] > 0


def test_a_teacher_with_another_vocabulary_is_a_one_line_error(tmp_path):
  _random_teacher(tmp_path / "teacher", 29)
  with pytest.raises(ConfigError, match=r"^config\.distill\.teacher=.*: the teacher's vocabulary has 29 entries, "
                                        r"the student's 105; .* same tokenizer$"):
    teacher_lib.load(str(tmp_path / "teacher"), None, vocab_size=105)
  with pytest.raises(ConfigError, match=r"^config\.distill\.teacher='.*nowhere': does not exist; expected"):
    teacher_lib.load(str(tmp_path / "nowhere"), None, vocab_size=105)
