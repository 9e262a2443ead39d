"""The algorithm registry: the loops, train.py and config.py dispatch through it (jaxpost/algorithms/)."""
import os

import numpy as np
import pytest

from jaxpost import config as config_lib
from jaxpost.algorithms import base, registry, sft

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", sorted(registry.ALGORITHMS))
def test_every_algorithm_has_a_tiny_config_that_validates(name):
  """Each registered algorithm ships configs/<name>_tiny.py, and its head is what validation asks for."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", f"{name}_tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert config.algorithm == name
  config_lib.validate(config)
  config.model.head = "lm" if registry.get(name).head == "scalar" else "scalar"
  with pytest.raises(config_lib.ConfigError, match=r"^config\.model\.head: algorithm"):
    config_lib.validate(config)


def test_an_algorithm_registered_by_name_runs_through_the_loop(tmp_path, monkeypatch, fast_init_params):
  """Adding an algorithm = one record in the registry: a toy 'sft_marked' (SFT's loss plus a metric whose
  sum is 7 x the normalizer, so its logged mean is exactly 7) validates and trains through the offline
  loop with no other change; the marker in metrics.jsonl shows the loop ran the registered loss. (The init
  is conftest's fast_init_params: the same values, compiled cheaply.)"""
  import json
  from jaxpost.loops import offline

  def make_loss(config, models):
    loss_fn, normalizer = sft.make_loss_fn(models.graphdef, models.model_cfg.logprob_impl)

    def marked(params, batch, frozen=None):
      loss_sum, metrics = loss_fn(params, batch, frozen)
      return loss_sum, {**metrics, "marker": 7.0 * normalizer(batch)}
    return marked, normalizer

  toy = base.Algorithm(name="sft_marked", loop="offline", data=lambda config: "sequences", make_loss=make_loss)
  monkeypatch.setitem(registry.ALGORITHMS, "sft_marked", toy)
  c = config_lib.base_config()
  c.algorithm, c.tokenizer.path = "sft_marked", os.path.join(ROOT, "assets", "arithmetic", "tokenizer.model")
  c.data.train_path, c.data.seq_len = os.path.join(ROOT, "assets", "arithmetic", "sft_train.jsonl"), 32
  c.model.d_model, c.model.num_layers, c.model.mlp_dim, c.model.head_dim = 16, 1, 32, 8
  c.train.steps, c.train.progress = 1, False
  config_lib.validate(c)
  offline.run(c, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    logged = next(r for r in map(json.loads, f) if "loss" in r)
  assert logged["marker"] == 7.0 and np.isfinite(logged["loss"])


def test_unknown_algorithm_is_a_one_line_error():
  config = config_lib.base_config()
  config.algorithm = "rlhf"
  with pytest.raises(config_lib.ConfigError, match=r"^config\.algorithm: 'rlhf' is not one of sft, rm, dpo, grpo, ppo, distill$"):
    config_lib.validate(config)
