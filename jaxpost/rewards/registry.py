"""Reward functions by name, weighted combinations, and fault-tolerant batch scoring on the host.

A reward is `fn(completion: str, example: dict) -> float`; `example` is the prompt record (`answer`,
`tests` for code, ...). The config names rewards in one string, comma separated, each item

  NAME                   a registered reward (REWARDS), weight 1:      "math"
  NAME:WEIGHT            with a weight:                                "math:1.0,format:0.2"
  NAME:MODE[:WEIGHT]     a registered mode of it (also in REWARDS):    "math:boxed", "math:gsm8k=0.5"
  MODULE:ATTR            a user function by import path, weight 1:     "my_pkg.rewards:fn"
  MODULE:ATTR=WEIGHT     with a weight (`:WEIGHT` works too):          "my_pkg.rewards:fn=0.5"
  rm:WORKDIR[=WEIGHT]    a trained reward model (algorithm=rm run):    "rm:/tmp/rm_tiny=0.5"

A function with a `score_many(completions, examples) -> [N]` method (the reward model) is called once per
batch, on the calling thread, instead of once per completion.

There is no clash with the import path's colon: a weight is a number and a Python attribute name never
is, so `x:1.5` is a weight and `x:fn` an attribute; `=` always introduces a weight.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from jaxpost.rewards import provenance

RewardFn = Callable[[str, dict], float]
REWARDS: dict[str, RewardFn] = {}


def register(name: str):
  """Decorator: REWARDS[name] = fn."""
  def wrap(fn):
    if name in REWARDS:
      raise ValueError(f"reward {name!r} is already registered ({REWARDS[name]})")
    REWARDS[name] = fn
    return fn
  return wrap


@dataclasses.dataclass(frozen=True)
class WeightedReward:
  name: str
  fn: RewardFn
  weight: float = 1.0


def resolve(ref: str) -> RewardFn:
  """A registered name, `rm:WORKDIR` (a reward model), or `module.path:attr` imported."""
  if ref in REWARDS:
    return REWARDS[ref]
  if ref.startswith("rm:"):
    from jaxpost.rewards import reward_model  # Imports the model stack only when a reward model is named.
    return reward_model.load(ref[len("rm:"):])
  if ":" not in ref:
    raise KeyError(f"unknown reward {ref!r}: registered are {sorted(REWARDS)}; a user function is "
                   f"given as 'module.path:function'")
  module_name, attr = ref.split(":", 1)
  modes = sorted(name.split(":", 1)[1] for name in REWARDS if name.startswith(module_name + ":"))
  if modes:  # A registered name with modes ("math:boxed") wins over importing a module of that name.
    raise KeyError(f"unknown mode {attr!r} of reward {module_name!r}: its modes are {modes}")
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise ImportError(f"reward {ref!r}: cannot import module {module_name!r}: {e}") from e
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise AttributeError(f"reward {ref!r}: {module_name!r} has no attribute {attr!r}")
    obj = getattr(obj, part)
  if not callable(obj):
    raise TypeError(f"reward {ref!r} is not callable: {obj!r}")
  return obj


def _as_weight(text: str) -> float | None:
  try:
    w = float(text)
  except ValueError:
    return None
  return w if math.isfinite(w) else None


def parse_item(item: str) -> WeightedReward:
  """One 'NAME', 'NAME:W', 'MODULE:ATTR' or 'MODULE:ATTR=W' item (see the module docstring)."""
  item = item.strip()
  if "=" in item:
    ref, text = item.rsplit("=", 1)
    weight = _as_weight(text)
    if weight is None:
      raise ValueError(f"reward spec {item!r}: weight {text!r} after '=' is not a number")
  else:
    head, sep, tail = item.rpartition(":")
    weight = _as_weight(tail) if sep else None
    ref = head if weight is not None else item
    weight = 1.0 if weight is None else weight
  ref = ref.strip()
  return WeightedReward(ref, resolve(ref), weight)


def combine(specs, weights: Sequence[float] | None = None) -> list[WeightedReward]:
  """Weighted rewards from a spec string ("math:1.0,format:0.2"), or a list whose items are spec items,
  (name_or_fn, weight) pairs, callables or WeightedRewards; `weights` overrides the weights in order."""
  items = [s for s in specs.split(",") if s.strip()] if isinstance(specs, str) else list(specs)
  out = []
  for item in items:
    if isinstance(item, WeightedReward):
      out.append(item)
    elif isinstance(item, str):
      out.append(parse_item(item))
    elif isinstance(item, tuple) and len(item) == 2:
      ref, w = item
      fn = ref if callable(ref) else resolve(ref)
      out.append(WeightedReward(ref if isinstance(ref, str) else getattr(ref, "__name__", repr(ref)), fn, float(w)))
    elif callable(item):
      out.append(WeightedReward(getattr(item, "__name__", repr(item)), item))
    else:
      raise TypeError(f"cannot make a reward of {item!r}")
  if not out:
    raise ValueError(f"no reward functions in {specs!r}")
  if weights is not None:
    if len(weights) != len(out):
      raise ValueError(f"{len(weights)} weights for {len(out)} rewards {[r.name for r in out]}")
    out = [dataclasses.replace(r, weight=float(w)) for r, w in zip(out, weights)]
  names = [r.name for r in out]
  if len(set(names)) != len(names):
    raise ValueError(f"reward names repeat in {names}; metrics are keyed by name")
  return out


def _run_with_timeouts(calls: list[Callable[[], float]], timeout_s: float, max_workers: int):
  """Runs calls on daemon threads, at most max_workers at a time, each given timeout_s from its start.

  Returns (values, status, errors) with status 'ok' | 'error' | 'timeout'. A thread that times out cannot
  be killed; it is abandoned (runs on, its result ignored) and its slot given to the next call."""
  n = len(calls)
  values, status = [0.0] * n, ["timeout"] * n
  errors: list[tuple[int, BaseException]] = []
  done: queue.Queue = queue.Queue()

  def work(i):
    try:
      v = float(calls[i]())
      if not math.isfinite(v):
        raise ValueError(f"non-finite reward {v}")
      done.put((i, "ok", v, None))
    except BaseException as e:  # noqa: BLE001 - a reward must never stop the run.
      done.put((i, "error", 0.0, e))

  pending = collections.deque(range(n))
  running: dict[int, float] = {}  # index -> start time
  while pending or running:
    while pending and len(running) < max_workers:
      i = pending.popleft()
      running[i] = time.monotonic()
      threading.Thread(target=work, args=(i,), daemon=True, name=f"reward-{i}").start()
    wait = min(running.values()) + timeout_s - time.monotonic()
    try:
      i, s, v, e = done.get(timeout=max(wait, 0.0))
      if running.pop(i, None) is not None:  # else it had timed out already: ignore the late result.
        values[i], status[i] = v, s
        if e is not None:
          errors.append((i, e))
    except queue.Empty:
      now = time.monotonic()
      for i, start in list(running.items()):
        if now - start >= timeout_s:
          del running[i]  # status stays 'timeout'.
  return values, status, errors


def _batched_value(value: float, error: BaseException | None) -> float:
  if error is not None:
    raise error
  return value


def is_verifier(fn) -> bool:
  """A reward whose 1.0 means "correct" (a checked answer, passing tests), marked `fn.verifier = True`:
  math and its modes, exact_match, multiple_choice, code. Shaping rewards (format), reward models and
  user functions are not, unless they say so."""
  return bool(getattr(fn, "verifier", False))


def score_batch(reward_fns, completions: Sequence[str], examples: Sequence[dict], timeout_s: float = 10.0, *,
                max_workers: int | None = None, truncated: Sequence[bool] | None = None):
  """(rewards, metrics) of `score_rows`."""
  rewards, metrics, _ = score_rows(reward_fns, completions, examples, timeout_s, max_workers=max_workers,
                                   truncated=truncated)
  return rewards, metrics


def score_rows(reward_fns, completions: Sequence[str], examples: Sequence[dict], timeout_s: float = 10.0, *,
               max_workers: int | None = None, truncated: Sequence[bool] | None = None):
  """Scores N completions: rewards[i] = sum_k w_k fn_k(completions[i], examples[i]).

  A call that raises, returns a non-finite value or runs past timeout_s counts 0 and is counted in the
  metrics; the run goes on. Calls run on threads (the code reward waits on subprocesses meanwhile).
  Returns (rewards float32 [N], metrics): `reward/NAME` (mean raw score), `reward/NAME/errors`,
  `reward/NAME/timeouts`, and `reward/errors`, `reward/timeouts` over all functions; plus where the
  rewarded answers came from, and (given `truncated` [N], rows that hit the length budget) how many were
  cut: `provenance.answer_metrics`. Where verifiers of nonzero weight are among the rewards (`is_verifier`),
  correct[i] = every one of them scored >= 1 on row i and metrics["accuracy"] = 100 * mean(correct);
  otherwise correct is None and there is no accuracy (a reward model's or a shaped reward's "> 0" is not
  one). Returns (rewards float32 [N], metrics, correct bool [N] | None)."""
  if isinstance(reward_fns, str) or not isinstance(reward_fns, Sequence) or not all(
      isinstance(r, WeightedReward) for r in reward_fns):
    reward_fns = combine(reward_fns)
  if len(completions) != len(examples):
    raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
  n = len(completions)
  calls = []
  for r in reward_fns:
    if hasattr(r.fn, "score_many"):  # Batched (a reward model on device): one call, then per-item lookups.
      try:
        batch, error = list(r.fn.score_many(completions, examples)), None
      except Exception as e:  # noqa: BLE001 - counted per completion below, like any reward error.
        batch, error = [0.0] * n, e
      calls += [functools.partial(_batched_value, batch[i], error) for i in range(n)]
    else:
      calls += [functools.partial(r.fn, completions[i], examples[i]) for i in range(n)]
  workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
  values, status, errors = _run_with_timeouts(calls, timeout_s, workers) if calls else ([], [], [])
  scores = np.asarray(values, np.float32).reshape(len(reward_fns), n)
  status = np.asarray(status, object).reshape(len(reward_fns), n)
  weights = np.asarray([r.weight for r in reward_fns], np.float32)
  rewards = (weights[:, None] * scores).sum(0).astype(np.float32)
  metrics = {}
  for k, r in enumerate(reward_fns):
    metrics[f"reward/{r.name}"] = float(scores[k].mean()) if n else 0.0
    metrics[f"reward/{r.name}/errors"] = int((status[k] == "error").sum())
    metrics[f"reward/{r.name}/timeouts"] = int((status[k] == "timeout").sum())
  metrics["reward/errors"] = int((status == "error").sum())
  metrics["reward/timeouts"] = int((status == "timeout").sum())
  metrics.update(provenance.answer_metrics(reward_fns, scores, completions, examples, rewards, truncated))
  checked = [k for k, r in enumerate(reward_fns) if r.weight != 0 and is_verifier(r.fn)]
  correct = np.all(scores[checked] >= 1.0, axis=0) if checked else None
  if correct is not None:
    metrics["accuracy"] = 100.0 * float(correct.mean()) if n else 0.0
  for i, e in errors[:3]:
    logging.warning("reward %s failed on completion %d: %s: %s", reward_fns[i // n].name, i % n,
                    type(e).__name__, e)
  return rewards, metrics, correct
