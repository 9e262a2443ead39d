"""A trained reward model (an `algorithm=rm` workdir) as a reward: completions scored batched on device.

  scorer = RewardModelScorer.from_workdir("/tmp/rm_tiny")
  rewards = scorer.score_many(completions, examples)     # (N,) f32, one jitted call per batch of rows
  reward_fns = "rm:/tmp/rm_tiny"                          # in rl.reward_fns (see rewards/registry.py)

Each (example, completion) is rendered exactly as the reward model was trained on it
(`data.preferences`): bos + the example's prompt (`prompt` string or `messages`) as the chat template's
user turn + the completion as the assistant turn, the score read at its closing `<|im_end|>`. Rows are
padded to the batch's longest sequence rounded up to a multiple of 32 (few shapes, few compiles);
`max_len` truncates longer ones. The workdir's `model.json` (written by every run) names the model config
and tokenizer; the latest checkpoint holds the params (`workdir.load_trained`: a LoRA run's adapters
and head are joined to its rebuilt base).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from jaxpost import mesh as mesh_lib
from jaxpost import state as state_lib
from jaxpost import tokenizers
from jaxpost.algorithms import rm
from jaxpost.data import preferences
from jaxpost.data.packing import shift_example

_BUCKET = 32  # Row lengths are rounded up to a multiple of this.


class RewardModelScorer:
  """Scores (completion, example) pairs with a scalar-head model. `__call__` scores one (the registry's
  per-item interface); `score_many` scores a list in batches of `batch_size` rows on device."""

  def __init__(self, graphdef, params, tokenizer, *, mesh, batch_size: int = 64, max_len: int | None = None):
    self.graphdef, self.params, self.tokenizer, self.max_len, self.mesh = graphdef, params, tokenizer, max_len, mesh
    ways = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    self.batch_size = -(-batch_size // ways) * ways  # Rows split evenly over (data, fsdp).
    self._fn = jax.jit(functools.partial(rm.sequence_rewards, graphdef),
                       in_shardings=(None,) + (mesh_lib.batch_sharding(mesh),) * 3,
                       out_shardings=mesh_lib.replicated(mesh))

  @classmethod
  def from_workdir(cls, workdir: str, *, mesh=None, batch_size: int = 64,
                   max_len: int | None = None) -> "RewardModelScorer":
    """Loads `workdir/model.json` and the latest checkpoint's params, sharded over `mesh`: by default the
    context mesh (`jax.set_mesh`, as in the training loops), else every device on the data axis."""
    from jaxpost import workdir as workdir_lib
    model_cfg, record = workdir_lib.read_model_record(workdir)
    if model_cfg.head != "scalar":
      raise ValueError(f"reward model {workdir!r}: head is {model_cfg.head!r}, expected 'scalar'")
    if mesh is None:
      mesh = _context_mesh()
    if mesh is None:
      mesh = jax.make_mesh((len(jax.devices()), 1, 1), ("data", "fsdp", "tensor"),
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)
    graphdef, _, _ = state_lib.abstract_model(model_cfg)
    params = workdir_lib.load_trained(workdir, model_cfg, record, mesh)  # Full params; a LoRA run's joined to its base.
    return cls(graphdef, params, tokenizers.load(record["tokenizer"]), mesh=mesh, batch_size=batch_size,
               max_len=max_len)

  def _inputs(self, completion: str, example: dict) -> np.ndarray:
    """The input ids (L,) of one example + completion, rendered as in training."""
    prompt = example.get("messages") or [{"role": "user", "content": example.get("prompt", "")}]
    tokens, mask = preferences._tokenize(prompt, [{"role": "assistant", "content": completion}],  # noqa: SLF001
                                         self.tokenizer, add_bos=True)
    inputs, _, _ = shift_example(tokens, mask)
    return inputs[:self.max_len] if self.max_len else inputs

  def score_many(self, completions: Sequence[str], examples: Sequence[dict]) -> np.ndarray:
    """(N,) f32 rewards of N completions, each with its prompt record."""
    if len(completions) != len(examples):
      raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    out = []
    for start in range(0, len(completions), self.batch_size):
      rows = [self._inputs(c, e) for c, e in zip(completions[start:start + self.batch_size],
                                                 examples[start:start + self.batch_size])]
      n, t = len(rows), -(-max(len(r) for r in rows) // _BUCKET) * _BUCKET
      inputs = np.zeros([self.batch_size, t], np.int32)
      positions, segment_ids = np.zeros_like(inputs), np.zeros_like(inputs)
      for i, row in enumerate(rows):
        inputs[i, :len(row)], positions[i, :len(row)], segment_ids[i, :len(row)] = row, np.arange(len(row)), 1
      put = lambda x: jax.device_put(x, mesh_lib.batch_sharding(self.mesh))
      out.append(np.asarray(self._fn(self.params, put(inputs), put(positions), put(segment_ids)))[:n])
    return np.concatenate(out).astype(np.float32) if out else np.zeros([0], np.float32)

  def __call__(self, completion: str, example: dict) -> float:
    return float(self.score_many([completion], [example])[0])


def _context_mesh():
  try:
    mesh = jax.sharding.get_mesh()
  except Exception:  # noqa: BLE001 - no concrete context mesh.
    return None
  return None if mesh is None or mesh.empty or not {"data", "fsdp"} <= set(mesh.axis_names) else mesh


@functools.lru_cache(maxsize=4)
def load(workdir: str) -> RewardModelScorer:
  """The scorer of an rm workdir, loaded once per process (the registry's `rm:WORKDIR` entry)."""
  return RewardModelScorer.from_workdir(workdir)
