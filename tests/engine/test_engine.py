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


def _engine(graphdef, params, config=ENGINE):
  return Engine(graphdef, nnx.merge(graphdef, params).cfg, config)


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
  out = _engine(graphdef, params, ENGINE).generate(params, _requests(), GREEDY)
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
  out = _engine(graphdef, params, ENGINE).generate(params, _requests(stop_token_ids=(stop,)), GREEDY)
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
  return _engine(graphdef, params, config).generate(params, requests, SAMPLED)


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
  engine = _engine(graphdef, params, ENGINE)
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
  engine = _engine(graphdef, params, EngineConfig(**{**ENGINE.__dict__, "num_slots": 3}))
  out = engine.generate(params, requests, SAMPLED)
  assert len(out) == 30 == 10 * 3 and all(len(c.tokens) <= BUDGETS[c.request] for c in out)
  assert engine.pool.num_free == 32 and not engine.pool.refcount.any()
  assert not engine.tables.num.any() and not engine.tables.table.any()
  assert 0 < engine.peak_pages <= 32
  again = engine.generate(params, requests, SAMPLED)  # The same pool, reused: the same samples.
  assert [c.tokens for c in again] == [c.tokens for c in out]


def test_no_recompile_after_warm_up():
  """Other prompts, budgets, seeds and stop ids reuse the compiled programs: decode compiles once per rows
  bucket, prefill once per (rows, width) bucket; rows are num_slots / 4^k >= engine.MIN_ROWS = 8, capped at
  the 3 slots (one bucket), one width (every prompt <= 32): two workloads add at most one program each."""
  graphdef, params = _model()
  engine = _engine(graphdef, params, EngineConfig(**{**ENGINE.__dict__, "num_slots": 3}))
  before = engine_lib._decode._cache_size(), engine_lib._prefill._cache_size()
  engine.generate(params, _requests(seed=1), SAMPLED)
  engine.generate(params, [Request(prompt=p[::-1], max_new_tokens=n + 1, seed=7, stop_token_ids=(3, 4),
                                   num_samples=2) for p, n in zip(PROMPTS, BUDGETS)], SAMPLED)
  assert engine_lib._decode._cache_size() - before[0] <= 1
  assert engine_lib._prefill._cache_size() - before[1] <= 1
  assert engine.stats["prefill_rows"] == 5 + 10  # Every sample prefilled once, in fewer calls.
  assert engine.stats["prefill_calls"] < engine.stats["prefill_rows"]


def test_request_that_cannot_fit_names_the_setting():
  graphdef, params = _model()
  small = EngineConfig(num_slots=2, page_size=4, num_pages=3, max_seq_len=32)
  with pytest.raises(PoolTooSmallError, match=r"EngineConfig\.num_pages.*request 1.*needs up to 4 pages"):
    _engine(graphdef, params, small).generate(params, [Request(prompt=[1, 2], max_new_tokens=2), Request(prompt=[1] * 10, max_new_tokens=7)],
                                            GREEDY)
  with pytest.raises(PoolTooSmallError, match=r"EngineConfig\.max_seq_len.*33 tokens"):
    _engine(graphdef, params, ENGINE).generate(params, [Request(prompt=[1] * 30, max_new_tokens=3)], GREEDY)
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


def test_requests_appended_while_streaming_queue_behind_and_match_a_run_alone():
  """A request appended to the list after the first completion (how the online loop replaces a rejected
  group) is served by the running engine with the tokens it gets alone; on_tokens delivers every token in
  order, in pieces of at most steps_per_check; a stream closed early hands back its pages."""
  graphdef, params = _model()
  engine = _engine(graphdef, params)
  extra = Request(prompt=PROMPTS[2], max_new_tokens=9, num_samples=2, seed=5)
  requests = [Request(prompt=p, max_new_tokens=n, seed=i) for i, (p, n) in enumerate(zip(PROMPTS[:2], BUDGETS[:2]))]
  pieces = {}
  done = []
  for c in engine.stream(params, requests, SAMPLED,
                         on_tokens=lambda r, j, t: pieces.setdefault((r, j), []).append(t)):
    done.append(c)
    if len(requests) == 2:
      requests.append(extra)
  assert sorted((c.request, c.sample) for c in done) == [(0, 0), (1, 0), (2, 0), (2, 1)]
  alone = engine.generate(params, [extra], SAMPLED)
  assert [c.tokens for c in sorted(done, key=lambda c: (c.request, c.sample)) if c.request == 2] == \
      [c.tokens for c in alone]
  for c in done:
    assert sum(pieces[(c.request, c.sample)], []) == c.tokens
    assert max(map(len, pieces[(c.request, c.sample)])) <= ENGINE.steps_per_check
  # A caller that stops early (the online loop once it has its groups): every page comes back.
  short = Request(prompt=PROMPTS[0], max_new_tokens=2, seed=1)  # Done while extra's 2 samples still run.
  chunks = engine.stream_chunks(params, [short, extra], SAMPLED)
  next(chunks)
  assert engine.pool.num_free < ENGINE.num_pages
  chunks.close()
  assert engine.pool.num_free == ENGINE.num_pages and not engine.pool.refcount.any() and not engine.tables.num.any()
  assert [c.tokens for c in engine.generate(params, [extra], SAMPLED)] == [c.tokens for c in alone]


