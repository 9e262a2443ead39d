"""Scores the adversarial corpus with jaxpost's `math` reward and with TRL's `accuracy_reward`; prints a table.

    python scripts/compare_trl_math_reward.py tests/rewards/data/adversarial.jsonl --trl_python=/tmp/trlvenv/bin/python

TRL is not a jaxpost dependency: its reward runs in a subprocess under `--trl_python`, an interpreter that
has `trl`, `math-verify` and `latex2sympy2_extended` (e.g. `python3 -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip
install --no-deps trl==0.24.0 && /tmp/trlvenv/bin/pip install math-verify==0.8.0 latex2sympy2_extended==1.10.2
packaging`). If `import trl` fails for want of transformers, trl/rewards/accuracy_rewards.py is loaded from
the installed package with its availability check stubbed (the function itself is unchanged).

Both rewards get the same gold: the `answer` that jaxpost's record reader makes of the row's record (TRL's
`solution` column). Columns: the corpus's expected `math` (flexible) score, jaxpost `math` (flexible, the
default), `math:anchored`, TRL; `diff` marks rows where TRL and jaxpost `math` disagree. docs/rewards.md
holds the table and explains each difference.
"""
import argparse
import json
import subprocess

from jaxpost import rewards
from jaxpost.data.prompts import normalize_record

_TRL_SCORER = r'''
import importlib.util, json, sys, types
try:
  from trl.rewards import accuracy_reward
except ImportError:  # trl's package init wants transformers; the reward itself needs only math-verify.
  import os
  root = importlib.util.find_spec("trl").submodule_search_locations[0]
  sys.modules["trl.import_utils"] = types.SimpleNamespace(is_math_verify_available=lambda: True)
  path = os.path.join(root, "rewards", "accuracy_rewards.py")
  spec = importlib.util.spec_from_file_location("accuracy_rewards", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  accuracy_reward = module.accuracy_reward
from importlib.metadata import version
pairs = json.load(sys.stdin)
scores = accuracy_reward([[{"role": "assistant", "content": c}] for c, _ in pairs], [g for _, g in pairs])
json.dump({"trl": version("trl"), "scores": scores}, sys.stdout)
'''


def trl_scores(trl_python: str, pairs: list[tuple[str, str]]) -> tuple[str, list]:
  """(trl version, TRL accuracy_reward of each (completion, gold) pair: 1.0, 0.0 or None = skipped)."""
  done = subprocess.run([trl_python, "-c", _TRL_SCORER], input=json.dumps(pairs), capture_output=True, text=True,
                        check=False)
  if done.returncode:
    raise SystemExit(f"{trl_python}: TRL scorer failed:\n{done.stderr[-2000:]}")
  out = json.loads(done.stdout)
  return out["trl"], out["scores"]


def _fmt(score) -> str:
  return "skip" if score is None else f"{score:g}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("corpus", help="JSONL rows {id, kind, record, completion, expected} (tests/rewards/data)")
  parser.add_argument("--trl_python", default="/tmp/trlvenv/bin/python", help="an interpreter with trl installed")
  args = parser.parse_args()
  rows = [json.loads(line) for line in open(args.corpus)]
  golds = [normalize_record(r["record"])["answer"] for r in rows]
  version, trl = trl_scores(args.trl_python, [(r["completion"], g) for r, g in zip(rows, golds)])
  flexible, anchored = rewards.REWARDS["math:flexible"], rewards.REWARDS["math:anchored"]
  print(f"| id | kind | expected | jaxpost math | math:anchored | TRL {version} accuracy_reward | diff |")
  print("|---|---|---|---|---|---|---|")
  totals = {}
  for r, gold, t in zip(rows, golds, trl):
    record = normalize_record(r["record"])
    ours, strict = flexible(r["completion"], record), anchored(r["completion"], record)
    diff = "x" if t != ours else ""
    print(f"| {r['id']} | {r['kind']} | {r['expected']['flexible']} | {ours:g} | {strict:g} | {_fmt(t)} | {diff} |")
    for name, score in (("jaxpost math", ours), ("math:anchored", strict), ("TRL", t)):
      kind = totals.setdefault((name, r["kind"]), [0, 0])
      kind[0] += score == 1.0
      kind[1] += 1
  print()
  print("| reward | " + " | ".join(f"{k} scored 1" for k in ("restatement", "honest", "other")) + " |")
  print("|---|---|---|---|")
  for name in ("jaxpost math", "math:anchored", "TRL"):
    cells = [f"{totals[(name, k)][0]}/{totals[(name, k)][1]}" for k in ("restatement", "honest", "other")]
    print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
