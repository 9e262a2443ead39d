"""LoRA and QLoRA through the offline loop: only adapters train and are checkpointed, resume equals an
uninterrupted run, the quantised base trains, and both export forms load in transformers / peft with
the trained model's logits."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import checkpoint, export, state
from jaxpost import workdir as workdir_lib
from jaxpost.loops import offline
from jaxpost.models import lora

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The base's random init with the same values, compiled cheaply (conftest): the runs, their resume and the
# export each rebuild it.
pytestmark = pytest.mark.usefixtures("fast_init_params")
ASSETS = os.path.join(ROOT, "assets", "arithmetic")


def _config(steps=6, **lora_fields):
  from jaxpost.config import base_config
  c = base_config()
  c.tokenizer.path = os.path.join(ASSETS, "tokenizer.model")
  c.data.train_path = os.path.join(ASSETS, "sft_train.jsonl")
  c.data.seq_len = 48
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 32, 1, 64
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 2, 1, 16
  c.train.steps, c.train.batch_size, c.train.log_every = steps, 8, 1
  c.train.checkpoint_every, c.train.keep_checkpoints, c.train.progress = 3, 5, False
  c.optim.lr, c.optim.warmup_steps = 1e-2, 0
  c.lora.rank, c.lora.alpha = 4, 8.0
  for k, v in lora_fields.items():
    c.lora[k] = v
  return c


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _saved_state(workdir, step):
  import orbax.checkpoint as ocp
  return ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(workdir, "checkpoints", str(step), "state")))


def test_only_adapters_train_resume_equals_uninterrupted_and_exports_load(tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  offline.run(_config(), straight)
  saved = _saved_state(straight, 6)
  # The checkpoint holds adapters only: A (in, 4) and B (4, out) for q, k, v, o, gate, up, down.
  names = {jax.tree_util.keystr(p).split("'")[-2] for p, _ in jax.tree_util.tree_leaves_with_path(saved["params"])}
  assert names == {f"{w}_lora_{x}" for w in lora.TARGETS for x in "ab"}
  n_adapter = sum(x.size for x in jax.tree.leaves(saved["params"]))
  # Adam keeps two moments per trained value (+ scalar counts): optimizer state scales with the adapters.
  n_opt = sum(x.size for x in jax.tree.leaves(saved["opt_state"]) if x.size > 1)
  assert n_opt == 2 * n_adapter
  b = [x for p, x in jax.tree_util.tree_leaves_with_path(saved["params"]) if "q_lora_b" in jax.tree_util.keystr(p)]
  assert np.abs(b[0]).max() > 0  # B moved off its zero init.

  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  os.remove(os.path.join(resumed, "metrics.jsonl"))
  offline.run(_config(), resumed)  # The base is rebuilt (same seed) and the adapters restored.
  a, r = _losses(straight), _losses(resumed)
  assert [a[s] for s in (4, 5, 6)] == [r[s] for s in (4, 5, 6)]
  for x, y in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(_saved_state(resumed, 6)["params"])):
    np.testing.assert_array_equal(x, y)
  _check_exports(straight, tmp_path)


def test_qlora_int8_trains(tmp_path):
  summary = offline.run(_config(steps=12, base_quant="int8", base_dtype="bfloat16"), str(tmp_path))
  losses = _losses(str(tmp_path))
  assert np.mean([losses[s] for s in (10, 11, 12)]) < losses[1] - 0.3, losses
  assert summary["step"] == 12


def _check_exports(workdir, tmp_path):
  """The merged export loads in transformers and the PEFT adapter in peft, with the trained model's logits."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  model_cfg, record = workdir_lib.read_model_record(workdir)
  graphdef, shapes, _ = state.abstract_model(model_cfg)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  adapters = checkpoint.restore_params(workdir, jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), lora.split(shapes)[1]))
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=jax.devices()[:1])
  base = workdir_lib.base_params(model_cfg, state.param_shardings(model_cfg, mesh), mesh, hf_path="", init_checkpoint="",
                            seed=record["seed"], log=lambda _: None)
  tokens = np.random.RandomState(0).randint(0, model_cfg.vocab_size, (2, 11))
  forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))  # One compile, not op by op.
  want = np.asarray(forward(lora.join(base, adapters), jnp.asarray(tokens, jnp.int32)))

  export.export(workdir, str(tmp_path / "merged"), merge_lora=True)
  merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).float().eval()
  export.export(workdir, str(tmp_path / "adapter"))
  assert {"adapter_config.json", "adapter_model.safetensors", "base"} <= set(os.listdir(tmp_path / "adapter"))
  base_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "adapter" / "base")).float()
  with_adapter = peft.PeftModel.from_pretrained(base_model, str(tmp_path / "adapter")).eval()
  with torch.no_grad():
    np.testing.assert_allclose(merged(torch.tensor(tokens)).logits.numpy(), want, atol=1e-4)
    np.testing.assert_allclose(with_adapter(torch.tensor(tokens)).logits.numpy(), want, atol=1e-4)
