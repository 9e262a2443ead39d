"""Test session set-up: 8 simulated CPU devices and cheaper XLA:CPU codegen, set once before jax initialises a
backend, and one persistent XLA compilation cache for the session."""
import os
import shutil
import tempfile

# Cheaper XLA:CPU codegen (LLVM at -O0, no expensive passes) for every program the suite compiles, in this
# process and in the CLI subprocesses that inherit XLA_FLAGS: compiling is most of the suite's time (six of
# the loop and step test files: 238 s -> 164 s on 2 cores). It changes how fast the compiled code runs, not
# what it computes: tests compare with references within tolerances, and invariances (resumed == uninterrupted,
# sharded == one device) between programs compiled alike. Speed is measured by scripts/, never here.
CHEAP_CODEGEN_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 "
                           + CHEAP_CODEGEN_FLAGS).strip()

# The cache: runs that compile the very same program again (resumed == uninterrupted, the sharded
# references, repeated CLI runs) load it instead of compiling. The controller creates it; the xdist
# workers and the CLI subprocesses inherit it through the environment. Entries are keyed by the
# program's hash, so a hit is the same program; the directory is removed when the session ends.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxpost-test-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")  # Skip writing trivial programs.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

import installed_wheel  # noqa: E402  (tests/ is on sys.path: pytest's rootdir-relative imports)

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_threefry_partitionable", True)


def pytest_sessionfinish(session):
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):  # The controller (or a plain run).
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# Cheaper XLA:CPU codegen, for programs a test compiles itself (as kernels/test_attention.py does).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture
def fast_init_params(monkeypatch):
  """`jaxpost.state.init_params` with the same values, compiled cheaply: the model's own init (same seed)
  jitted for one device with FAST_COMPILE, then put in the trainer's layout (param_shardings). The library's
  version compiles the init's truncated normals for the mesh, with the default codegen: seconds on every
  mesh. For tests that need a run's starting params, not that compile."""
  from flax import nnx
  from jaxpost import state as state_lib
  from jaxpost.models import Transformer

  def init_params(cfg, mesh, seed):
    init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(params=seed)), nnx.Param)))
    return jax.device_put(init.lower().compile(compiler_options=FAST_COMPILE)(), state_lib.param_shardings(cfg, mesh))
  monkeypatch.setattr(state_lib, "init_params", init_params)


@pytest.fixture(scope="session")
def installed_python(tmp_path_factory):
  """The python of a fresh venv holding jaxpost installed from a wheel of this checkout (installed_wheel.py)."""
  return installed_wheel.install(str(tmp_path_factory.mktemp("installed")))
