"""Export a training checkpoint as a Hugging Face model directory.

  python -m jaxpost.export --workdir=runs/sft_hf --out=exported/ [--step=N] [--dtype=bfloat16]

Reads WORKDIR/model.json (written when the run started) for the architecture, restores the params of
the latest (or `--step`) checkpoint, and writes `config.json` + safetensors (sharded with an index past
`--max_shard_gb`) that `transformers.AutoModelForCausalLM.from_pretrained(out)` loads. The tokenizer
files of the run (a HF folder's tokenizer.json, tokenizer_config.json, ...; or a sentencepiece model as
tokenizer.model) are copied next to them. A model imported from HF keeps its original config.json's
other fields (token ids, max_position_embeddings, ...).
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
           max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes the HF directory `out` from `workdir`'s checkpoint; returns the files written."""
  import jax
  from jaxpost import checkpoint, state
  from jaxpost.loops import common
  from jaxpost.models import hf

  model_cfg, record = common.read_model_record(workdir)
  _, shapes, _ = state.abstract_model(model_cfg)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
  params = checkpoint.restore_params(workdir, abstract, step)
  base = None
  base_path = os.path.join(workdir, "hf_config.json")
  if os.path.isfile(base_path):
    with open(base_path) as f:
      base = json.load(f)
  files = hf.save_pretrained(model_cfg, out, params, base_config=base, dtype=dtype, max_shard_bytes=max_shard_bytes)
  return files + copy_tokenizer(record.get("tokenizer", ""), out)


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  from jaxpost.models.hf import UnsupportedModelError
  from jaxpost.models.safetensors_io import CheckpointError
  try:
    files = export(_WORKDIR.value, _OUT.value, step=_STEP.value, dtype=_DTYPE.value,
                   max_shard_bytes=int(_MAX_SHARD_GB.value * 2**30))
  except (FileNotFoundError, CheckpointError, UnsupportedModelError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {len(files)} files to {_OUT.value}: {', '.join(files)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
