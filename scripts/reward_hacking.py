"""Issue 28's experiment at CPU size: GRPO games a lenient math reward, and cannot game jaxpost's `math`.

    python scripts/reward_hacking.py --workdir=runs/reward_hacking [--seed=0] [--grpo_steps=150]

1. base: the demo's model pre-trained on arithmetic text, half questions (`what is a + b?\\nans\\nc`),
   half equations (`a + b = c`), so it can compute after an `=`.
2. sft: chat SFT on 400 replies that show their work, `15 + 86 = 91`, written by the demo's sloppy
   teacher who never carries; the model restates the sum before answering, as chat models do.
3. grpo, twice from that SFT model, 16 new tokens, otherwise the demo's GRPO settings:
   - `lenient`: rewarded by `lenient_math` below, jaxpost's `math` before issue 28 (math-verify reads the
     whole completion and evaluates its last expression, so `15 + 86 =` scores 1 for 101); `math` rides
     along at weight 0, so metrics.jsonl logs the honest score of the same samples.
   - `fixed`: rewarded by `math` (flexible mode), `lenient_math` at weight 0.
Prints each run's held-out greedy curve under both rewards, the truncation counts the loops log, and
greedy replies before and after. Takes ~10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time

from absl import app, flags, logging

from jaxpost.tasks import arithmetic

_WORKDIR = flags.DEFINE_string("workdir", "runs/reward_hacking", "Where data, checkpoints and metrics go (wiped).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for data, init and data order.")
_GRPO_STEPS = flags.DEFINE_integer("grpo_steps", 150, "GRPO steps of each run.")
_MAX_NEW = 16  # "15 + 86 = 101" is 13 tokens, <|im_end|> one more.
SHOWN = ("what is 15 + 86?", "what is 20 + 12?", "what is 47 + 38?")


def lenient_math(completion: str, example: dict) -> float:
  """The pre-issue-28 `math`: math-verify on the whole completion; it evaluates the last expression it
  finds, so a restated question (`15 + 86`, or `15 + 86 =` cut at the budget) equals its own answer."""
  from math_verify import parse, verify
  gold, pred = parse(f"${example['answer']}$", parsing_timeout=None), parse(completion, parsing_timeout=None)
  return float(bool(gold and pred and verify(gold, pred, timeout_seconds=None)))


lenient_math.verifier = True  # It claims 1.0 means correct: the run's eval/accuracy is computed from it.


def write_jsonl(path: str, records) -> None:
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


def demo_config(stage: str):
  """The bundled configs/demo.py:get_config(stage)."""
  import importlib.util
  from jaxpost import bundled
  spec = importlib.util.spec_from_file_location("jaxpost_demo_config", bundled.config_path("demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(stage)


def greedy_replies(workdir: str, tokenizer, mesh, questions) -> list[str]:
  from jaxpost import sampling, state
  from jaxpost import workdir as workdir_lib
  model_cfg, record = workdir_lib.read_model_record(workdir)
  graphdef = state.abstract_model(model_cfg)[0]
  params = workdir_lib.load_trained(workdir, model_cfg, record, mesh)
  prompts = [tokenizer.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True)[0].tolist()
             for q in questions]
  out = sampling.greedy_generate(graphdef, params, prompts, max_new_tokens=_MAX_NEW, stop_id=tokenizer.chat_stop_ids[0])
  return [tokenizer.decode(o) for o in out]


def curve(workdir: str, eval_prompts: int) -> list[dict]:
  """Per evaluation: step, the training reward's accuracy, the honest `math` accuracy, rows cut at the budget."""
  rows = []
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    r = json.loads(line)
    if "eval/accuracy" in r:
      honest = r.get("eval/math/anchored", 0) + r.get("eval/math/fallback", 0)
      rows.append({"step": r["step"], "trained_reward": r["eval/accuracy"], "math": 100.0 * honest / eval_prompts,
                   "truncated": r.get("eval/truncated"), "truncated_rewarded": r.get("eval/truncated_rewarded")})
  return rows


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.ERROR)
  from jaxpost import mesh as mesh_lib, tokenizers
  from jaxpost.loops import offline, online
  from jaxpost.rewards import register

  register("lenient_math")(lenient_math)
  start, root, seed = time.perf_counter(), _WORKDIR.value, _SEED.value
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(os.path.join(root, "data"))
  data = {name: os.path.join(root, "data", f"{name}.jsonl") for name in ("pretrain", "sft", "prompts", "eval")}
  write_jsonl(data["pretrain"], arithmetic.pretraining_records(64000, seed=seed, question_frac=0.5,
                                                                     lines_per_record=1))
  rng = random.Random(seed + 1)
  sloppy = arithmetic.TEACHERS["no_carry"]
  write_jsonl(data["sft"], [
      {"messages": [{"role": "user", "content": arithmetic.question(a, b)},
                    {"role": "assistant", "content": f"{a} + {b} = {sloppy(a, b)}"}]}
      for a, b in (rng.choice(arithmetic.TRAIN_PAIRS) for _ in range(400))])
  write_jsonl(data["prompts"], arithmetic.prompt_records(arithmetic.TRAIN_PAIRS))
  write_jsonl(data["eval"], arithmetic.prompt_records(arithmetic.held_out_pairs(200, seed=seed + 2)))

  base = demo_config("base")
  base.data.train_path, base.train.seed = data["pretrain"], seed
  sft = demo_config("sft")
  sft.data.train_path, sft.train.seed, sft.model.init_checkpoint = data["sft"], seed, os.path.join(root, "base")
  tokenizer = tokenizers.load(base.tokenizer.path)
  mesh = mesh_lib.make_mesh(base)
  print("== base, then SFT on replies that show their work (15 + 86 = 91)", flush=True)
  offline.run(base, os.path.join(root, "base"))
  offline.run(sft, os.path.join(root, "sft"))
  before = greedy_replies(os.path.join(root, "sft"), tokenizer, mesh, SHOWN)

  results = {}
  for name, rewards in (("lenient", "lenient_math,math:0"), ("fixed", "math,lenient_math:0")):
    print(f"== grpo rewarded by {rewards.split(',')[0]}  [{time.perf_counter() - start:.0f}s]", flush=True)
    grpo = demo_config("grpo")
    grpo.data.train_path, grpo.data.eval_path, grpo.train.seed = data["prompts"], data["eval"], seed
    grpo.model.init_checkpoint, grpo.train.steps = os.path.join(root, "sft"), _GRPO_STEPS.value
    grpo.rl.reward_fns, grpo.rl.max_new_tokens = rewards, _MAX_NEW
    online.run(grpo, os.path.join(root, name))
    results[name] = (curve(os.path.join(root, name), grpo.rl.eval_prompts),
                     greedy_replies(os.path.join(root, name), tokenizer, mesh, SHOWN))

  print(f"\nheld-out greedy accuracy (% of 200), seed {seed}, {time.perf_counter() - start:.0f}s:")
  print("| run | step | accuracy under its reward | under math | cut at the budget | cut and rewarded |")
  print("|---|---|---|---|---|---|")
  for name, (rows, _) in results.items():
    for r in rows:
      print(f"| {name} | {r['step']} | {r['trained_reward']:.1f} | {r['math']:.1f} | {r['truncated']} | "
            f"{r['truncated_rewarded']} |")
  print("\ngreedy replies:")
  for i, q in enumerate(SHOWN):
    print(f"  {q!r}: sft {before[i]!r}; lenient {results['lenient'][1][i]!r}; fixed {results['fixed'][1][i]!r}")


if __name__ == "__main__":
  app.run(main)
