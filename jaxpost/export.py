"""Export a training checkpoint as a Hugging Face model directory.

  python -m jaxpost.export --workdir=runs/sft_hf --out=exported/ [--step=N] [--dtype=bfloat16]
  python -m jaxpost.export --workdir=runs/sft_lora --out=adapter/            # LoRA run: a PEFT adapter dir
  python -m jaxpost.export --workdir=runs/sft_lora --out=merged/ --merge_lora  # LoRA folded into the weights

Reads WORKDIR/model.json (written when the run started) for the architecture, restores the params of
the latest (or `--step`) checkpoint, and writes `config.json` + safetensors (sharded with an index past
`--max_shard_gb`) that `transformers.AutoModelForCausalLM.from_pretrained(out)` loads. The tokenizer
files of the run (a HF folder's tokenizer.json, tokenizer_config.json, ...; or a sentencepiece model as
tokenizer.model) are copied next to them. A model imported from HF keeps its original config.json's
other fields (token ids, max_position_embeddings, ...).

A LoRA run's checkpoints hold only the adapters; its base is rebuilt from what model.json names (the
HF directory, the init checkpoint, or the seed of a fresh init). `--merge_lora` writes the merged model;
otherwise `out` gets `adapter_config.json` + `adapter_model.safetensors` for `peft.PeftModel`, with the
base written to `out/base` when the run did not start from a HF directory.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (with model.json and checkpoints/).")
_OUT = flags.DEFINE_string("out", None, "Output directory for the HF model.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "Weight dtype (default: as trained).")
_MAX_SHARD_GB = flags.DEFINE_float("max_shard_gb", 5.0, "Largest safetensors shard in GiB.")
_MERGE_LORA = flags.DEFINE_bool("merge_lora", False, "LoRA runs: fold the adapters into the weights.")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "tokenizer.model", "chat_template.jinja", "added_tokens.json", "vocab.json", "merges.txt")


def copy_tokenizer(tokenizer_path: str, out: str) -> list[str]:
  """Copies the tokenizer files of a HF folder, or a sentencepiece file as tokenizer.model. Returns them."""
  if not tokenizer_path:
    return []
  if os.path.isfile(tokenizer_path):
    shutil.copyfile(tokenizer_path, os.path.join(out, "tokenizer.model"))
    return ["tokenizer.model"]
  copied = []
  for name in TOKENIZER_FILES:
    src = os.path.join(tokenizer_path, name)
    if os.path.isfile(src):
      shutil.copyfile(src, os.path.join(out, name))
      copied.append(name)
  return copied


def export(workdir: str, out: str, *, step: int | None = None, dtype: str | None = None,
           max_shard_bytes: int = 5 * 2**30, merge_lora: bool = False) -> list[str]:
  """Writes the HF directory `out` from `workdir`'s checkpoint; returns the files written."""
  import dataclasses

  import jax
  from jaxpost import checkpoint, state
  from jaxpost import workdir as workdir_lib
  from jaxpost.models import hf, lora

  model_cfg, record = workdir_lib.read_model_record(workdir)
  _, shapes, _ = state.abstract_model(model_cfg)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  to_abstract = lambda tree: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), tree)
  hf_config = None
  if os.path.isfile(os.path.join(workdir, "hf_config.json")):
    with open(os.path.join(workdir, "hf_config.json")) as f:
      hf_config = json.load(f)
  save = lambda cfg, params, where: hf.save_pretrained(cfg, where, params, base_config=hf_config, dtype=dtype,
                                                       max_shard_bytes=max_shard_bytes)
  if not model_cfg.lora_rank:
    params = checkpoint.restore_params(workdir, to_abstract(shapes), step, params_key=record.get("params_key", ""))
    files = save(model_cfg, params, out)
    return files + copy_tokenizer(record.get("tokenizer", ""), out)

  adapters = checkpoint.restore_params(workdir, to_abstract(lora.split(shapes)[1]), step)
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=jax.devices()[:1])
  base = workdir_lib.base_params(model_cfg, state.param_shardings(model_cfg, mesh), mesh, hf_path=record["hf_path"],
                            init_checkpoint=record["init_checkpoint"], seed=record["seed"], log=lambda _: None)
  plain = dataclasses.replace(model_cfg, lora_rank=0)
  if merge_lora:
    files = save(plain, lora.merged(lora.join(base, adapters), model_cfg), out)
    return files + copy_tokenizer(record.get("tokenizer", ""), out)
  base_dir = record["hf_path"]
  files = []
  if not base_dir:
    base_dir = os.path.join(out, "base")
    files += [os.path.join("base", f) for f in save(plain, base, base_dir)]
    files += [os.path.join("base", f) for f in copy_tokenizer(record.get("tokenizer", ""), base_dir)]
  files += hf.save_peft_adapter(model_cfg, adapters, out, base_model=os.path.abspath(base_dir))
  return files + copy_tokenizer(record.get("tokenizer", ""), out)


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  from jaxpost.models.hf import UnsupportedModelError
  from jaxpost.models.safetensors_io import CheckpointError
  try:
    files = export(_WORKDIR.value, _OUT.value, step=_STEP.value, dtype=_DTYPE.value,
                   max_shard_bytes=int(_MAX_SHARD_GB.value * 2**30), merge_lora=_MERGE_LORA.value)
  except (FileNotFoundError, CheckpointError, UnsupportedModelError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {len(files)} files to {_OUT.value}: {', '.join(files)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
