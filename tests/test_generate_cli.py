"""`python -m jaxpost.generate` on a workdir trained for 2 steps: it streams what the sampler samples."""
import importlib.util
import io
import os
import subprocess
import sys

import jax
import pytest

from jaxpost import generate, sampling, tokenizers
from jaxpost.loops import offline
from jaxpost.models import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "assets", "arithmetic")

TINY_CONFIG = f'''
from jaxpost.config import base_config

def get_config(arg=""):
  c = base_config()
  c.tokenizer.path = {os.path.join(ASSETS, "tokenizer.model")!r}
  c.data.train_path = {os.path.join(ASSETS, "sft_train.jsonl")!r}
  c.data.seq_len = 48
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 32, 1, 64
  c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 2, 1, 16
  c.train.steps, c.train.batch_size, c.train.progress = 2, 8, False
  return c
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("generate")
  config_path = root / "tiny.py"
  config_path.write_text(TINY_CONFIG)
  spec = importlib.util.spec_from_file_location("tiny_generate_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  offline.run(config, str(root / "run"))
  return str(root / "run"), str(config_path), config


def _greedy_reply(workdir, config, prompt, chat):
  """What the CLI should print: the greedy completion (up to the stop token) of the same params."""
  tokenizer = tokenizers.load(config.tokenizer.path)
  model_cfg = ModelConfig.from_config(config.model, vocab_size=tokenizer.vocab_size)
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=jax.devices()[:1])
  graphdef, params = generate.load_params(workdir, model_cfg, mesh)
  ids, stop = generate.encode_prompt(prompt, tokenizer, chat)
  cfg = sampling.SamplingConfig(max_new_tokens=6, temperature=0.0, stop_token_ids=stop)
  return graphdef, params, ids, cfg, tokenizer


def test_stream_text_prints_the_greedy_completion(workdir):
  run_dir, _, config = workdir
  graphdef, params, ids, cfg, tokenizer = _greedy_reply(run_dir, config, "12+7=", chat=False)
  out = io.StringIO()
  streamed = generate.stream_text(graphdef, params, ids, cfg, tokenizer, out=out)
  expected = sampling.generate(graphdef, params, [ids], cfg).completions()[0]
  assert streamed == expected
  assert out.getvalue() == tokenizer.decode([t for t in expected if t not in cfg.stop_token_ids])


def test_command_line_chat(workdir):
  run_dir, config_path, config = workdir
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-m", "jaxpost.generate", f"--model={run_dir}", f"--config={config_path}",
                           "--prompt", "What is 12+7?", "--chat", "--max_new_tokens=6", "--temperature=0"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  graphdef, params, ids, cfg, tokenizer = _greedy_reply(run_dir, config, "What is 12+7?", chat=True)
  expected = sampling.generate(graphdef, params, [ids], cfg).completions()[0]
  assert result.stdout.rstrip("\n") == tokenizer.decode([t for t in expected if t not in cfg.stop_token_ids])
  assert "tokens/s" in result.stderr


def test_model_kinds_and_clear_errors(tmp_path):
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text("{}")
  assert generate.model_kind(str(tmp_path / "hf")) == "hf"
  (tmp_path / "half").mkdir()
  (tmp_path / "half" / "model.safetensors").write_bytes(b"")
  with pytest.raises(generate.ModelDirError, match="no config.json"):
    generate.model_kind(str(tmp_path / "half"))
  with pytest.raises(generate.ModelDirError, match="no checkpoints"):
    generate.model_kind(str(tmp_path / "missing"))
