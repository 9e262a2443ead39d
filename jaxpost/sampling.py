"""The rollout engine: KV-cache sampling from the trainer's own params (no copy, same shardings).

  prompts -> left-pad to (B, P) -> one prefill writes the cache (L x (B, P + N, K, hd)) -> repeat rows
  G times -> lax.while_loop: sample a token per row, feed it, until every row stopped or N tokens.

Left padding (segment id 0, positions counted from each prompt's first token) makes every row write
the same cache column each step, so the cache needs one scalar index. The sampler's log-probs are
under the distribution it really drew from (temperature, then top-k, then top-p renormalised; a
point mass, log-prob 0, when greedy), which is what importance ratios against the policy need at
temperature 1 without truncation. Row r of the output is sample r % G of prompt r // G.

Deviations from a production engine (vLLM-style): no continuous batching or paged cache; a finished
row keeps its slot (emitting pad) until the whole batch stops; top-p alone sorts the full vocabulary.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost import mesh as mesh_lib
from jaxpost.models import kv_cache

PROMPT_BUCKET = 16  # Prompt buffers are padded to a multiple of this, so similar batches share a compile.
MIN_MODEL_ROWS = 2  # The model runs on at least this many rows (see _generate: a one-row GEMV lowers badly).
# XLA:GPU options that record the whole decode loop, its condition included, as one CUDA graph (command
# buffers with on-device WHILE/CONDITIONAL; CUDA >= 12.3, XLA drops them silently below). A batch-1 decode
# step on an H100 was 376 kernels and 1.56 ms against 0.90 ms of HBM traffic; if kernel launches and the
# per-step read of the loop predicate are the gap, graphs close it. Other backends ignore the options.
# Opt-in (`generate(..., compiler_options=CUDA_GRAPHS)`, config `rl.cuda_graphs`) until timed on a GPU.
CUDA_GRAPHS = (("xla_gpu_enable_command_buffer", "FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,CONDITIONAL,WHILE"),
               ("xla_gpu_graph_min_graph_size", 1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
  max_new_tokens: int = 64               # Completion budget N per row.
  temperature: float = 1.0               # Logits are divided by this; 0 = greedy (argmax).
  top_k: int = 0                         # Keep only the k most likely tokens (0 = off).
  top_p: float = 1.0                     # Keep the smallest set with cumulative prob >= p (1 = off).
  num_samples: int = 1                   # Samples G per prompt (rows of a GRPO group).
  stop_token_ids: tuple[int, ...] = ()   # A row ends after emitting any of these (it is kept in the output).
  seed: int = 0                          # PRNG seed; same seed, prompts and params -> same samples.

  def __post_init__(self):
    object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
    if self.max_new_tokens < 1:
      raise ValueError(f"SamplingConfig.max_new_tokens: must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"SamplingConfig.temperature: must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k: must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig.top_p: must be in (0, 1], got {self.top_p}")
    if self.num_samples < 1:
      raise ValueError(f"SamplingConfig.num_samples: must be >= 1, got {self.num_samples}")


@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """Completions of B prompts x G samples, row r = sample r % G of prompt r // G.

  tokens: (B*G, N) int32, pad_id after each row's end; lengths: (B*G,) int32, stop token included;
  finish_reasons: 'stop' (emitted a stop token) or 'length' (hit N); logps: (B*G, N) f32 log-probs of
  the sampled tokens under the sampling distribution, 0 after the end.
  """
  tokens: np.ndarray
  lengths: np.ndarray
  finish_reasons: list[str]
  logps: np.ndarray

  def completions(self) -> list[list[int]]:
    return [row[:n] for row, n in zip(self.tokens.tolist(), self.lengths.tolist())]


# ---------------------------------------------------------------- Token selection

def sample_logits(logits: jax.Array, key: jax.Array, sampling: SamplingConfig, *, temperature=None, top_p=None):
  """logits (B, V) f32 -> (tokens (B,) int32, logps (B,) f32 under the truncated, tempered distribution).

  Order as in HF: divide by temperature, keep the top k, then keep the smallest prefix (by probability)
  whose cumulative probability, renormalised after top-k, reaches top_p. The config decides which
  steps run; `temperature` / `top_p` (traced scalars) replace its values so they need no recompile."""
  temperature = sampling.temperature if temperature is None else temperature
  top_p = sampling.top_p if top_p is None else top_p
  if sampling.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.zeros(logits.shape[:1], jnp.float32)
  logits = logits.astype(jnp.float32) / temperature
  vocab_index = None
  if sampling.top_k and sampling.top_k < logits.shape[-1]:
    logits, vocab_index = jax.lax.top_k(logits, sampling.top_k)  # (B, k) sorted descending
  if sampling.top_p < 1.0:
    if vocab_index is None:
      vocab_index = jnp.argsort(-logits, axis=-1)  # (B, V)
      logits = jnp.take_along_axis(logits, vocab_index, axis=-1)
    probs = jax.nn.softmax(logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # Kept iff the more likely tokens sum to < p.
    logits = jnp.where(mass_before < top_p, logits, -jnp.inf)
  # log p(choice) = logit[choice] - logsumexp(logits): no (B, V) log-softmax is written, which at
  # large batch and vocabulary is a visible share of a memory-bound decode step.
  choice = jax.random.categorical(key, logits, axis=-1)  # (B,) argmax(logits + Gumbel noise)
  logp = jnp.take_along_axis(logits, choice[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(logits, axis=-1)
  token = choice if vocab_index is None else jnp.take_along_axis(vocab_index, choice[:, None], axis=-1)[:, 0]
  return token.astype(jnp.int32), logp


def _static(sampling: SamplingConfig) -> SamplingConfig:
  """The compile-time part of a config: which steps run and the shapes. Seed, temperature, top_p and
  stop ids travel as traced values (`_traced`), so changing them reuses the compiled sampler."""
  return dataclasses.replace(sampling, seed=0, temperature=float(sampling.temperature > 0),
                             top_p=1.0 if sampling.top_p == 1.0 else 0.5, stop_token_ids=())


def _traced(sampling: SamplingConfig) -> dict:
  stop = list(sampling.stop_token_ids)
  stop += [-1] * (max(8, -(-len(stop) // 8) * 8) - len(stop))  # -1-padded to a multiple of 8: fewer shapes.
  return {"key": jax.random.PRNGKey(sampling.seed), "temperature": jnp.float32(sampling.temperature),
          "top_p": jnp.float32(sampling.top_p), "stop_ids": jnp.asarray(stop, jnp.int32)}


# ---------------------------------------------------------------- Forward with the cache

def _last_logits(model, hidden):
  """hidden (B, T, D) -> f32 logits (B, V) of the last column."""
  return model.logits(hidden[:, -1])  # (B, V), soft-capped like the trainer's


def _prefill(model, tokens, segment_ids, positions, max_len):
  """Writes the prompts (B, P) into a fresh cache of max_len columns -> (next-token logits (B, V), cache)."""
  cache = kv_cache.init(model.cfg, tokens.shape[0], max_len)
  hidden, cache = model.decode_hidden(tokens, positions, segment_ids, cache)
  return _last_logits(model, hidden), cache


def _decode(model, cache, token, position):
  """Feeds one token per row (B,) at `position` (B,) -> (next-token logits (B, V), cache)."""
  ones = jnp.ones_like(token)[:, None]
  hidden, cache = model.decode_hidden(token[:, None], position[:, None], ones, cache)
  return _last_logits(model, hidden), cache


def _left_pad(prompts: list[list[int]], pad_id: int):
  """Prompts -> tokens, segment_ids (B, P) int32, left-padded to a multiple of PROMPT_BUCKET."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError(f"prompts: need at least one prompt and no empty ones, got lengths {[len(p) for p in prompts]}")
  width = -(-max(len(p) for p in prompts) // PROMPT_BUCKET) * PROMPT_BUCKET
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  segment_ids = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):] = p
    segment_ids[i, width - len(p):] = 1
  return tokens, segment_ids


