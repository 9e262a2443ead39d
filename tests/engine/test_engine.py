"""Rollout engine v2 against recomputation, the static sampler, the trainer's log-probs, and its own page pool.

References run the full forward on one fixed-width, right-padded buffer (causality makes the columns after
the sequence irrelevant), as tests/test_sampling.py does. Page size 4 and prompts of 2..17 tokens make
prompts span several pages, end mid-page and end exactly on a page boundary.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import logprobs, sampling
from jaxpost.engine import Engine, EngineConfig, PagePool, PoolTooSmallError, Request
from jaxpost.engine import engine as engine_lib
from jaxpost.engine import paged_attention
from jaxpost.kernels.attention import reference as kernel_reference
from jaxpost.models import ModelConfig, Transformer

CFG = ModelConfig(vocab_size=23, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
# Every family switch the paged path must carry: Gemma 2/3 norms and scales, soft-caps, a 3-token window on
# alternating layers with its own RoPE base, plus Qwen's qkv bias and q/k norm; scanned layers are covered below.
FAMILY_CFG = ModelConfig(vocab_size=23, d_model=32, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=8, mlp_dim=64,
                         qkv_bias=True, qk_norm=True, post_norms=True, norm_plus_one=True, embed_scale=True,
                         mlp_activation="gelu_tanh", query_pre_attn_scalar=16.0, attn_logit_softcap=5.0,
                         final_logit_softcap=3.0, sliding_window=3, layer_types=("sliding_attention", "full_attention"),
                         rope_local_theta=100.0)
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(1, 18)), [7, 7, 7, 1, 2, 3, 4, 5], [11, 2, 9]]  # 8 = 2 full pages
BUDGETS = [8, 3, 12, 6, 10]
WIDTH = 32
# One pool shape and one prefill bucket for every test but the accounting one: fewer compiles.
ENGINE = EngineConfig(num_slots=2, page_size=4, num_pages=32, max_seq_len=32, steps_per_check=3, prefill_bucket=32)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, tokens):
  return nnx.merge(graphdef, params)(tokens)


@functools.lru_cache(maxsize=None)
def _model(cfg=CFG, seed=3):
  """Random numpy weights of the model's shapes (std 1/sqrt(fan_in); norms and biases around 1 and 0):
  the model's own init compiles its random ops for seconds, eagerly or jitted, on a 2-core machine."""
  graphdef, abstract = nnx.eval_shape(lambda: nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param))
  rng = np.random.default_rng(seed)
  def fill(a):
    if a.ndim >= 2:
      return jnp.asarray(rng.normal(size=a.shape) * a.shape[0] ** -0.5, a.dtype)
    return jnp.asarray(1.0 + 0.1 * rng.normal(size=a.shape), a.dtype)
  return graphdef, jax.tree.map(fill, nnx.to_pure_dict(abstract))


def _reference_greedy(graphdef, params, prompt, n, stop=()):
  seq = list(prompt)
  for _ in range(n):  # One full forward per new token, no cache.
    buf = np.zeros((1, WIDTH), np.int32)
    buf[0, :len(seq)] = seq
    seq.append(int(np.argmax(np.asarray(_logits(graphdef, params, jnp.asarray(buf))[0, len(seq) - 1]))))
    if seq[-1] in stop:
      break
  return seq[len(prompt):]


def _requests(**kwargs):
  return [Request(prompt=p, max_new_tokens=n, **kwargs) for p, n in zip(PROMPTS, BUDGETS)]


GREEDY = sampling.SamplingConfig(temperature=0.0)
SAMPLED = sampling.SamplingConfig(temperature=1.0)


# Scanned (stacked) layers, every one a 3-token window, with qkv bias and GQA 4:2.
SCAN_CFG = ModelConfig(**{**CFG.__dict__, "scan_layers": True, "qkv_bias": True, "sliding_window": 3})


@pytest.mark.parametrize("cfg", [FAMILY_CFG, SCAN_CFG], ids=["gemma_qwen_options", "scan_sliding"])
def test_greedy_equals_full_forward_recompute_with_more_requests_than_slots(cfg):
  """5 requests (prompts 2..17 tokens, budgets 3..12) through 2 slots: each completion is the argmax chain of
  the uncached model. The window (3) is shorter than every sequence, so a paged path that ignored it, the
  soft-caps or the local RoPE base would pick other tokens. (The plain Llama config: the next test.)"""
  graphdef, params = _model(cfg)
  out = Engine(graphdef, params, ENGINE, GREEDY).generate(_requests())
  assert [(c.request, c.sample) for c in out] == [(i, 0) for i in range(5)]
  for c, prompt, n in zip(out, PROMPTS, BUDGETS):
    assert c.tokens == _reference_greedy(graphdef, params, prompt, n), c.request
    assert c.finish_reason == "length" and len(c.tokens) == n
    np.testing.assert_array_equal(c.logps, 0.0)  # Greedy draws from a point mass.


