"""A random HF Llama (saved by transformers, with a tokenizer.json and a Llama-3 chat template) trains
for a few SFT steps from the command line and exports back to a directory transformers loads, with
logits equal to the trained jaxpost params'."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tokenizers"))

from hf_fixtures import save_folder  # noqa: E402
from jaxpost import checkpoint, export, state  # noqa: E402
from jaxpost import workdir as workdir_lib  # noqa: E402
from jaxpost.models import Transformer  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def _run(*args):
  """stdout + stderr of `python -m args` (stdout first). Cheaper XLA:CPU codegen (as test_bench_train.py's
  subprocess): the runs' compiles are most of their time."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
         "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
  out = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout + out.stderr


def test_sft_from_hf_directory_then_export(tmp_path):
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  tok = save_folder(hf_dir, "llama3")
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
  transformers.AutoModelForCausalLM.from_config(config).float().save_pretrained(str(hf_dir))
  workdir, out_dir = tmp_path / "run", tmp_path / "export"

  log = _run("jaxpost.train", "--config=configs/sft_hf.py", f"--config.model.path={hf_dir}", f"--workdir={workdir}",
             "--config.train.steps=3", "--config.train.log_every=1", "--config.data.seq_len=128",
             "--config.optim.lr=1e-3", "--config.optim.warmup_steps=0", "--config.train.progress=false")
  assert "loaded llama weights" in log and "saved checkpoint step 3" in log
  export.export(str(workdir), str(out_dir))  # (The CLI wraps this; in-process saves a JAX start-up.)
  assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(os.listdir(out_dir))

  exported = transformers.AutoModelForCausalLM.from_pretrained(str(out_dir)).float().eval()
  assert exported.config.bos_token_id == tok.bos_token_id  # Fields jaxpost does not model survive.
  original = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).float().eval()
  tokens = np.random.RandomState(0).randint(0, len(tok), (2, 10))
  with torch.no_grad():
    hf_logits = exported(torch.tensor(tokens)).logits.numpy()
    before = original(torch.tensor(tokens)).logits.numpy()
  model_cfg, _ = workdir_lib.read_model_record(str(workdir))
  graphdef, shapes, _ = state.abstract_model(model_cfg)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params = checkpoint.restore_params(str(workdir), jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes))
  forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))  # One compile, not op by op.
  ours = np.asarray(forward(params, jnp.asarray(tokens, jnp.int32)))
  np.testing.assert_allclose(hf_logits, ours, atol=1e-4)
  assert np.abs(hf_logits - before).max() > 1e-3  # The 3 steps really changed the weights.
  assert isinstance(nnx.merge(graphdef, params), Transformer)

  # `jaxpost.generate` on the exported HF directory: greedy text equals transformers' greedy generate.
  prompt = "12+7="
  env_out = _run("jaxpost.generate", f"--model={out_dir}", "--prompt", prompt, "--max_new_tokens=5",
                 "--temperature=0")
  ids = tok(prompt, return_tensors="pt").input_ids
  with torch.no_grad():
    ref = exported.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
  ref = [t for t in ref.tolist() if t != tok.eos_token_id]
  assert env_out.splitlines()[0] == tok.decode(ref)


def test_export_cli_names_a_missing_workdir(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "jaxpost.export", f"--workdir={tmp_path / 'nope'}",
                        f"--out={tmp_path / 'out'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nope' / 'model.json'}: not found (is " \
                                                f"{tmp_path / 'nope'} a jaxpost training workdir?)"
