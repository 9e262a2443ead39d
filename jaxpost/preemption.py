"""Stop cleanly on SIGTERM / SIGINT: finish the step, save a checkpoint synchronously, exit 128 + signal.

TPU maintenance events, spot/preemptible VMs and schedulers send SIGTERM; Ctrl-C sends SIGINT. The
handler only records the signal; the loop asks `should_stop()` once per step and, when it says yes,
saves, waits for orbax to finalise the checkpoint, and raises `Preempted` (a SystemExit, so
`python -m jaxpost.train` exits with 143 for SIGTERM, 130 for SIGINT). Re-running the same command resumes
at the next step. A second signal while stopping gives up at once (the default behaviour).

Multi-host: processes receive the signal at slightly different times (or only some of them do), but
all must stop after the same step or the next step's collectives hang. Each step every process
contributes its flag to a tiny all-reduce (max over processes), dispatched asynchronously and read one
step later, so the vote never stalls the device pipeline; all processes read the same vote at the same
step and stop together, at most one step later than a single process would.
"""
from __future__ import annotations

import signal
import sys
import threading

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class Preempted(SystemExit):
  """Raised by a loop after its stop checkpoint is saved; `code` is the exit status (128 + signal)."""

  def __init__(self, signum: int, step: int):
    super().__init__(128 + signum)
    self.signum, self.step = signum, step

  def __str__(self) -> str:
    return f"stopped by {signal.Signals(self.signum).name} after step {self.step} (checkpoint saved)"


class StopRequest:
  """Context manager: installs the handlers on enter, restores the previous ones on exit.

  Args:
    mesh: the run's mesh; with several processes the vote is an all-reduce over its devices.
    signals: which signals request a stop.
  """

  def __init__(self, mesh=None, signals=(signal.SIGTERM, signal.SIGINT)):
    self.mesh, self.signals = mesh, tuple(signals)
    self.signum = 0        # The signal this process received (0: none).
    self.agreed = 0        # The signal all processes agreed on (0: keep going).
    self._previous, self._pending, self._vote = {}, None, None

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():  # Python allows handlers only there.
      for s in self.signals:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    if self.signum:  # Second signal: stop waiting for the step, behave as if we were never installed.
      previous = self._previous.get(signum, signal.SIG_DFL)
      signal.signal(signum, previous)
      if callable(previous):
        previous(signum, frame)
      else:
        signal.raise_signal(signum)
      return
    self.signum = signum
    print(f"{signal.Signals(signum).name}: finishing the current step, then saving a checkpoint "
          "(send it again to exit at once)", file=sys.stderr, flush=True)

  def should_stop(self) -> bool:
    """Called once per step by every process; True when all of them should save and exit now."""
    import jax
    if jax.process_count() == 1 or self.mesh is None:
      self.agreed = self.signum
      return bool(self.agreed)
    pending, self._pending = self._pending, self._dispatch_vote()
    if pending is not None:
      self.agreed = int(pending)  # Last step's vote: dispatched a whole step ago, so already done.
    return bool(self.agreed)

  def _dispatch_vote(self):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    if self._vote is None:
      self._sharding = NamedSharding(self.mesh, P(self.mesh.axis_names))
      self._vote = jax.jit(jnp.max, out_shardings=NamedSharding(self.mesh, P()))
    local = np.full((len(self.mesh.local_devices),), self.signum, np.int32)
    return self._vote(jax.make_array_from_process_local_data(self._sharding, local))

  def preempted(self, step: int) -> Preempted:
    return Preempted(self.agreed, step)