def _positions(segment_ids):
  return jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)  # (B, P): 0 on the padding


# ---------------------------------------------------------------- Batched generation

def _generate(graphdef, params, tokens, segment_ids, traced, *, sampling: SamplingConfig, pad_id: int):
  """Prefill + while_loop decode. tokens, segment_ids (B, P) -> tokens, logps (B*G, N), lengths, stopped (B*G,).

  A single row (B * G = 1) runs the model on two: with one, every projection is a vector-matrix dot,
  which XLA on GPU (jax 0.11) rewrites into a multiply that writes a weight-sized temporary, then a
  reduction (seen in the compiled H100 program). The shadow row repeats row 0's prompt and tokens;
  only row 0 is sampled.
  """
  key, stop_ids = traced["key"], traced["stop_ids"]
  n, g = sampling.max_new_tokens, sampling.num_samples
  rows = tokens.shape[0] * g  # B*G sampled rows
  shadow = max(MIN_MODEL_ROWS - rows, 0)
  if shadow:
    tokens, segment_ids = (jnp.concatenate([x, jnp.repeat(x[-1:], shadow, axis=0)]) for x in (tokens, segment_ids))
  model = nnx.merge(graphdef, params)
  tokens = mesh_lib.shard_like(tokens, kv_cache.ROWS_LOGICAL)  # Rows over (data, fsdp) under a mesh.
  segment_ids = mesh_lib.shard_like(segment_ids, kv_cache.ROWS_LOGICAL)
  positions = _positions(segment_ids)
  logits, cache = _prefill(model, tokens, segment_ids, positions, tokens.shape[1] + n)
  cache = kv_cache.repeat_rows(cache, g)
  logits = jnp.repeat(logits, g, axis=0)[:rows]  # (B*G, V)
  first_position = jnp.repeat(positions[:, -1] + 1, g)  # (B*G + shadow,) position of completion token 0

  def emit(i, logits, done, out):
    """Samples completion token i for the rows still running and records it."""
    token, logp = sample_logits(logits, jax.random.fold_in(key, i), sampling, temperature=traced["temperature"],
                                top_p=traced["top_p"])
    token, logp = jnp.where(done, pad_id, token), jnp.where(done, 0.0, logp)
    out_tokens, out_logps, lengths = out
    out = (out_tokens.at[:, i].set(token), out_logps.at[:, i].set(logp), lengths + (~done).astype(jnp.int32))
    return token, done | jnp.isin(token, stop_ids), out

  out = (jnp.full((rows, n), pad_id, jnp.int32), jnp.zeros((rows, n), jnp.float32), jnp.zeros((rows,), jnp.int32))
  token, done, out = emit(0, logits, jnp.zeros((rows,), bool), out)

  def cond(carry):
    i, _, done, _, _ = carry
    return (i < n) & ~jnp.all(done)

  def body(carry):
    i, token, done, cache, out = carry
    fed = jnp.concatenate([token, jnp.repeat(token[-1:], shadow)]) if shadow else token  # (B*G + shadow,)
    logits, cache = _decode(model, cache, fed, first_position + i - 1)
    token, done, out = emit(i, logits[:rows], done, out)
    return i + 1, token, done, cache, out

  _, _, done, _, (out_tokens, out_logps, lengths) = jax.lax.while_loop(cond, body, (1, token, done, cache, out))
  return out_tokens, out_logps, lengths, done