def test_greedy_equals_full_forward_and_static_sampler_and_stops():
  """Llama-style CFG (GQA 4:2), 5 requests through 2 slots: the same tokens as the uncached argmax chain and
  as `sampling.generate` (today's engine) cut to each budget; a stop id taken from request 2's greedy chain
  ends the samples that emit it there, with reason 'stop' and the stop token kept."""
  graphdef, params = _model()
  static = sampling.generate(graphdef, params, PROMPTS, sampling.SamplingConfig(max_new_tokens=12, temperature=0.0))
  static = [c[:n] for c, n in zip(static.completions(), BUDGETS)]
  assert static == [_reference_greedy(graphdef, params, p, n) for p, n in zip(PROMPTS, BUDGETS)]
  stop = static[2][4]
  out = Engine(graphdef, params, ENGINE, GREEDY).generate(_requests(stop_token_ids=(stop,)))
  for c, ref in zip(out, static):
    expected = ref[:ref.index(stop) + 1] if stop in ref else ref
    assert c.tokens == expected, c.request
    assert c.finish_reason == ("stop" if stop in ref else "length")
  assert out[2].finish_reason == "stop" and out[2].tokens[-1] == stop


def _sampled(num_slots, share_prefix=True):
  graphdef, params = _model()
  config = EngineConfig(**{**ENGINE.__dict__, "num_slots": num_slots, "share_prefix": share_prefix})
  requests = [Request(prompt=p, max_new_tokens=n, num_samples=3, seed=100 + i)
              for i, (p, n) in enumerate(zip(PROMPTS, BUDGETS))]
  return Engine(graphdef, params, config, SAMPLED).generate(requests)


def test_sampled_output_is_identical_with_1_3_and_8_slots():
  """Keys are folded from (seed, sample, position), never the slot: 15 samples give the same tokens whether
  they run one at a time, 3 at once or all together (8 slots > 5 x 3 / 2). Samples of one request differ."""
  runs = {n: _sampled(n) for n in (1, 3, 8)}
  for n in (3, 8):
    for a, b in zip(runs[1], runs[n]):
      assert (a.request, a.sample) == (b.request, b.sample)
      assert a.tokens == b.tokens, (n, a.request, a.sample)
      np.testing.assert_allclose(a.logps, b.logps, atol=1e-5)
  by_request = [[c.tokens for c in runs[1] if c.request == i] for i in range(len(PROMPTS))]
  assert any(len({tuple(t) for t in samples}) > 1 for samples in by_request)


def test_shared_prefix_equals_unshared():
  """Samples 1.. of a request read sample 0's prompt pages and prefill only the rest: same tokens as every
  sample prefilling its whole prompt, in fewer pages."""
  graphdef, params = _model()
  engine = Engine(graphdef, params, ENGINE, SAMPLED)
  assert engine._shared_pages(Request(prompt=PROMPTS[2], num_samples=3)) == 4  # 17 tokens: 4 full pages + 1.
  assert engine._shared_pages(Request(prompt=PROMPTS[3], num_samples=3)) == 1  # 8: the 2nd page holds the last.
  assert engine._shared_pages(Request(prompt=PROMPTS[2], num_samples=1)) == 0
  shared, unshared = _sampled(3, True), _sampled(3, False)
  for a, b in zip(shared, unshared):
    assert a.tokens == b.tokens, (a.request, a.sample)
    np.testing.assert_allclose(a.logps, b.logps, atol=1e-5)


def test_logps_equal_the_trainers_logprobs():
  """Sampled at temperature 1 without truncation, the sampler's log-prob of each token is log softmax of the
  model's logits, which `logprobs.token_logprobs` computes from a full forward of prompt + completion."""
  graphdef, params = _model()
  out = _sampled(3)
  inputs, targets = np.zeros((len(out), WIDTH), np.int32), np.zeros((len(out), WIDTH), np.int32)
  segment_ids = np.zeros((len(out), WIDTH), np.int32)
  for row, c in enumerate(out):
    seq = PROMPTS[c.request] + c.tokens
    inputs[row, :len(seq) - 1], targets[row, :len(seq) - 1], segment_ids[row, :len(seq) - 1] = seq[:-1], seq[1:], 1
  batch = {"inputs": inputs, "targets": targets, "segment_ids": segment_ids,
           "positions": np.broadcast_to(np.arange(WIDTH, dtype=np.int32), inputs.shape)}
  trainer = np.asarray(jax.jit(logprobs.token_logprobs, static_argnums=0)(graphdef, params, batch))
  for row, c in enumerate(out):
    p = len(PROMPTS[c.request])
    np.testing.assert_allclose(c.logps, trainer[row, p - 1:p - 1 + len(c.tokens)], atol=1e-4, rtol=0)
    assert np.all(c.logps < 0)


