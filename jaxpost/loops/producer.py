"""Rollouts produced ahead of training, on a thread of their own (rl.max_staleness = k > 0, or split device
pools, rl.rollout_devices > 0).

  trainer (main thread)                          producer (this module's thread)
  step s: take batch s from the queue   <-----   batch s: wait for policy version >= s - 1 - k, sample with
          train on it (version s-1 -> s)         the newest published params, score on the host, queue it
          publish version s  ----------------->  (weights copied onto the rollout mesh, device to device)

Staleness: step s trains the params of version s - 1 on samples of versions >= s - 1 - k, so the producer
runs at most k + 1 batches ahead, and at k = 0 it samples exactly what the synchronous loop samples (the
same params, seeds and prompts). Sharing the training mesh, a batch is sampled with one version; with split
pools (`interruptible`), samples in flight read the newest weights at every engine check and record per
token the version that sampled it (AReaL's interruptible generation).

Host work (rewards, detokenising) runs on this thread while the trainer's device steps run. The prompt
cursor is the producer's: each batch carries the cursor after it, and the trainer adopts a batch's cursor
when it trains on it, so a checkpoint's cursor counts trained prompts only; batches queued or in flight at
a stop are dropped and sampled again after resume (no prompt lost, none trained twice).
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time

import jax


class WeightStore:
  """The newest policy params the producer may sample with, and their version (= updates applied).

  publish(version, params) places a copy with `place` (its own buffers: the trainer donates its state at the
  next update) and returns at once; the copy is dispatched asynchronously, so the trainer does not wait."""

  def __init__(self, version: int, params, place):
    self._cond = threading.Condition()
    self._place = place
    self._closed = False
    self.version, self.params = version, place(params)
    self.bytes = sum(x.nbytes for x in jax.tree.leaves(self.params))  # Of the copy (under LoRA: + the base).
    self.published_at = time.perf_counter()
    self.transfers: list[float] = []  # Seconds from publish to the copy being ready, as the producer saw it.
    self._measured = version

  def publish(self, version: int, params) -> None:
    copy = self._place(params)
    with self._cond:
      self.version, self.params, self.published_at = version, copy, time.perf_counter()
      self._cond.notify_all()

  def current(self) -> tuple[int, object]:
    """(version, params) of the newest copy, waited on until its buffers are ready (timed once a version)."""
    with self._cond:
      version, params, published_at = self.version, self.params, self.published_at
    if version != self._measured:
      jax.block_until_ready(params)
      self.transfers.append(time.perf_counter() - published_at)
      self._measured = version
    return version, params

  def wait_for(self, version: int) -> bool:
    """Blocks until the published version is >= `version`; False if closed first."""
    with self._cond:
      self._cond.wait_for(lambda: self._closed or self.version >= version)
      return not self._closed

  def close(self) -> None:
    with self._cond:
      self._closed = True
      self._cond.notify_all()

  @property
  def closed(self) -> bool:
    return self._closed


@dataclasses.dataclass
class Produced:
  """One step's rollout: the judged groups, the reward metrics, the prompt cursor after it, timings (s)."""
  step: int
  judged: list
  reward_metrics: dict
  cursor: dict
  rollout_time: float
  version: int  # The version it started sampling with.
  score_time: float = 0.0  # Seconds of host scoring (rewards, detokenising) within rollout_time.


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


class RolloutProducer:
  """Runs produce(step, version, params, weights, cancel) -> Produced for steps first..last on a thread,
  each once the store's version is >= step - 1 - max_staleness; `get()` returns them in order."""

  def __init__(self, produce, store: WeightStore, *, first: int, last: int, max_staleness: int,
               interruptible: bool, mesh):
    self._produce, self.store = produce, store
    self._range, self._k, self._interruptible, self._mesh = (first, last), max_staleness, interruptible, mesh
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._run, name="rollout-producer", daemon=True)
    self._thread.start()

  def _run(self) -> None:
    try:
      with jax.set_mesh(self._mesh):  # The context mesh is per thread.
        for step in range(self._range[0], self._range[1] + 1):
          if not self.store.wait_for(step - 1 - self._k):
            return
          version, params = self.store.current()
          weights = self.store.current if self._interruptible else None
          produced = self._produce(step, version, params, weights, lambda: self.store.closed)
          if self.store.closed:
            return
          self._queue.put(produced)
    except BaseException as e:  # Handed to the trainer, which raises it.
      self._queue.put(_Failure(e))

  def get(self) -> Produced:
    item = self._queue.get()
    if isinstance(item, _Failure):
      raise item.error
    return item

  def close(self, timeout_s: float = 600.0) -> None:
    """Stops the producer: it finishes the engine check in flight and drops what it holds."""
    self.store.close()
    self._thread.join(timeout_s)
