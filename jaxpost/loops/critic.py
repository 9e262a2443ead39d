"""The learned value model (critic) that an algorithm with `critic=True` (PPO) trains beside the policy.

It is a transformer with a scalar head whose score at column t estimates V(prefix up to t). It starts
from a reward model's workdir (`ppo.value_init`, taking that model's own architecture), or from the
policy's starting weights (same source: HF path, init_checkpoint or seed) with a fresh scalar head.
"""
from __future__ import annotations

import dataclasses

import jax

from jaxpost import checkpoint as checkpoint_lib
from jaxpost import state as state_lib
from jaxpost import workdir as workdir_lib
from jaxpost.models import ModelConfig


def value_config(config, policy_cfg: ModelConfig) -> ModelConfig:
  """The critic's architecture: the reward model's (ppo.value_init), else the policy's with a scalar head."""
  if config.ppo.value_init:
    return dataclasses.replace(workdir_lib.read_model_record(config.ppo.value_init)[0], head="scalar", lora_rank=0)
  return dataclasses.replace(policy_cfg, head="scalar")


def initial_params(config, value_cfg: ModelConfig, shardings, mesh, log) -> dict:
  """The critic's starting params, created sharded."""
  if config.ppo.value_init:
    _, shapes, _ = state_lib.abstract_model(value_cfg)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    log(f"critic initialised from the reward model in {config.ppo.value_init}")
    return checkpoint_lib.restore_params(config.ppo.value_init, abstract, source="config.ppo.value_init")
  backbone_cfg = dataclasses.replace(value_cfg, head="lm", tie_embeddings=True)
  backbone = workdir_lib.base_params(backbone_cfg, state_lib.param_shardings(backbone_cfg, mesh), mesh,
                                     hf_path=config.model.path, init_checkpoint=config.model.init_checkpoint,
                                     seed=config.train.seed, log=lambda _: None)
  head = state_lib.init_params(value_cfg, mesh, config.train.seed + 7)
  return {**{k: v for k, v in backbone.items() if k != "unembed"}, "score_w": head["score_w"],
          "score_b": head["score_b"]}
