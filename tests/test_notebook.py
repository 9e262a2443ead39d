"""notebooks/quickstart.ipynb runs top to bottom on CPU (in a real Jupyter kernel, via nbclient), with the
notebook's own smoke sizes (JAXPOST_NOTEBOOK_SMOKE=1: a 1-layer model, 4 SFT steps, 2 GRPO steps)."""
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def test_quickstart_notebook_runs_on_cpu(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  monkeypatch.setenv("JAXPOST_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # One CPU device in the kernel (the fastest compile), and cheaper XLA:CPU codegen: the notebook's runs are
  # mostly compiles, and only that every cell runs (and what it wrote) is asserted.
  monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()

  outputs = {i: "".join(o.get("text", "") for o in c.get("outputs", [])) for i, c in enumerate(nb.cells)
             if c.cell_type == "code"}
  text = "\n".join(outputs.values())
  assert "what is 12 + 34?" in text  # The sampling cell printed its replies.
  assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
             for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))  # The plot.
  runs = tmp_path / "runs" / "quickstart"
  sft = [json.loads(line) for line in open(runs / "sft" / "metrics.jsonl")]
  grpo = [json.loads(line) for line in open(runs / "grpo" / "metrics.jsonl")]
  assert [r["step"] for r in sft if "loss" in r] == [1, 2, 3, 4]
  assert [r["step"] for r in grpo if "reward/mean" in r] == [1, 2]
  assert os.path.isdir(runs / "grpo" / "checkpoints" / "2")
