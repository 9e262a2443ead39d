"""Multi-host start-up: `jax.distributed.initialize` once, before anything touches a device.

JAX runs one process per host (multi-controller): every host runs the same `python -m jaxpost.train ...`,
feeds its share of each batch, and the processes meet in the collectives of the jitted step. Where the
settings come from, first match wins:

1. explicit: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on `jaxpost.train`, or the
   environment variables JAXPOST_COORDINATOR_ADDRESS, JAXPOST_NUM_PROCESSES, JAXPOST_PROCESS_ID (what
   `jaxpost.launch_local` sets; use them, or the flags, for multi-node GPU and CPU runs);
2. `--distributed=on` (or JAXPOST_DISTRIBUTED=on): `jax.distributed.initialize()` with no arguments, so
   JAX finds its peers itself (Cloud TPU VMs and GKE TPU pods, Slurm, Open MPI);
3. `--distributed=auto` (the default): the same no-argument call, but only on a multi-host Cloud TPU slice
   (more than one worker listed by the TPU VM's metadata or by TPU_WORKER_HOSTNAMES); single process
   otherwise, so a laptop, a one-host TPU VM and Colab never wait for peers.
`--distributed=off` never initialises. On CPU the cross-process collectives are gloo's.
"""
from __future__ import annotations

import os
import urllib.request

from absl import flags

MODES = ("auto", "on", "off")
ENV = {"coordinator_address": "JAXPOST_COORDINATOR_ADDRESS", "num_processes": "JAXPOST_NUM_PROCESSES",
       "process_id": "JAXPOST_PROCESS_ID", "mode": "JAXPOST_DISTRIBUTED"}

_MODE = flags.DEFINE_enum("distributed", None, MODES,
                          "Multi-host start-up: auto (multi-host TPU slices only) | on | off. "
                          f"Default: ${ENV['mode']} or auto.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   f"HOST:PORT of process 0's coordinator (or ${ENV['coordinator_address']}).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      f"Processes in the run (or ${ENV['num_processes']}).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, f"This process, 0..num_processes-1 (or ${ENV['process_id']}).")

_METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/"


class DistributedError(ValueError):
  """Inconsistent multi-host settings; the message names the flag or variable."""


def settings_from_flags() -> dict:
  """The flags of `jaxpost.train`, each falling back to its environment variable."""
  def pick(flag, key, cast=str):
    value = flag.value
    if value is None and os.environ.get(ENV[key], "") != "":
      raw = os.environ[ENV[key]]
      try:
        value = cast(raw)
      except ValueError:
        raise DistributedError(f"${ENV[key]}={raw!r} is not a valid {cast.__name__}") from None
    return value
  return dict(coordinator_address=pick(_COORDINATOR, "coordinator_address"),
              num_processes=pick(_NUM_PROCESSES, "num_processes", int),
              process_id=pick(_PROCESS_ID, "process_id", int),
              mode=pick(_MODE, "mode") or "auto")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, mode: str = "auto") -> bool:
  """Starts the JAX distributed runtime if the settings call for it (see the module docstring).

  Must run before the first device use. Returns True if `jax.distributed.initialize` was called.
  Raises DistributedError when the explicit settings are incomplete or out of range.
  """
  if mode not in MODES:
    raise DistributedError(f"--distributed={mode!r} is not one of {', '.join(MODES)}")
  explicit = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  given = {k: v for k, v in explicit.items() if v is not None}
  if mode == "off":
    return False
  if given:
    missing = [f"--{k} (${ENV[k]})" for k in explicit if k not in given]
    if missing:
      raise DistributedError(f"multi-host settings incomplete: got {', '.join(f'--{k}' for k in given)}, "
                             f"missing {', '.join(missing)}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
                             f"--num_processes={num_processes} --process_id={process_id}")
  elif mode == "auto" and tpu_worker_count() <= 1:
    return False

  import jax
  if given and num_processes > 1 and _platforms() == {"cpu"}:
    try:  # gloo is the default today; name it so a changed default cannot leave CPU processes without one.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # A JAX without the option.
      pass
  if jax.distributed.is_initialized():
    return True
  jax.distributed.initialize(**given)
  return True


def initialize_from_flags() -> bool:
  """`initialize` with the `jaxpost.train` flags (and their environment fallbacks)."""
  return initialize(**settings_from_flags())


def tpu_worker_count(timeout_s: float = 1.0) -> int:
  """Hosts in this Cloud TPU slice: 0 when this is not a TPU VM, else the worker count (1 = single host).

  Reads TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES (GKE) or the VM metadata's worker-network-endpoints,
  the same sources `jax.distributed.initialize()` uses to find its peers.
  """
  for var in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):
    if os.environ.get(var):
      return len([h for h in os.environ[var].split(",") if h.strip()])
  if not _looks_like_tpu_vm() or os.environ.get("TPU_SKIP_MDS_QUERY") is not None:
    return 0
  request = urllib.request.Request(_METADATA + "worker-network-endpoints", headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
      endpoints = response.read().decode()
  except OSError:  # No metadata server (Colab, a container): treat as one host.
    return 1
  return max(1, len([e for e in endpoints.split(",") if e.strip()]))


def _looks_like_tpu_vm() -> bool:
  if _platforms() - {"tpu", ""}:
    return False
  return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")


def _platforms() -> set[str]:
  return {p.strip().lower() for p in os.environ.get("JAX_PLATFORMS", "").split(",")}
