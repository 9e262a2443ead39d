"""The embedded demo: post-training's story on a laptop CPU, no downloads.

  python -m jaxpost.demo --workdir=runs/demo [--seed=0]

1. base: a 0.4M-parameter transformer pre-trained on procedural arithmetic text; it learns addition,
         and the chat format is new to it.
2. sft:  chat SFT from the base on 400 conversations written by a sloppy teacher who never carries
         (16 + 46 = 52); now it answers in the chat format, and makes the teacher's mistake.
3. grpo: RL with a verifiable reward (1 for the exact sum) from the SFT model: 16 prompts x 8 samples a
         step; it goes past its teacher, which imitation cannot.
All are evaluated by greedy decoding on the same held-out problems (pairs never seen in training),
with the chat template, and the same carrying question is shown answered by each.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from absl import app, flags, logging

from jaxpost.tasks import arithmetic

TEACHER = "no_carry"  # Who writes the SFT replies (arithmetic.TEACHERS): the one who never carries.

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where data, checkpoints and metrics go (wiped first).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for data, init and data order.")
_EVAL = flags.DEFINE_integer("num_eval", 500, "Held-out problems to evaluate on.")
_BASE_STEPS = flags.DEFINE_integer("base_steps", None, "Override the base pre-training steps.")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", None, "Override the SFT steps.")
_GRPO_STEPS = flags.DEFINE_integer("grpo_steps", None, "Override the GRPO steps (0 skips the stage).")


def _write_jsonl(path: str, records) -> None:
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def _load_params(workdir: str, model_cfg, mesh):
  import jax
  from jaxpost import checkpoint, state
  graphdef, shapes, _ = state.abstract_model(model_cfg)
  shardings = state.param_shardings(model_cfg, mesh)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  return graphdef, checkpoint.restore_params(workdir, abstract)


def evaluate(workdir, config, problems, tokenizer, mesh):
  """Greedy accuracy (%) on `problems` with the chat template, and the completions."""
  from jaxpost import sampling
  from jaxpost.models import ModelConfig
  model_cfg = ModelConfig.from_config(config.model, vocab_size=tokenizer.vocab_size)
  graphdef, params = _load_params(workdir, model_cfg, mesh)
  prompts = [tokenizer.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True)[0].tolist()
             for q, _ in problems]
  completions = sampling.greedy_generate(graphdef, params, prompts, max_new_tokens=6,
                                         stop_id=tokenizer.chat_stop_ids[0])
  texts = [tokenizer.decode(c) for c in completions]
  correct = sum(arithmetic.score(t, a) for t, (_, a) in zip(texts, problems))
  return 100.0 * correct / len(problems), texts, (graphdef, params)


def continue_text(model, tokenizer, texts: list[str], n: int = 12) -> list[str]:
  """Greedy plain-text continuations (no chat template): what a base model does with a prompt."""
  from jaxpost import sampling
  graphdef, params = model
  out = sampling.greedy_generate(graphdef, params, [[tokenizer.bos_id] + tokenizer.encode(t) for t in texts],
                                 max_new_tokens=n, stop_id=tokenizer.eos_id)
  return [tokenizer.decode(o) for o in out]


def load_config(stage: str):
  """configs/demo.py:get_config(stage), the bundled file (checkout or installed package)."""
  import importlib.util
  from jaxpost import bundled
  path = bundled.config_path("demo.py")
  spec = importlib.util.spec_from_file_location("jaxpost_demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(stage)


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax warns about the read-only managers that load stages.
  from jaxpost import mesh as mesh_lib, tokenizers
  from jaxpost.loops import offline

  start = time.perf_counter()
  root, seed = _WORKDIR.value, _SEED.value
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(os.path.join(root, "data"))
  pretrain_path = os.path.join(root, "data", "pretrain.jsonl")
  sft_path = os.path.join(root, "data", "sft.jsonl")
  _write_jsonl(pretrain_path,  # One question a record: 500 steps x 64 rows x 2 packed.
               arithmetic.pretraining_records(64000, seed=seed, question_frac=1.0, lines_per_record=1))
  _write_jsonl(sft_path, arithmetic.chat_records(400, seed=seed + 1, teacher=TEACHER))
  teacher = arithmetic.TEACHERS[TEACHER]
  pairs = arithmetic.held_out_pairs(_EVAL.value, seed=seed + 2)
  problems = [(arithmetic.question(a, b), a + b) for a, b in pairs]
  teacher_acc = 100.0 * sum(teacher(a, b) == a + b for a, b in pairs) / len(pairs)
  prompts_path = os.path.join(root, "data", "prompts.jsonl")
  eval_prompts_path = os.path.join(root, "data", "eval_prompts.jsonl")
  _write_jsonl(prompts_path, arithmetic.prompt_records(arithmetic.TRAIN_PAIRS))
  _write_jsonl(eval_prompts_path, [{"prompt": q, "answer": str(a)} for q, a in problems])

  base_cfg = load_config("base")
  base_cfg.data.train_path, base_cfg.train.seed = pretrain_path, seed
  if _BASE_STEPS.value:
    base_cfg.train.steps = _BASE_STEPS.value
  sft_cfg = load_config("sft")
  sft_cfg.data.train_path, sft_cfg.train.seed = sft_path, seed
  sft_cfg.model.init_checkpoint = os.path.join(root, "base")
  if _SFT_STEPS.value:
    sft_cfg.train.steps = _SFT_STEPS.value
  grpo_cfg = load_config("grpo")
  # The loop's own evaluation (eval/accuracy every 25 steps, first 200 problems) records the curve.
  grpo_cfg.data.train_path, grpo_cfg.data.eval_path, grpo_cfg.train.seed = prompts_path, eval_prompts_path, seed
  grpo_cfg.model.init_checkpoint = os.path.join(root, "sft")
  if _GRPO_STEPS.value is not None:
    grpo_cfg.train.steps = _GRPO_STEPS.value
  tokenizer = tokenizers.load(base_cfg.tokenizer.path)
  mesh = mesh_lib.make_mesh(base_cfg)

  print("== stage 1: pre-train the base model on arithmetic text", flush=True)
  offline.run(base_cfg, os.path.join(root, "base"))
  base_acc, base_texts, base_model = evaluate(os.path.join(root, "base"), base_cfg, problems, tokenizer, mesh)
  plain = continue_text(base_model, tokenizer, [q for q, _ in problems], n=8)  # "\nans\n" + 3 digits.
  plain_acc = 100.0 * sum(arithmetic.score(t, a) for t, (_, a) in zip(plain, problems)) / len(problems)
  print(f"base accuracy: chat prompts {base_acc:.1f}%, plain-text prompts {plain_acc:.1f}% "
        f"(it learnt arithmetic from text; the chat format is new to it)  [{time.perf_counter() - start:.0f}s]",
        flush=True)

  print("== stage 2: SFT on chat conversations from a teacher who never carries (16 + 46 = 52)", flush=True)
  offline.run(sft_cfg, os.path.join(root, "sft"))
  sft_acc, sft_texts, _ = evaluate(os.path.join(root, "sft"), sft_cfg, problems, tokenizer, mesh)
  print(f"sft accuracy (chat prompts): {sft_acc:.1f}% (the teacher's own: {teacher_acc:.1f}%)  "
        f"[{time.perf_counter() - start:.0f}s]", flush=True)

  grpo_acc, grpo_texts = None, None
  if grpo_cfg.train.steps:
    from jaxpost.loops import online
    print("== stage 3: GRPO with a verifiable reward (exact sum)", flush=True)
    online.run(grpo_cfg, os.path.join(root, "grpo"))
    grpo_acc, grpo_texts, _ = evaluate(os.path.join(root, "grpo"), grpo_cfg, problems, tokenizer, mesh)
    print(f"grpo accuracy (chat prompts): {grpo_acc:.1f}%  [{time.perf_counter() - start:.0f}s]", flush=True)

  # Show a question that needs a carry: the one the teacher gets wrong.
  shown = next((i for i, (a, b) in enumerate(pairs) if teacher(a, b) != a + b), 0)
  q, a = problems[shown]
  print(f"\nthe same held-out question, {q!r} (answer {a}; the teacher would say "
        f"{teacher(*pairs[shown])}):")
  print(f"  base, as plain text  -> {q + plain[shown]!r}")
  print(f"  base, chat template  -> {base_texts[shown]!r}")
  print(f"  sft,  chat template  -> {sft_texts[shown]!r}")
  line = f"accuracy: base={base_acc:.1f} sft={sft_acc:.1f}"
  if grpo_acc is not None:
    print(f"  grpo, chat template  -> {grpo_texts[shown]!r}")
    line += f" grpo={grpo_acc:.1f}"
  print(f"\n(percent of {len(problems)} held-out problems, seed {seed}, {time.perf_counter() - start:.0f}s)")
  print(line)  # The last line.


if __name__ == "__main__":
  app.run(main)
