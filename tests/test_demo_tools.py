"""`python -m jaxpost.demo_tools` wiring, with a few steps a stage: the data is the reluctant teacher's, the
tokenizer keeps the tool tags whole and round-trips the conversations, the stages chain, the report parses.

How well the demo learns is measured by running it (README: seeds, accuracy, tool use, time), not here."""
import json
import os
import re
import subprocess
import sys

from jaxpost import tokenizers
from jaxpost.envs import chat
from jaxpost.tasks import multiplication

def test_demo_tools_chains_sft_and_grpo_and_reports(tmp_path):
  workdir = tmp_path / "demo"
  env = {**os.environ, "XLA_FLAGS": os.environ["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")}
  result = subprocess.run(
      [sys.executable, "-m", "jaxpost.demo_tools", f"--workdir={workdir}", "--seed=1", "--num_eval=4",
       "--sft_records=40", "--sft_steps=2", "--grpo_steps=1"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  # The teacher: the calculator call and its exact answer, or "about" an estimate of rounded factors.
  records = [json.loads(line) for line in (workdir / "data" / "sft.jsonl").read_text().splitlines()]
  used = 0
  for r in records:
    a, b = map(int, re.match(r"what is (\d+) \* (\d+)\?", r["messages"][0]["content"]).groups())
    if len(r["messages"]) == 4:
      used += 1
      assert r["messages"] == multiplication.tool_conversation(a, b) and r["messages"][2]["content"] == str(a * b)
    else:
      assert r["messages"][1]["content"] == f"about {round(a, -1) * round(b, -1)}" or a % 10 == 5 or b % 10 == 5
  assert 0 < used < len(records)
  # Its tokenizer: the tool tags and chat specials are single pieces; conversations decode to their rendering.
  tok = tokenizers.load(str(workdir / "tokenizer.model"))
  for tag in ("<tool_call>", "</tool_call>", "<|im_end|>"):
    assert len(tok.encode(tag)) == 1
  record = next(r for r in records if len(r["messages"]) == 4)
  ids, _ = chat.encode_conversation(tok, record["messages"], record["tools"])
  assert tok.decode(ids) == chat.render(tok, record["messages"], record["tools"], False).rstrip("\n")
  # GRPO started from the SFT checkpoint and evaluated greedy episodes at step 0 and at the end.
  assert os.path.abspath(json.loads((workdir / "grpo" / "model.json").read_text())["init_checkpoint"]) == \
      os.path.abspath(workdir / "sft")
  curve = [json.loads(l) for l in (workdir / "grpo" / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in curve if "eval/accuracy" in m] == [0, 1]
  assert all("eval/episode/used_tools" in m for m in curve if "eval/accuracy" in m)
  lines = result.stdout.rstrip("\n").splitlines()
  assert re.fullmatch(r"tool use: sft=[\d.]+ grpo=[\d.]+", lines[-2]), lines[-2:]
  assert re.fullmatch(r"accuracy: sft=[\d.]+ grpo=[\d.]+", lines[-1]), lines[-1]