def test_page_accounting_ten_times_more_samples_than_slots():
  """30 samples through 3 slots in the fixed pool of 32 pages of 4 tokens. Their worst cases add up to far
  more than 32 pages (the arithmetic below), so finished samples must hand their pages back; at the end
  every page is free with no reference left, the tables are empty, and a second run in the same pool gives
  the same samples. (3 slots and the shared pool shape reuse the sampled tests' compiled programs.)"""
  graphdef, params = _model()
  requests = [Request(prompt=p, max_new_tokens=n, num_samples=6, seed=i)
              for i, (p, n) in enumerate(zip(PROMPTS, BUDGETS))]
  worst = sum(6 * -(-(len(p) + n - 1) // 4) for p, n in zip(PROMPTS, BUDGETS))  # 6 x (3 + 1 + 7 + 4 + 3) = 108
  assert worst == 108 > ENGINE.num_pages
  engine = Engine(graphdef, params, EngineConfig(**{**ENGINE.__dict__, "num_slots": 3}), SAMPLED)
  out = engine.generate(requests)
  assert len(out) == 30 == 10 * 3 and all(len(c.tokens) <= BUDGETS[c.request] for c in out)
  assert engine.pool.num_free == 32 and not engine.pool.refcount.any()
  assert not engine.tables.num.any() and not engine.tables.table.any()
  assert 0 < engine.peak_pages <= 32
  again = engine.generate(requests)  # The same pool, reused: the same samples.
  assert [c.tokens for c in again] == [c.tokens for c in out]


def test_no_recompile_after_warm_up():
  """Other prompts, budgets, seeds and stop ids reuse the compiled decode chunk and prefill buckets."""
  graphdef, params = _model()
  engine = Engine(graphdef, params, EngineConfig(**{**ENGINE.__dict__, "num_slots": 3}), SAMPLED)
  engine.generate(_requests(seed=1))
  sizes = engine_lib._decode._cache_size(), engine_lib._prefill._cache_size()
  engine.generate([Request(prompt=p[::-1], max_new_tokens=n + 1, seed=7, stop_token_ids=(3, 4), num_samples=2)
                   for p, n in zip(PROMPTS, BUDGETS)])
  assert (engine_lib._decode._cache_size(), engine_lib._prefill._cache_size()) == sizes


def test_request_that_cannot_fit_names_the_setting():
  graphdef, params = _model()
  small = EngineConfig(num_slots=2, page_size=4, num_pages=3, max_seq_len=32)
  with pytest.raises(PoolTooSmallError, match=r"EngineConfig\.num_pages.*request 1.*needs up to 4 pages"):
    Engine(graphdef, params, small, GREEDY).generate([Request(prompt=[1, 2], max_new_tokens=2), Request(prompt=[1] * 10, max_new_tokens=7)])
  with pytest.raises(PoolTooSmallError, match=r"EngineConfig\.max_seq_len.*33 tokens"):
    Engine(graphdef, params, ENGINE, GREEDY).generate([Request(prompt=[1] * 30, max_new_tokens=3)])
  with pytest.raises(PoolTooSmallError, match=r"EngineConfig\.num_pages: 2 pages wanted, 1 of 1 free"):
    PagePool(1, 4).alloc(2)


def test_page_pool_refcounts():
  pool = PagePool(3, 4)
  a = pool.alloc(2)
  pool.share(a[:1])
  pool.free(a)
  assert pool.num_free == 2 and pool.refcount[a[0]] == 1  # The shared page lives on.
  pool.free(a[:1])
  assert pool.num_free == 3
  with pytest.raises(ValueError, match="not allocated"):
    pool.free(a[:1])


@pytest.mark.parametrize("window,softcap", [(None, None), (3, 2.0)])
def test_paged_attention_equals_reference_over_shuffled_pages(window, softcap):
  """Two rows, 3 queries each at the end of 10 and 7 keys, K/V scattered over shuffled pages of 4: equal to
  the model's attention (`attention_reference(upcast=False)`) over the contiguous keys, GQA 4:2."""
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, 3, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, 12, 2, 8)), jnp.float32) for _ in range(2))
  lengths = [10, 7]
  table = np.array([[5, 2, 7], [1, 6, 3]], np.int32)
  k_pages = jnp.zeros((8, 4, 2, 8)).at[table].set(k.reshape(2, 3, 4, 2, 8))
  v_pages = jnp.zeros((8, 4, 2, 8)).at[table].set(v.reshape(2, 3, 4, 2, 8))
  positions = np.array([[n - 3 + i for i in range(3)] for n in lengths], np.int32)
  options = dict(sliding_window=window, logit_softcap=softcap)
  out = jax.jit(functools.partial(paged_attention.paged_attention, **options))(
      q, k_pages, v_pages, jnp.asarray(table), jnp.asarray(positions), jnp.ones((2, 3), bool))
  reference = jax.jit(functools.partial(kernel_reference.attention_reference, causal=True, upcast=False, **options))
  for row, n in enumerate(lengths):
    ref = reference(q[row:row + 1], k[row:row + 1, :n], v[row:row + 1, :n])
    np.testing.assert_allclose(out[row:row + 1], ref, atol=1e-5)