def test_a_kept_prefix_continues_its_sequence_and_is_void_after_a_reset():
  """A finished sample's kept pages (keep_cache) serve a request that extends its tokens: it prefills only the
  new tokens and samples what a full prefill of the whole prompt samples. Released, the pages come back; after
  an abandoned stream resets the pool, an older prefix is ignored (full prefill, same tokens)."""
  graphdef, params = _model()
  engine = _engine(graphdef, params)
  [first] = engine.generate(params, [Request(prompt=PROMPTS[2], max_new_tokens=6, seed=3, keep_cache=True)], SAMPLED)
  kept = first.cache
  assert kept.tokens == tuple(PROMPTS[2]) + tuple(first.tokens[:-1])  # the last sampled token was never fed
  assert len(kept.pages) == -(-len(kept.tokens) // ENGINE.page_size)
  assert engine.pool.num_free == ENGINE.num_pages - len(kept.pages)
  longer = kept.tokens + (first.tokens[-1], 9, 4)
  before = engine.stats["prefill_tokens"]
  [cont] = engine.generate(params, [Request(prompt=longer, max_new_tokens=7, seed=8, cache=kept)], SAMPLED)
  assert engine.stats["prefill_tokens"] - before == 3
  [full] = _engine(graphdef, params).generate(params, [Request(prompt=longer, max_new_tokens=7, seed=8)], SAMPLED)
  assert cont.tokens == full.tokens and cont.cache is None
  np.testing.assert_allclose(cont.logps, full.logps, atol=1e-5)
  with pytest.raises(ValueError, match="extends exactly those tokens"):
    engine.generate(params, [Request(prompt=(0,) + longer[1:], max_new_tokens=2, cache=kept)], SAMPLED)
  engine.release(kept)
  assert engine.pool.num_free == ENGINE.num_pages
  # Kept again, then a stream abandoned midway: the pool restarts and the prefix is void.
  [first] = engine.generate(params, [Request(prompt=PROMPTS[2], max_new_tokens=6, seed=3, keep_cache=True)], SAMPLED)
  chunks = engine.stream_chunks(params, [Request(prompt=PROMPTS[0], max_new_tokens=2, seed=1),
                                         Request(prompt=PROMPTS[2], max_new_tokens=9, seed=5)], SAMPLED)
  next(chunks)
  chunks.close()
  assert engine.pool.num_free == ENGINE.num_pages
  before = engine.stats["prefill_tokens"]
  [again] = engine.generate(params, [Request(prompt=longer, max_new_tokens=7, seed=8, cache=first.cache)], SAMPLED)
  assert engine.stats["prefill_tokens"] - before == len(longer) and again.tokens == full.tokens
  engine.release(first.cache)  # a no-op for a void prefix
  assert engine.pool.num_free == ENGINE.num_pages


def test_weights_swapped_mid_stream_record_each_tokens_version():
  """weights() gives (0, A) at the first host check and (1, B) after (how split rollout pools take an update):
  5 greedy requests through 2 slots, 3 decode steps a check. Request 0 (budget 8) samples 4 tokens under A
  (prefill + one chunk) and its other 4 under B, recorded per token; requests 2-4 start after the swap, so
  they are B's own greedy completions. Without weights=, every token carries `version`."""
  graphdef, a = _model()
  b = jax.tree.map(lambda x: x * 1.5, a)
  calls = []

  def weights():
    calls.append(len(calls))
    return (0, a) if len(calls) == 1 else (1, b)
  engine = _engine(graphdef, a)
  mixed = sorted(engine.stream(a, _requests(), GREEDY, weights=weights), key=lambda c: c.request)
  assert mixed[0].versions.tolist() == [0] * 4 + [1] * 4 and len(calls) > 2
  alone_b = engine.generate(b, _requests(), GREEDY)
  for c, ref in zip(mixed[2:], alone_b[2:]):
    assert c.tokens == ref.tokens and set(c.versions.tolist()) == {1}
  fixed = engine.generate(a, _requests(), GREEDY)
  assert all(c.versions.tolist() == [0] * len(c.tokens) for c in fixed)
  assert [c.versions.tolist() for c in engine.stream(a, _requests()[:1], GREEDY, version=7)] == [[7] * 8]


def test_sharded_over_8_devices_equals_one_device():
  """Params sharded data=2 x fsdp=2 x tensor=2 (pages split over the 2 KV heads) under jax.set_mesh: the same
  sampled tokens as on one device, log-probs within 1e-5."""
  from jaxpost import state as state_lib
  graphdef, params = _model()
  requests = [Request(prompt=p, max_new_tokens=n, num_samples=2, seed=i) for i, (p, n) in enumerate(zip(PROMPTS, BUDGETS))]
  single = _engine(graphdef, params).generate(params, requests, SAMPLED)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh):
    sharded_params = jax.device_put(params, state_lib.param_shardings(CFG, mesh))
    engine = _engine(graphdef, sharded_params)
    sharded = engine.generate(sharded_params, requests, SAMPLED)
    assert engine.pages["k"][0].sharding.spec[2] == "tensor"
  for a, b in zip(single, sharded):
    assert a.tokens == b.tokens, (a.request, a.sample)
    np.testing.assert_allclose(a.logps, b.logps, atol=1e-5)


