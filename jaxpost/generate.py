"""Sample from a trained model with the rollout engine (jaxpost/engine), streaming the reply to the terminal.

  python -m jaxpost.generate --model=runs/demo/sft --config=configs/demo.py:sft --chat --prompt "What is 12+7?"
  python -m jaxpost.generate --model=runs/demo/base --prompt "12+7=" --max_new_tokens=8 --temperature=0

  python -m jaxpost.generate --model=/path/to/hf_model --chat --prompt "Hello"

`--model` is a Hugging Face model directory (config.json + safetensors; its tokenizer folder too), or a
training workdir: its latest checkpoint's params are read, with the architecture and tokenizer the run
recorded in WORKDIR/model.json (workdirs from before that record need `--config`, the config the run
trained with; default configs/demo.py:base). `--tokenizer` overrides the tokenizer either way. `--chat` wraps the prompt in the tokenizer's chat template (built-in
ChatML, or a Hugging Face folder's) with a generation prompt and stops at `tokenizer.chat_stop_ids`
(end of turn, eos); otherwise generation stops at the tokenizer's eos.
"""
from __future__ import annotations

import glob
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from jaxpost import bundled

_DEFAULT_CONFIG = bundled.config_path("demo.py") + ":base"

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "The config the model was trained with.",
                                          lock_config=True)
_MODEL = flags.DEFINE_string("model", None, "Training workdir (WORKDIR/checkpoints) to load params from.")
_PROMPT = flags.DEFINE_string("prompt", None, "Prompt text.")
_CHAT = flags.DEFINE_bool("chat", False, "Wrap the prompt as a user turn of the chat template.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Completion budget in tokens.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0 = greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Tokenizer path (default: config.tokenizer.path).")


class ModelDirError(ValueError):
  pass


def model_kind(path: str) -> str:
  """'hf' for a Hugging Face model directory, 'workdir' for a training workdir; ModelDirError otherwise."""
  if os.path.isfile(os.path.join(path, "config.json")):
    return "hf"
  if glob.glob(os.path.join(path, "*.safetensors")):
    raise ModelDirError(f"--model={path}: has *.safetensors but no config.json; a Hugging Face model directory "
                        "needs both")
  if not os.path.isdir(os.path.join(path, "checkpoints")):
    raise ModelDirError(f"--model={path}: no checkpoints/ directory; expected a jaxpost training workdir or a "
                        "Hugging Face model directory (config.json + *.safetensors)")
  return "workdir"


def load_params(workdir: str, model_cfg, mesh):
  """(graphdef, params) of the latest checkpoint in `workdir`, sharded per the mesh's logical rules."""
  import jax
  from jaxpost import checkpoint, state
  graphdef, shapes, _ = state.abstract_model(model_cfg)
  shardings = state.param_shardings(model_cfg, mesh)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  return graphdef, checkpoint.restore_params(workdir, abstract)


def encode_prompt(text: str, tokenizer, chat: bool) -> tuple[list[int], tuple[int, ...]]:
  """(prompt ids with bos, stop ids): chat template + its stop ids with --chat, plain text + eos otherwise."""
  if chat:
    ids = tokenizer.encode_chat([{"role": "user", "content": text}], add_generation_prompt=True)[0].tolist()
    return ids, tokenizer.chat_stop_ids
  bos = [tokenizer.bos_id] if tokenizer.adds_bos else []
  return bos + tokenizer.encode(text), (() if tokenizer.eos_id is None else (tokenizer.eos_id,))


def stream_text(graphdef, params, prompt: list[int], sampling_cfg, tokenizer, out=sys.stdout,
                steps_per_check: int = 4) -> list[int]:
  """Samples with the rollout engine (one slot, a pool sized to this prompt + budget) and writes the
  completion's text to `out` as tokens reach the host, `steps_per_check` at a time (the stop token is not
  printed); returns the ids."""
  from flax import nnx
  from jaxpost import engine
  page_size, max_seq_len = 16, len(prompt) + sampling_cfg.max_new_tokens
  config = engine.EngineConfig(num_slots=1, page_size=page_size, num_pages=-(-max_seq_len // page_size),
                               max_seq_len=max_seq_len, steps_per_check=steps_per_check)
  sampler = engine.Engine(graphdef, nnx.merge(graphdef, params).cfg, config)
  request = engine.Request(prompt=prompt, max_new_tokens=sampling_cfg.max_new_tokens,
                           stop_token_ids=sampling_cfg.stop_token_ids, seed=sampling_cfg.seed)
  ids, printed = [], ""

  def show(request_index, sample, tokens):
    nonlocal printed
    ids.extend(tokens)
    # Whole-prefix decode: pieces alone lose spaces and split characters.
    text = tokenizer.decode([t for t in ids if t not in sampling_cfg.stop_token_ids])
    if text.startswith(printed):
      out.write(text[len(printed):])
      out.flush()
      printed = text

  for _ in sampler.stream(params, [request], sampling_cfg, on_tokens=show):
    pass
  return ids


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  from flax import nnx
  from jaxpost import mesh as mesh_lib, sampling, state, tokenizers
  from jaxpost.models import ModelConfig

  from jaxpost import workdir as workdir_lib
  from jaxpost.models import hf
  from jaxpost.models.safetensors_io import CheckpointError

  config = _CONFIG.value
  try:
    kind = model_kind(_MODEL.value)
    mesh = mesh_lib.make_mesh(config)
    has_record = os.path.isfile(os.path.join(_MODEL.value, workdir_lib.MODEL_RECORD))
    if kind == "hf":
      tokenizer = tokenizers.load(_TOKENIZER.value or _MODEL.value)
    elif has_record:
      model_cfg, record = workdir_lib.read_model_record(_MODEL.value)
      tokenizer = tokenizers.load(_TOKENIZER.value or record["tokenizer"] or config.tokenizer.path)
    else:
      tokenizer = tokenizers.load(_TOKENIZER.value or config.tokenizer.path)
      model_cfg = ModelConfig.from_config(config.model, vocab_size=tokenizer.vocab_size)
    with jax.set_mesh(mesh):
      if kind == "hf":
        model = hf.from_pretrained(_MODEL.value, mesh=mesh)
        graphdef, params = nnx.split(model, nnx.Param)
        params = nnx.to_pure_dict(params)
      elif has_record:
        graphdef = state.abstract_model(model_cfg)[0]
        params = workdir_lib.load_trained(_MODEL.value, model_cfg, record, mesh)
      else:
        graphdef, params = load_params(_MODEL.value, model_cfg, mesh)
      prompt, stop_ids = encode_prompt(_PROMPT.value, tokenizer, _CHAT.value)
      cfg = sampling.SamplingConfig(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                                    top_p=_TOP_P.value, stop_token_ids=stop_ids, seed=_SEED.value)
      start = time.perf_counter()
      ids = stream_text(graphdef, params, prompt, cfg, tokenizer)
  except (ModelDirError, FileNotFoundError, ValueError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  seconds = time.perf_counter() - start
  print()
  print(f"[{len(ids)} tokens in {seconds:.2f}s, {len(ids) / seconds:.1f} tokens/s incl. compile]", file=sys.stderr)


if __name__ == "__main__":
  flags.mark_flags_as_required(["model", "prompt"])
  try:
    argv = bundled.resolve_config_flag(sys.argv)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv)
