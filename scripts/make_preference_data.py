"""Writes the bundled toy preference sets: assets/preferences/arithmetic_{train,eval}.jsonl.

  python scripts/make_preference_data.py

Correct sum chosen, a - b rejected; train pairs from the arithmetic train split, eval pairs from the
held-out split (see jaxpost/tasks/arithmetic_preferences.py). Deterministic: reruns write identical files.
"""
import json
import os

from jaxpost.tasks.arithmetic_preferences import preference_records

OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "preferences"))


def main():
  os.makedirs(OUT, exist_ok=True)
  for name, records in (("arithmetic_train.jsonl", preference_records(1000, seed=0)),
                        ("arithmetic_eval.jsonl", preference_records(200, seed=1, held_out=True))):
    with open(os.path.join(OUT, name), "w") as f:
      for r in records:
        f.write(json.dumps(r) + "\n")
    print(f"wrote {len(records)} records to {os.path.join(OUT, name)}")


if __name__ == "__main__":
  main()