@pytest.mark.parametrize("sampler", ["engine", "static"])
def test_rollouts_collect_replaces_rejected_groups_within_the_refill_budget(sampler):
  """jaxpost/rollout.Rollouts.collect, as the online loop calls it: P = 3 prompts of G = 2 samples, a judge that
  rejects the 1st, 2nd and 4th group it sees (it may see several at once). With max_refills = 1 (3 spare prompts) every rejection gets a
  replacement: 6 groups judged, the 3 kept ones enough. With max_refills = 0 nothing is replaced: 3 judged,
  1 kept. Each judged group is its prompt's 2 rows; the prompt cursor advances by the prompts drawn."""
  from types import SimpleNamespace
  from jaxpost.config import rl_config
  from jaxpost.rollout import Rollouts
  graphdef, params = _model()
  prompts = [{"tokens": p, "record": {"i": i}} for i, p in enumerate(PROMPTS * 2)]
  for refills, judged_n, kept_n in ((1, 6, 3), (0, 3, 1)):
    rl = rl_config()
    rl.sampler, rl.prompts_per_step, rl.num_generations, rl.max_new_tokens = sampler, 3, 2, 4
    rl.max_prompt_len, rl.max_refills, rl.engine.page_size = 17, refills, 4
    source = Rollouts(rl, 0, SimpleNamespace(chat_stop_ids=(0,), pad_id=0), graphdef, prompts, None, {}, None)
    seen, calls = [], []

    def judge(batch, out):
      assert len(out.completions()) == 2 * len(batch) and out.tokens.shape == (2 * len(batch), 4)
      seen.extend(p["record"]["i"] for p in batch)
      calls.append(len(batch))
      keep = [k + 1 not in (1, 2, 4) for k in range(len(seen) - len(batch), len(seen))]
      return np.array(keep), np.zeros(2 * len(batch), np.float32), {"errors": 1, "rate": 1.0}

    loop_state = {"step": 0, "cursor": 0, "epoch": 0}
    judged, metrics = source.collect(params, loop_state, seed=7, judge=judge)
    assert len(judged) == judged_n and sum(g.keep for g in judged) == kept_n, sampler
    assert loop_state["cursor"] == judged_n and len(set(seen)) == judged_n  # One fresh prompt per group.
    assert [g.prompt["record"]["i"] for g in judged] == seen
    assert metrics == {"errors": len(calls), "rate": 1.0}  # Counts add over the judge's calls.


def test_merge_metrics_adds_counts_and_weights_rates_by_rows():
  from jaxpost.rollout import merge_metrics
  # errors: 1 + 2 = 3; accuracy: (2 x 50 + 6 x 100) / 8 = 87.5; "only" appears in one part of 6 rows.
  merged = merge_metrics([(2, {"errors": 1, "accuracy": 50.0}), (6, {"errors": 2, "accuracy": 100.0, "only": 0.5})])
  assert merged == {"errors": 3, "accuracy": 87.5, "only": 0.5}
