"""The KV-cache sampler against recomputation, the truncation rules, stop tokens, seeds, log-probs and sharding.

Reference forwards run on one fixed-width, right-padded buffer: causality makes the columns after the
sequence irrelevant, so the logits at column len(seq) - 1 are the unpadded model's, with one compile.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import logprobs, sampling, state
from jaxpost.models import ModelConfig, Transformer

CFG = ModelConfig(vocab_size=23, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]  # 17 > one bucket
WIDTH = 32


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, tokens):
  return nnx.merge(graphdef, params)(tokens)


def _model(cfg=CFG, seed=3):
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def _next_logits(graphdef, params, seq):
  buf = np.zeros((1, WIDTH), np.int32)
  buf[0, :len(seq)] = seq
  return np.asarray(_logits(graphdef, params, jnp.asarray(buf))[0, len(seq) - 1])


def _reference_greedy(graphdef, params, prompt, n):
  seq = list(prompt)
  for _ in range(n):  # One full forward per new token, no cache.
    seq.append(int(np.argmax(_next_logits(graphdef, params, seq))))
  return seq[len(prompt):]


def test_greedy_equals_argmax_of_full_forward_with_ragged_prompts():
  graphdef, params = _model()
  out = sampling.greedy_generate(graphdef, params, PROMPTS, max_new_tokens=8, stop_id=-1)
  for prompt, completion in zip(PROMPTS, out):
    assert completion == _reference_greedy(graphdef, params, prompt, 8)


def test_stop_token_truncates():
  graphdef, params = _model()
  full = sampling.greedy_generate(graphdef, params, PROMPTS, max_new_tokens=8, stop_id=-1)[1]
  cut = sampling.greedy_generate(graphdef, params, PROMPTS, max_new_tokens=8, stop_id=full[2])[1]
  assert cut == full[:full.index(full[2])]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_greedy_equals_recomputed_argmax_at_every_step(scan_layers):
  """GQA (4 query / 2 kv heads), prompts of 5, 2 and 17 tokens (left-padded to 32 in one batch)."""
  cfg = ModelConfig(**{**CFG.__dict__, "scan_layers": scan_layers})
  graphdef, params = _model(cfg)
  out = sampling.generate(graphdef, params, PROMPTS, sampling.SamplingConfig(max_new_tokens=8, temperature=0.0))
  assert out.tokens.shape == (3, 8) and out.tokens.dtype == np.int32
  assert out.lengths.tolist() == [8, 8, 8] and out.finish_reasons == ["length"] * 3
  np.testing.assert_array_equal(out.logps, 0.0)  # Greedy draws from a point mass.
  for prompt, completion in zip(PROMPTS, out.completions()):
    assert completion == _reference_greedy(graphdef, params, prompt, 8)


def test_temperature_to_zero_equals_greedy():
  graphdef, params = _model()
  greedy = sampling.generate(graphdef, params, PROMPTS, sampling.SamplingConfig(max_new_tokens=8, temperature=0.0))
  cold = sampling.generate(graphdef, params, PROMPTS, sampling.SamplingConfig(max_new_tokens=8, temperature=1e-4))
  np.testing.assert_array_equal(cold.tokens, greedy.tokens)
  np.testing.assert_allclose(cold.logps, 0.0, atol=1e-4)  # All the mass on the argmax.


@functools.partial(jax.jit, static_argnames="cfg")
def _sample(logits, key, temperature, top_p, *, cfg):
  return sampling.sample_logits(logits, key, cfg, temperature=temperature, top_p=top_p)


def _draws(logits, cfg, n=4000):
  """n draws from one row of logits (V,): tokens (n,), logps (n,)."""
  rows = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits)))
  return _sample(rows, jax.random.PRNGKey(0), cfg.temperature, cfg.top_p, cfg=sampling._static(cfg))


def test_top_k_never_leaves_the_k_most_likely():
  logits = np.random.default_rng(0).normal(size=23) * 2
  tokens, logps = _draws(logits, sampling.SamplingConfig(top_k=3, temperature=0.7))
  top3 = np.argsort(-logits)[:3]
  assert set(np.asarray(tokens).tolist()) == set(top3.tolist())  # All of the k and nothing else.
  kept = logits[top3] / 0.7
  expected = dict(zip(top3.tolist(), kept - np.log(np.exp(kept).sum())))  # log-softmax over the k
  np.testing.assert_allclose(np.asarray(logps), [expected[t] for t in np.asarray(tokens).tolist()], rtol=1e-5)


@pytest.mark.parametrize("top_p, kept", [(0.5, {1}), (0.75, {1, 3}), (0.85, {1, 3, 0}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
  """Token probs 0.15, 0.5, 0.05, 0.3: sorted 0.5 (1), 0.3 (3), 0.15 (0), 0.05 (2), cumulative 0.5, 0.8,
  0.95, 1. Smallest set with mass >= p: p=0.5 -> {1}; 0.75 -> {1, 3}; 0.85 -> {1, 3, 0}; 1 -> all."""
  probs = np.array([0.15, 0.5, 0.05, 0.3])
  tokens, logps = _draws(np.log(probs), sampling.SamplingConfig(top_p=top_p))
  tokens, logps = np.asarray(tokens), np.asarray(logps)
  assert set(tokens.tolist()) == kept
  mass = probs[sorted(kept)].sum()  # Renormalised over the kept set.
  np.testing.assert_allclose(logps, np.log(probs[tokens] / mass), rtol=1e-5)


def test_stop_tokens_end_rows_and_pad_the_rest():
  graphdef, params = _model()
  greedy = sampling.generate(graphdef, params, PROMPTS, sampling.SamplingConfig(max_new_tokens=8, temperature=0.0))
  stop = int(greedy.tokens[0, 2])  # Row 0 must stop at its third token (or earlier if repeated).
  cfg = sampling.SamplingConfig(max_new_tokens=8, temperature=0.0, stop_token_ids=(stop, 22))
  out = sampling.generate(graphdef, params, PROMPTS, cfg, pad_id=-7)
  for row, full, length, reason in zip(out.tokens, greedy.tokens, out.lengths, out.finish_reasons):
    hits = [i for i, t in enumerate(full.tolist()) if t in (stop, 22)]
    assert length == (hits[0] + 1 if hits else 8)
    assert reason == ("stop" if hits else "length")
    assert row[:length].tolist() == full[:length].tolist()  # Stop token kept, then pad.
    assert (row[length:] == -7).all()
  assert out.lengths[0] <= 3 and out.finish_reasons[0] == "stop"


def test_samples_per_prompt_are_distinct_reproducible_and_logps_match_the_trainer():
  """G=4 samples of 3 prompts at temperature 1: a seed reproduces them, another changes them, and the
  sampler's log-probs equal `logprobs.token_logprobs` of the same sequences (f32, 1e-4)."""
  graphdef, params = _model()
  cfg = sampling.SamplingConfig(max_new_tokens=8, num_samples=4, seed=0)
  out = sampling.generate(graphdef, params, PROMPTS, cfg)
  again = sampling.generate(graphdef, params, PROMPTS, cfg)
  other = sampling.generate(graphdef, params, PROMPTS, sampling.SamplingConfig(max_new_tokens=8, num_samples=4, seed=1))
  assert out.tokens.shape == (12, 8)
  np.testing.assert_array_equal(out.tokens, again.tokens)
  assert not np.array_equal(out.tokens, other.tokens)
  for p in range(3):
    assert len({tuple(c) for c in out.completions()[4 * p:4 * p + 4]}) == 4

  # The trainer's view: prompt + completion, right-padded, positions from 0.
  seqs = [PROMPTS[r // 4] + c for r, c in enumerate(out.completions())]
  inputs, targets = np.zeros((12, WIDTH), np.int32), np.zeros((12, WIDTH), np.int32)
  segment_ids = np.zeros((12, WIDTH), np.int32)
  for r, seq in enumerate(seqs):
    inputs[r, :len(seq) - 1], targets[r, :len(seq) - 1], segment_ids[r, :len(seq) - 1] = seq[:-1], seq[1:], 1
  batch = {"inputs": inputs, "targets": targets, "segment_ids": segment_ids,
           "positions": np.broadcast_to(np.arange(WIDTH), (12, WIDTH)).astype(np.int32)}
  trainer = np.asarray(jax.jit(logprobs.token_logprobs, static_argnums=0)(graphdef, params, batch))
  for r, seq in enumerate(seqs):
    start = len(PROMPTS[r // 4]) - 1  # Target index of completion token 0.
    np.testing.assert_allclose(out.logps[r, :out.lengths[r]], trainer[r, start:len(seq) - 1], atol=1e-4)


def test_cuda_graph_compiler_options_reach_xla_and_leave_the_samples_unchanged():
  """sampling.CUDA_GRAPHS are XLA:GPU options that XLA:CPU ignores when it runs, so equal samples alone
  could not fail here. XLA parses compile options on every backend, though, which gives checks that can:
  (1) `generate(..., compiler_options=...)` hands them to XLA's compile: a copy of CUDA_GRAPHS with every
  name suffixed "_typo" raises "No such compile option" from `generate` itself; (2) CUDA_GRAPHS' names and
  values are ones XLA knows: it compiles, while the same flag with one command-buffer type XLA lacks
  ("WHILE_LOOP") or a non-int graph size is rejected by name. Then the variant is a compile of its own (a
  separate jit, whose cache holds the one compile `generate` made) and draws the same tokens and
  log-probs: bit-identical on CPU (the same program), within 1e-6 on GPU (same kernels, run as a graph)."""
  graphdef, params = _model()
  cfg = sampling.SamplingConfig(max_new_tokens=5, num_samples=2, seed=4)
  misspelt = tuple((name + "_typo", value) for name, value in sampling.CUDA_GRAPHS)
  with pytest.raises(jax.errors.JaxRuntimeError, match=r"No such compile option: 'xla_gpu_\w+_typo'"):
    sampling.generate(graphdef, params, PROMPTS[:2], cfg, compiler_options=misspelt)
  (buffer_flag, buffer_types), (size_flag, _) = sampling.CUDA_GRAPHS
  for options, message in [(((buffer_flag, buffer_types + ",WHILE_LOOP"),), "'WHILE_LOOP' is not a valid enum"),
                           (((size_flag, "one"),), "'one' is not a valid int32")]:
    with pytest.raises(jax.errors.JaxRuntimeError, match=f"While setting option {options[0][0]}, {message}"):
      sampling.generate(graphdef, params, PROMPTS[:2], cfg, compiler_options=options)

  plain = sampling.generate(graphdef, params, PROMPTS[:2], cfg)
  jitted = sampling.generate_jit(sampling.CUDA_GRAPHS)
  assert jitted is not sampling.generate_jit(())
  jitted.clear_cache()
  graphs = sampling.generate(graphdef, params, PROMPTS[:2], cfg, compiler_options=sampling.CUDA_GRAPHS)
  assert jitted._cache_size() == 1  # noqa: SLF001  (the CUDA-graph variant compiled and ran)
  np.testing.assert_array_equal(graphs.tokens, plain.tokens)
  np.testing.assert_array_equal(graphs.lengths, plain.lengths)
  np.testing.assert_allclose(graphs.logps, plain.logps, rtol=0, atol=0 if jax.default_backend() == "cpu" else 1e-6)


def test_rl_cuda_graphs_config_compiles_the_rollout_sampler_with_cuda_graphs():
  """config.rl.cuda_graphs reaches the online loops' sampler (jaxpost/rollout.py) as sampling.CUDA_GRAPHS;
  off, the plain compile. Tokens are the same either way (previous test)."""
  from types import SimpleNamespace
  from jaxpost.config import rl_config
  from jaxpost.rollout import Rollouts
  graphdef, params = _model()
  tokenizer = SimpleNamespace(chat_stop_ids=(0,), pad_id=0)
  prompts = [{"tokens": p} for p in PROMPTS[:2]]
  for on in (False, True):
    rl = rl_config()
    rl.max_new_tokens, rl.cuda_graphs, rl.sampler = 3, on, "static"
    rollouts = Rollouts(rl, 0, tokenizer, graphdef, prompts, None, {}, None)
    jitted = sampling.generate_jit(sampling.CUDA_GRAPHS if on else ())
    jitted.clear_cache()
    rollouts.sample(params, prompts, num_samples=2, temperature=1.0, seed=0)
    assert jitted._cache_size() == 1  # noqa: SLF001  (this variant's compile was the one used)


def test_one_prompt_samples_what_it_samples_beside_another():
  """One prompt runs the model on two rows (a shadow row, sampling.MIN_MODEL_ROWS); it must not change
  row 0: the same tokens as in a batch with a second prompt of the same length, and greedy matches
  recomputation."""
  graphdef, params = _model()
  cfg = sampling.SamplingConfig(max_new_tokens=6, seed=11)
  out = sampling.generate(graphdef, params, PROMPTS[:1], cfg)
  assert out.tokens.shape == (1, 6)
  pair = sampling.generate(graphdef, params, [PROMPTS[0], PROMPTS[0][::-1]], cfg)
  assert pair.completions()[0] == out.completions()[0]
  greedy = sampling.greedy_generate(graphdef, params, PROMPTS[2:], max_new_tokens=6, stop_id=-1)
  assert greedy[0] == _reference_greedy(graphdef, params, PROMPTS[2], 6)


def test_sharded_params_are_read_in_place_and_sample_like_one_device():
  """Params in `state.param_shardings` on a (data 2, fsdp 2, tensor 2) mesh, scanned layers: the compiled
  sampler takes them with their own shardings (no resharding copy), and the samples equal those from
  the same values on one device."""
  cfg = ModelConfig(**{**CFG.__dict__, "vocab_size": 24, "scan_layers": True})
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  graphdef, shapes, _ = state.abstract_model(cfg)
  rng = np.random.default_rng(0)  # Host values (the model's random init compiles for seconds on 8 devices).
  local = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.3, a.dtype), shapes)
  params = jax.device_put(local, state.param_shardings(cfg, mesh))  # The trainer's layout, as init_params gives.
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in jax.tree.leaves(params))
  cfg_s = sampling.SamplingConfig(max_new_tokens=6, num_samples=2, seed=3)
  prompts = PROMPTS + [[7, 7, 7]]
  with jax.set_mesh(mesh):
    sharded = sampling.generate(graphdef, params, prompts, cfg_s)
    tokens, segment_ids = sampling._left_pad(prompts, 0)
    compiled = sampling.generate_jit().lower(graphdef, params, jnp.asarray(tokens), jnp.asarray(segment_ids),
                                             sampling._traced(cfg_s), sampling=sampling._static(cfg_s),
                                             pad_id=0).compile()
  single = sampling.generate(graphdef, local, prompts, cfg_s)
  np.testing.assert_array_equal(sharded.tokens, single.tokens)
  np.testing.assert_allclose(sharded.logps, single.logps, atol=1e-5)
  param_inputs = compiled.input_shardings[0][0]  # graphdef is static: params come first.
  for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(param_inputs)):
    assert s.is_equivalent_to(x.sharding, x.ndim), (s, x.sharding)