@functools.lru_cache(maxsize=None)
def generate_jit(compiler_options: tuple = ()):
  """`_generate` jitted with these XLA compiler options ((name, value) pairs; () = the defaults)."""
  return jax.jit(_generate, static_argnames=("graphdef", "sampling", "pad_id"),
                 compiler_options=dict(compiler_options) or None)


def generate(graphdef, params, prompt_tokens: list[list[int]], sampling: SamplingConfig, *,
             pad_id: int = 0, compiler_options: tuple = ()) -> SampleOutput:
  """Samples `sampling.num_samples` completions for each prompt (lists of ids, any lengths).

  `params` are used as they are (a pure dict, possibly sharded: under `jax.set_mesh` the batch and
  the cache follow the batch/kv-head rules of jaxpost.mesh), so rollouts read the trainer's arrays.
  `compiler_options`: XLA options for the sampler's compile, e.g. CUDA_GRAPHS; tokens do not change."""
  tokens, segment_ids = _left_pad(prompt_tokens, pad_id)
  out_tokens, logps, lengths, stopped = generate_jit(tuple(compiler_options))(
      graphdef, params, jnp.asarray(tokens), jnp.asarray(segment_ids), _traced(sampling),
      sampling=_static(sampling), pad_id=pad_id)
  out_tokens, logps, lengths, stopped = _to_host((out_tokens, logps, lengths, stopped))
  return SampleOutput(tokens=out_tokens, lengths=lengths,
                      finish_reasons=["stop" if s else "length" for s in stopped], logps=logps)


def _to_host(arrays):
  """numpy copies; with several processes each gathers the rows other hosts hold (every host needs all)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, arrays)
  from jax.experimental import multihost_utils
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(arrays, tiled=True))


# ---------------------------------------------------------------- Greedy (evaluation)

def greedy_generate(graphdef, params, prompts: list[list[int]], *, max_new_tokens: int, stop_id: int,
                    pad_id: int = 0) -> list[list[int]]:
  """Returns each prompt's greedy completion (tokens up to, excluding, `stop_id`)."""
  out = generate(graphdef, params, prompts, SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                                                           stop_token_ids=(stop_id,)), pad_id=pad_id)
  return [c[:-1] if reason == "stop" else c for c, reason in zip(out.completions(), out.finish_reasons)]
