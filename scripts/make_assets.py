"""Regenerates the bundled tiny assets in assets/arithmetic/ (deterministic; run from the repo root).

  python scripts/make_assets.py

tokenizer.model: a sentencepiece character vocabulary (printable ASCII + the chat specials; the role
names are single pieces too, as in real ChatML tokenizers, which keeps a reply close to its question);
kept if present.
sft_train.jsonl / sft_eval.jsonl: chat records of two-digit addition, eval from the held-out pairs.
prompts_train.jsonl / prompts_eval.jsonl: prompt records for GRPO (a quarter of the training pairs; the
same held-out problems).
"""
import json
import os
import string

from jaxpost.tasks import arithmetic
from jaxpost.tokenizers import CHAT_SPECIAL_TOKENS, ROLES, train_sentencepiece

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "arithmetic")


def write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def main():
  os.makedirs(OUT, exist_ok=True)
  # A char model numbers its pieces by frequency in the training text, so a change to the task's text
  # would renumber the digits and invalidate every checkpoint and recorded run: an existing tokenizer
  # is kept (delete it to retrain).
  if not os.path.exists(os.path.join(OUT, "tokenizer.model")):
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \n"
    train_sentencepiece([alphabet] + [r["text"] for r in arithmetic.pretraining_records(200, seed=0)],
                        os.path.join(OUT, "tokenizer"), vocab_size=128, model_type="char",
                        user_defined_symbols=CHAT_SPECIAL_TOKENS + ROLES)
    os.remove(os.path.join(OUT, "tokenizer.vocab"))
  write_jsonl(os.path.join(OUT, "sft_train.jsonl"), arithmetic.chat_records(400, seed=1))
  held_out = arithmetic.held_out_problems(100, seed=2)
  write_jsonl(os.path.join(OUT, "sft_eval.jsonl"),
              [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": str(a)}]}
               for q, a in held_out])
  write_jsonl(os.path.join(OUT, "prompts_train.jsonl"), arithmetic.prompt_records(arithmetic.TRAIN_PAIRS[::4]))
  write_jsonl(os.path.join(OUT, "prompts_eval.jsonl"), [{"prompt": q, "answer": str(a)} for q, a in held_out])


if __name__ == "__main__":
  main()
