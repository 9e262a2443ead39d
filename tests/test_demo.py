"""`python -m jaxpost.demo` wiring, with a few steps a stage: the stages chain, the report is complete. It runs
as a user of `pip install <clone>` runs it: jaxpost installed from a wheel, in a folder with no checkout.

How well the demo learns is measured by running it (README: seeds, accuracies, time), not here."""
import json
import os
import re
import subprocess

from jaxpost.tasks import arithmetic

def test_demo_chains_base_sft_grpo_and_reports(installed_python, tmp_path):
  workdir = tmp_path / "demo"
  # One CPU device, as `make demo` runs (conftest's 8 simulated devices would only slow it down here); the
  # cheaper XLA:CPU codegen conftest sets stays: the demo's ~25 compiles are most of its time.
  env = {**os.environ, "XLA_FLAGS": os.environ["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")}
  result = subprocess.run(
      [installed_python, "-m", "jaxpost.demo", f"--workdir={workdir}", "--seed=1", "--num_eval=16",
       "--base_steps=3", "--sft_steps=2", "--grpo_steps=2"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout

  # Each stage starts from the previous one's checkpoint, recorded in its model.json.
  for stage, parent in (("sft", "base"), ("grpo", "sft")):
    record = json.loads((workdir / stage / "model.json").read_text())
    assert os.path.abspath(record["init_checkpoint"]) == os.path.abspath(workdir / parent)
  # SFT conversations come from the teacher who never carries.
  for line in (workdir / "data" / "sft.jsonl").read_text().splitlines():
    user, assistant = json.loads(line)["messages"]
    a, b = map(int, re.match(r"what is (\d+) \+ (\d+)\?", user["content"]).groups())
    assert assistant["content"] == str(arithmetic.no_carry_sum(a, b))
  # GRPO logged its held-out curve at step 0 and at the end.
  curve = [json.loads(l) for l in (workdir / "grpo" / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in curve if "eval/accuracy" in m] == [0, 2]

  # The shown question needs a carry, and the closing line has the three accuracies.
  shown = re.search(r"the same held-out question, 'what is (\d+) \+ (\d+)\?' \(answer (\d+); the teacher "
                    r"would say (\d+)\)", out)
  a, b, answer, teacher = map(int, shown.groups())
  assert answer == a + b and teacher == arithmetic.no_carry_sum(a, b) != answer
  for who in ("base, as plain text", "base, chat template", "sft,  chat template", "grpo, chat template"):
    assert f"  {who}  -> " in out
  assert "(percent of 16 held-out problems, seed 1," in out
  last = out.rstrip("\n").splitlines()[-1]
  accuracies = re.fullmatch(r"accuracy: base=([\d.]+) sft=([\d.]+) grpo=([\d.]+)", last)
  assert accuracies and all(0.0 <= float(x) <= 100.0 for x in accuracies.groups())
