"""Packaging: the top-level kernels/ folder never shadows the PyPI `kernels` package, and an installed
jaxpost (a wheel, outside the checkout) runs the bundled configs from any folder."""
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from installed_wheel import ROOT

# One CPU device, as a user's run has (conftest's 8 simulated devices would only slow the runs down); conftest's
# cheaper XLA:CPU codegen stays (the runs' compiles are most of their time; no number they compute is asserted).
ENV = {**os.environ, "XLA_FLAGS": os.environ["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")}


def _python(python, code, cwd, **env):
  return subprocess.run([python, "-c", code], cwd=cwd, env={**ENV, **env}, capture_output=True, text=True,
                        timeout=300)


def test_kernels_folder_does_not_shadow_the_pypi_kernels_package():
  """From the repository root ('' first on sys.path, as `python -m pytest`, `python -c` or a notebook started
  there has it), `import kernels` is transformers' dependency, and transformers' hub_kernels imports."""
  try:
    importlib.metadata.version("kernels")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("the PyPI `kernels` package is not installed (requirements/lock.txt has it)")
  assert not os.path.exists(os.path.join(ROOT, "kernels", "__init__.py"))
  code = ("import kernels, jaxpost.kernels.attention as a\n"
          "from transformers.integrations import hub_kernels\n"
          "print(kernels.__file__); print(a.__file__)")
  result = _python(sys.executable, code, ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  pypi_kernels, ours = result.stdout.split()
  assert not pypi_kernels.startswith(os.path.join(ROOT, "kernels") + os.sep), pypi_kernels
  assert ours == os.path.join(ROOT, "kernels", "attention", "__init__.py")  # The checkout's, via jaxpost.


def test_installed_wheel_runs_bundled_configs_from_another_folder(installed_python, tmp_path):
  where = _python(installed_python, "import jaxpost, jaxpost.kernels.logprobs as k, jaxpost.bundled as b\n"
                  "print(jaxpost.__file__); print(k.__file__); print(b.config_path('sft_tiny.py'))", tmp_path)
  assert where.returncode == 0, where.stderr[-2000:]
  package, kernels, config = where.stdout.split()
  site = os.path.dirname(os.path.dirname(package))
  assert not package.startswith(ROOT + os.sep) and kernels.startswith(site) and config.startswith(site)

  # The README's command, run where no configs/ folder exists: the bundled config and its assets.
  workdir = tmp_path / "sft"
  train = subprocess.run(
      [installed_python, "-m", "jaxpost.train", "--config=configs/sft_tiny.py", f"--workdir={workdir}",
       "--config.train.steps=2", "--config.train.log_every=1", "--config.train.eval_every=0",
       "--config.train.checkpoint_every=2"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
  assert train.returncode == 0, train.stderr[-3000:]
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] == 2
  generate = subprocess.run(  # Its default --config is the bundled configs/demo.py:base.
      [installed_python, "-m", "jaxpost.generate", f"--model={workdir}", "--prompt=1+1=", "--max_new_tokens=2",
       "--temperature=0"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
  assert generate.returncode == 0 and "tokens in" in generate.stderr, generate.stderr[-3000:]

  # A config path that neither exists here nor ships is the user's typo: absl names the file.
  typo = subprocess.run([installed_python, "-m", "jaxpost.train", "--config=configs/sft_tiyn.py", "--workdir=x"],
                        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
  assert typo.returncode == 2, typo.stderr[-2000:]
  assert typo.stderr.strip().splitlines() == [
      "error: --config=configs/sft_tiyn.py: configs/sft_tiyn.py is not a file (bundled configs: demo.py, demo_tools.py, distill_tiny.py, "
      "dpo_tiny.py, grpo_gsm8k.py, grpo_tiny.py, ppo_tiny.py, rm_tiny.py, sft_hf.py, sft_tiny.py)"]
