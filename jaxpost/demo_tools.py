"""The tool demo: RL teaches a tiny model to use a calculator, on a laptop CPU, no downloads.

  python -m jaxpost.demo_tools --workdir=runs/demo_tools [--seed=0]

1. sft:  a ~0.4M-parameter transformer trained from scratch on chat conversations of a reluctant teacher:
         on a few problems it calls the calculator (through the chat template's tools: the call as
         <tool_call> JSON, the tool's answer, then the product), on the rest it answers 37 * 48 from memory
         with an estimate (40 * 50 = 2000). Imitation learns both habits.
2. grpo: GRPO over calculator episodes (multi-turn: the call, the tool's answer in the context, the product),
         reward 1 for the exact product, loss only on the model's own tokens.
Both are evaluated by greedy episodes on the same held-out problems (pairs never trained on): accuracy and
the fraction of episodes that called the calculator.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from absl import app, flags, logging

from jaxpost.tasks import multiplication

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo_tools", "Where data, checkpoints and metrics go (wiped first).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for data, init and data order.")
_EVAL = flags.DEFINE_integer("num_eval", 200, "Held-out problems to evaluate on.")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", None, "Override the SFT steps.")
_GRPO_STEPS = flags.DEFINE_integer("grpo_steps", None, "Override the GRPO steps.")
_TOOL_FRAC = flags.DEFINE_float("tool_frac", 0.3, "Fraction of SFT conversations in which the teacher calls the tool.")
_SFT_RECORDS = flags.DEFINE_integer("sft_records", 1000, "SFT conversations.")

TOOL_SYMBOLS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


def _write_jsonl(path: str, records) -> None:
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def load_config(stage: str):
  """configs/demo_tools.py:get_config(stage), the bundled file (checkout or installed package)."""
  import importlib.util
  from jaxpost import bundled
  spec = importlib.util.spec_from_file_location("jaxpost_demo_tools_config", bundled.config_path("demo_tools.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(stage)


def train_tokenizer(path_prefix: str, records: list[dict]):
  """A BPE sentencepiece model of the rendered SFT conversations: pieces may span spaces, so the tool schema
  every prompt carries takes few tokens; the tool-call tags are single pieces, as in Qwen's vocabulary."""
  from jaxpost.envs import chat
  from jaxpost.tokenizers import CHAT_SPECIAL_TOKENS, train_sentencepiece

  class _Builtin:  # Rendering with the built-in ChatML tool template needs no tokenizer yet.
    chat_template = None
  texts = [chat.render(_Builtin(), r["messages"], r["tools"], add_generation_prompt=False) for r in records]
  return train_sentencepiece(texts, path_prefix, vocab_size=1000, model_type="bpe",
                             user_defined_symbols=list(CHAT_SPECIAL_TOKENS) + list(TOOL_SYMBOLS),
                             split_by_whitespace=False)


def _evals(metrics_path: str) -> list[dict]:
  with open(metrics_path) as f:
    return [r for r in map(json.loads, f) if "eval/accuracy" in r]


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.ERROR)
  from jaxpost.loops import offline, online

  start = time.perf_counter()
  root, seed = _WORKDIR.value, _SEED.value
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(os.path.join(root, "data"))
  sft_records = multiplication.sft_records(_SFT_RECORDS.value, seed=seed + 1, tool_frac=_TOOL_FRAC.value)
  paths = {name: os.path.join(root, "data", name + ".jsonl") for name in ("sft", "prompts", "eval_prompts")}
  _write_jsonl(paths["sft"], sft_records)
  _write_jsonl(paths["prompts"], multiplication.prompt_records(multiplication.TRAIN_PAIRS))
  held_out = multiplication.held_out_pairs(_EVAL.value, seed=seed + 2)
  _write_jsonl(paths["eval_prompts"], multiplication.prompt_records(held_out))
  tokenizer_path = os.path.join(root, "tokenizer")
  train_tokenizer(tokenizer_path, sft_records)

  sft_cfg = load_config("sft")
  sft_cfg.tokenizer.path, sft_cfg.data.train_path, sft_cfg.train.seed = tokenizer_path + ".model", paths["sft"], seed
  if _SFT_STEPS.value:
    sft_cfg.train.steps = _SFT_STEPS.value
  grpo_cfg = load_config("grpo")
  grpo_cfg.tokenizer.path, grpo_cfg.train.seed = tokenizer_path + ".model", seed
  grpo_cfg.data.train_path, grpo_cfg.data.eval_path = paths["prompts"], paths["eval_prompts"]
  grpo_cfg.model.init_checkpoint = os.path.join(root, "sft")
  grpo_cfg.rl.eval_prompts = _EVAL.value
  if _GRPO_STEPS.value is not None:
    grpo_cfg.train.steps = _GRPO_STEPS.value
    grpo_cfg.train.eval_every = max(_GRPO_STEPS.value, 1)

  print(f"== stage 1: SFT from scratch on {len(sft_records)} conversations of a teacher who calls the calculator "
        f"on {100 * _TOOL_FRAC.value:.0f}% of problems and estimates the rest (37 * 48 -> 40 * 50)", flush=True)
  offline.run(sft_cfg, os.path.join(root, "sft"))
  print(f"   [{time.perf_counter() - start:.0f}s]", flush=True)
  print("== stage 2: GRPO over calculator episodes, reward 1 for the exact product", flush=True)
  online.run(grpo_cfg, os.path.join(root, "grpo"))
  evals = _evals(os.path.join(root, "grpo", "metrics.jsonl"))
  sft, grpo = evals[0], evals[-1]
  print(f"\n(greedy episodes on {_EVAL.value} held-out problems, seed {seed}, {time.perf_counter() - start:.0f}s)")
  print(f"tool use: sft={100 * sft['eval/episode/used_tools']:.1f} grpo={100 * grpo['eval/episode/used_tools']:.1f}")
  print(f"accuracy: sft={sft['eval/accuracy']:.1f} grpo={grpo['eval/accuracy']:.1f}")  # The last line.


if __name__ == "__main__":
  app.run(main)
