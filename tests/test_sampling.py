"""Greedy generation (recompute decoder) equals step-by-step argmax of full forwards."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost import sampling
from jaxpost.models import ModelConfig, Transformer


def test_greedy_equals_argmax_of_full_forward_with_ragged_prompts():
  cfg = ModelConfig(vocab_size=23, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
  model = Transformer(cfg, rngs=nnx.Rngs(3))
  graphdef, state = nnx.split(model, nnx.Param)
  prompts = [[5, 6, 7, 8, 9], [3, 4]]  # Different lengths: the short one is left-padded.
  out = sampling.greedy_generate(graphdef, nnx.to_pure_dict(state), prompts, max_new_tokens=6, stop_id=-1)
  for prompt, completion in zip(prompts, out):
    seq = list(prompt)
    for _ in range(6):  # Unpadded reference: one full forward per new token.
      logits = model(jnp.asarray([seq]))
      seq.append(int(jnp.argmax(logits[0, -1])))
    assert completion == seq[len(prompt):]


def test_stop_token_truncates():
  cfg = ModelConfig(vocab_size=23, d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  full = sampling.greedy_generate(graphdef, nnx.to_pure_dict(state), [[1, 2]], max_new_tokens=5, stop_id=-1)[0]
  cut = sampling.greedy_generate(graphdef, nnx.to_pure_dict(state), [[1, 2]], max_new_tokens=5, stop_id=full[2])[0]
  assert cut == full[:full.index(full[2])]
