"""What the rest of jaxpost knows of an algorithm: one small record per algorithm, registered by name.

Every algorithm module (sft, rm, dpo, grpo, ppo) ends with an `ALGORITHM = Algorithm(...)` built from its
own functions; `jaxpost.algorithms.registry` collects them. The loops, `train.py` and `config.py` read
only these fields, never the algorithm's name:

  loop       "offline" (batches from files: SFT, RM, DPO family) or "online" (batches from sampling the
             live policy: GRPO family, PPO)
  head       the output head it trains: "lm" (next-token logits) or "scalar" (a reward model)
  make_loss  make_loss(config, models) -> (loss_fn(params, batch, frozen) -> (loss_sum, metric_sums),
             normalizer(batch) -> weight); the train step divides both by the weight of the global batch
  validate   validate(config, checks): the algorithm's own config rules (`checks` raises the one-line
             ConfigError naming the key; algorithms never import config.py)
  reference  reference(config) -> bool: whether the run keeps the frozen starting policy
Offline only:
  data       data(config) -> "sequences" | "pairs" | "unpaired": the record layout of its JSONL files
  eval_accuracy  the metric (a mean over held-out pairs) reported as eval/accuracy, if any
Online only (one step = rollout -> score -> prepare_batch -> updates):
  critic     whether the trained params are {"policy", "value"} (a learned value model beside the policy)
  keep_groups, shape_rewards   host-side rollout rules (DAPO's dynamic sampling and overlong shaping)
  prepare_batch  prepare_batch(config, models) -> fn(batch, rollout, params, frozen) -> (batch, metrics), pure
             and jitted by the loop: advantages (and value targets) from the scored rollout (frozen: the
             teacher's params, or None)
  teacher    teacher(config) -> str: a frozen teacher model the loop loads (an HF directory or a jaxpost workdir;
             "" = none). Its params reach teacher_stats, prepare_batch and the loss as `frozen`.
  teacher_stats  teacher_stats(config, models) -> fn(batch, policy_params, teacher_params) -> (batch, metrics):
             the teacher's view of the rollout rows (e.g. its log-probs of the sampled tokens), before
             prepare_batch
  dataset_step  dataset_step(config, step) -> str: "" when step's rows are samples; else the prompt records'
             field whose text is the reply the step trains on instead (GKD's off-policy steps)
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import numpy as np


class Models(NamedTuple):
  """The compiled structure a loss needs: the policy's (or reward model's) graphdef and config, under
  PPO the critic's graphdef, and under distillation the teacher's graphdef and config."""
  graphdef: object
  model_cfg: object
  value_graphdef: object = None
  teacher_graphdef: object = None
  teacher_cfg: object = None


def _no_rules(config, checks) -> None:
  del config, checks


def _never(config) -> bool:
  del config
  return False


def no_teacher(config) -> str:
  del config
  return ""


def never_dataset(config, step: int) -> str:
  del config, step
  return ""


def keep_all_groups(config, rewards: np.ndarray) -> np.ndarray:
  """rewards (P, G) -> keep (P,) bool: every group."""
  del config
  return np.ones(rewards.shape[0], bool)


def unshaped(config, rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """rewards (R,) as scored."""
  del config, lengths
  return rewards


@dataclasses.dataclass(frozen=True)
class Algorithm:
  name: str
  loop: str
  make_loss: Callable
  head: str = "lm"
  validate: Callable = _no_rules
  reference: Callable = _never
  data: Callable | None = None
  eval_accuracy: str | None = None
  critic: bool = False
  keep_groups: Callable = keep_all_groups
  shape_rewards: Callable = unshaped
  prepare_batch: Callable | None = None
  teacher: Callable = no_teacher
  teacher_stats: Callable | None = None
  dataset_step: Callable = never_dataset

  def __post_init__(self):
    if self.loop not in ("offline", "online"):
      raise ValueError(f"algorithm {self.name}: loop must be offline or online, got {self.loop!r}")
    if (self.loop == "online") != (self.prepare_batch is not None):
      raise ValueError(f"algorithm {self.name}: prepare_batch is needed by online algorithms only")
    if (self.loop == "offline") != (self.data is not None):
      raise ValueError(f"algorithm {self.name}: data is needed by offline algorithms only")
