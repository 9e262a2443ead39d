"""Metrics out: WORKDIR/metrics.jsonl (one object per logged step), TensorBoard events in WORKDIR/tb,
and a tqdm bar on a terminal (plain log lines otherwise). Only process 0 writes."""
from __future__ import annotations

import json
import math
import os
import sys

import jax
import numpy as np


def _plain(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


class MetricsWriter:

  def __init__(self, workdir: str, *, total_steps: int, initial_step: int = 0, progress: bool = True,
               name: str = "train"):
    self.enabled = jax.process_index() == 0
    self.jsonl = self.tb = self.bar = None
    self.tb_dir = os.path.join(workdir, "tb")
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if progress and sys.stderr.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=initial_step, desc=name, dynamic_ncols=True)

  def write(self, step: int, metrics: dict) -> dict:
    """Logs `metrics` (device or host scalars) at `step`; returns them as Python numbers."""
    values = {k: _plain(v) for k, v in metrics.items()}
    if not self.enabled:
      return values
    self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self.jsonl.flush()
    if self._tensorboard() is not None:
      for k, v in values.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          self.tb.add_scalar(k, v, step)
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    if self.bar is not None:
      self.bar.set_postfix_str(shown, refresh=False)
    else:
      print(f"step {step}: {shown}", flush=True)
    return values

  def _tensorboard(self):
    """The TensorBoard writer, opened at the first write: a run that fails in its set-up (say a model that
    does not match the workdir's checkpoint) leaves no new events file behind. None without tensorboardX."""
    if self.tb is None:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:  # TensorBoard is optional at runtime.
        self.tb = False
      else:
        self.tb = SummaryWriter(self.tb_dir)
    return self.tb or None

  def advance(self, n: int = 1) -> None:
    if self.bar is not None:
      self.bar.update(n)

  def log(self, message: str) -> None:
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.write(message)
    else:
      print(message, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    if self.tb:
      self.tb.close()
    if self.jsonl is not None:
      self.jsonl.close()
