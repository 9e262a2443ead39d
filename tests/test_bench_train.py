"""scripts/bench_train.py: end-to-end smoke run, one compilation across steps, remat policies agree."""
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxpost import state as state_lib
from jaxpost.algorithms import sft
from jaxpost.models import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "bench_train.py")
_module_spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
bench = importlib.util.module_from_spec(_module_spec)
_module_spec.loader.exec_module(bench)

# Smaller than --small: only plumbing is under test here.
TINY = dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, vocab=61, batch=8,
            seq=16, steps=3, warmup=1)


def _bench_spec(**overrides):
  args = bench.parse_args(["--small", "--no-hf"])
  spec = bench.make_spec(args)
  spec.update(TINY)
  spec.update(overrides)
  return spec


def test_flops_convention_matches_perf_md():
  """PERF.md: HF at 341.5 ms/step on the 1.24B model at 4 x 4096 is 39.9% MFU of 989 TFLOP/s.
  N = 1,235,814,400 (tied); 6*N*16384 = 1.2149e14 plus attention 6*16*2048*4096*16384 = 1.3194e13."""
  cfg = ModelConfig(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                    mlp_dim=8192, tie_embeddings=True)
  assert cfg.num_params() == 1_235_814_400
  flops = bench.train_flops(cfg.num_params(), 16, 32 * 64, 4, 4096)
  np.testing.assert_allclose(flops, 6 * 1_235_814_400 * 16384 + 6 * 16 * 2048 * 4096 * 16384)
  np.testing.assert_allclose(flops / 0.3415 / 989e12, 0.399, atol=1e-3)


# Fast XLA:CPU compiles for the subprocess (shared CPU cores); the numbers are not asserted anyway.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="module")
def small_run():
  """One `--small --no-hf` run in a subprocess (8 simulated CPU devices, inherited from conftest's
  environment): 1 warm-up call + 2 timed steps, each on a different random batch; with the step's
  compiled buffer plan (its compile is the one the calls then reuse)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FAST_COMPILE).strip()
  proc = subprocess.run([sys.executable, SCRIPT, "--small", "--no-hf", "--steps", "2", "--warmup", "1",
                         "--compiled_memory"],
                        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = next((l for l in proc.stdout.splitlines() if l.startswith("jaxpost ")), None)
  assert row is not None and "ERROR" not in row, proc.stdout + proc.stderr[-3000:]
  return proc.stdout, row


def test_script_runs_end_to_end_small(small_run):
  """The script prints a positive tokens/s and an MFU for the variant (values not asserted)."""
  _, row = small_run
  assert float(re.search(r"tokens/s=([0-9.]+)", row).group(1)) > 0, row
  assert re.search(r"MFU=[0-9.]+%", row), row
  assert re.search(r"args_GiB=[0-9.]+ temp_GiB=[0-9.]+ host_temp_GiB=[0-9.]+", row), row


def test_step_compiles_once_across_steps_with_varying_data(small_run):
  """Three calls on three different batches: one XLA compile of the step (jax.monitoring count) and one
  jit cache entry; the loss moved, so the data and params really changed between calls."""
  out, row = small_run
  assert "compilations=1 " in row, row
  assert "jit cache entries of the step: 1" in out, out
  first, last = re.search(r"loss=([-0-9.]+)->([-0-9.]+)", row).groups()
  assert first != last, row


def test_compile_counter_sees_a_retrace():
  """The counter is not vacuous: a new input shape is a second compile."""
  f = jax.jit(lambda x: x * 2)
  with bench.CompileCounter() as c:
    f(np.ones(3, np.float32))
    f(np.ones(3, np.float32))
    f(np.ones(4, np.float32))
  assert c.count == 2, c.names


def test_remat_policies_give_the_same_loss_and_grads():
  """remat only changes what the backward pass recomputes, never the math: none / full / dots give the
  same loss and gradients on one batch (f32, one device; tolerance 1e-5 for XLA reassociation)."""
  base = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
                     dtype="float32")
  _, shapes, _ = state_lib.abstract_model(base)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes)  # No init jit.
  batch = bench.random_batch(rng, 2, 16, 61)
  fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}  # Shared CPU cores.
  results = []
  for remat in ("none", "full", "dots", "offload"):
    graphdef, _, _ = state_lib.abstract_model(dataclasses.replace(base, remat=remat))
    grad_fn = jax.jit(jax.value_and_grad(sft.make_loss_fn(graphdef)[0], has_aux=True))
    (loss, _), grads = grad_fn.lower(params, batch).compile(compiler_options=fast)(params, batch)
    results.append((float(loss), jax.device_get(grads)))
  (l0, g0), *others = results
  assert np.isfinite(l0) and l0 > 0
  for loss, grads in others:
    np.testing.assert_allclose(loss, l0, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(grads)):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_fsdp_divides_the_resident_state_per_device(fast_init_params):
  """The memory plan the benchmark reports: over 8 devices, FSDP (mesh 1,8,1) keeps about 1/8 of the params
  and Adam moments per device that data parallelism (8,1,1) replicates, in the step's compiled plan.
  Argument bytes = state shard + batch shard; the batch (1 row a device) is the same in both, so the ratio
  sits a little above 1/8; it would be ~1 if FSDP silently replicated. Same loss either way. (The init is
  conftest's fast_init_params: the same values, without compiling the random init for each mesh.)"""
  plans = {mesh: bench.time_jaxpost(_bench_spec(mesh=mesh, compiled_memory=True, steps=1, warmup=1, d_model=64,
                                                head_dim=16, mlp_dim=128, vocab=64))
           for mesh in ((8, 1, 1), (1, 8, 1))}
  data, fsdp = plans[(8, 1, 1)], plans[(1, 8, 1)]
  assert fsdp["argument_bytes"] < 0.15 * data["argument_bytes"], (fsdp["argument_bytes"], data["argument_bytes"])
  np.testing.assert_allclose(fsdp["loss_first"], data["loss_first"], rtol=1e-5)


def test_hf_baseline_runs_on_cpu():
  """The transformers + torch child builds the same shape (same parameter count) and steps; forced on CPU."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  spec = _bench_spec(hf_force=True, steps=1, warmup=1, batch=2)
  result = bench.time_hf(spec)
  assert "error" not in result and result["step_ms"] > 0
  cfg = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
  assert result["num_params"] == cfg.num_params()
