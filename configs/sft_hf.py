"""SFT of a Hugging Face model (Llama 3, Mistral, Qwen2/2.5, Qwen3, Gemma 2/3) with its own tokenizer and
chat template; the default data are the bundled arithmetic chats, so any model directory runs as is.

  python -m jaxpost.train --config=configs/sft_hf.py --config.model.path=/path/to/hf_model --workdir=/tmp/sft_hf \\
      [--config.data.train_path=my_chats.jsonl] [--config.model.dtype=bfloat16]
  python -m jaxpost.export --workdir=/tmp/sft_hf --out=/tmp/sft_hf_export     # back to a HF directory

The same `--config.model.path` knob works in every algorithm's config: the architecture and weights
come from the directory's config.json and safetensors, the tokenizer from the same folder unless
`--config.tokenizer.path` says otherwise.
"""
import os

from jaxpost.config import base_config

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "arithmetic")


def get_config(arg: str = ""):
  if arg:
    raise ValueError(f"configs/sft_hf.py: takes no variant, got {arg!r}")
  c = base_config()
  c.algorithm = "sft"
  c.model.path = ""              # Required: --config.model.path=DIR.
  c.data.train_path = os.path.join(ASSETS, "sft_train.jsonl")
  c.data.eval_path = os.path.join(ASSETS, "sft_eval.jsonl")
  c.data.seq_len = 256
  c.train.steps = 100
  c.train.batch_size = 8
  c.train.log_every = 10
  c.train.checkpoint_every = 50
  c.optim.lr = 2e-5              # Fine-tuning a pre-trained model: small steps.
  c.optim.warmup_steps = 10
  c.optim.weight_decay = 0.0
  return c
