"""Rollout engine v2: requests in, completed samples out, continuous batching over a paged KV cache.

  requests -> FIFO of samples (request r, sample j) -> free slot: prefill (1 row) writes the prompt's pages,
  samples token 0 -> jitted chunk of `steps_per_check` decode steps over all slots (B = num_slots, T = 1)
  -> host: append each slot's tokens, finish the samples that stopped, free their pages, refill the slots.

Determinism: the token at position p of sample j of a request is drawn with key
fold_in(fold_in(PRNGKey(seed), j), p) (the inner fold once per sample, `_sample_key`), and a slot's attention reads only its own pages, so a sample's
tokens depend on (params, prompt, seed, j), not on its slot, the number of slots or its neighbours.
Log-probs are under the distribution actually sampled from (`sampling.sample_logits`; 0 when greedy).

Pages: a sample holds pages for the tokens it has; before each chunk the host adds the pages the next
`steps_per_check` tokens need. Admission is conservative so a running sample never waits for a page: a
sample starts only when the free pages minus what running samples may still claim cover its worst case
(prompt + budget). Shared prefixes: sample 0 of a request with num_samples > 1 writes the prompt; the
prompt's full pages (all but the page of its last token) are then shared read-only by its other samples,
which prefill only the rest. The request keeps its reference until its last sample has started.

Compiled shapes: the decode chunk compiles once per (EngineConfig, SamplingConfig); prefill once per
prompt-length bucket (`prefill_bucket`).

Deviations from a production engine (vLLM-style), for later steps: no preemption (admission reserves the
worst case instead); a prefill is its own call (not fused into the decode batch) and syncs to the host;
paged attention gathers a slot's whole page table (max_seq_len keys), not only the pages it holds; no
mesh sharding yet (single device or replicated).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost import sampling as sampling_lib
from jaxpost.engine import forward as forward_lib
from jaxpost.engine import pages as pages_lib

MAX_STOP_IDS = 8  # Stop ids per request (the decode step's (B, 8) table; fixed so it never recompiles).


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
  num_slots: int = 8            # Decode slots: samples decoded together in one jitted step.
  page_size: int = 16           # Tokens per KV page.
  num_pages: int = 256          # Pages in the pool (all layers share a page id); KV memory = this x page_size tokens.
  max_seq_len: int = 512        # Longest prompt + max_new_tokens of one sample (the page table's width).
  steps_per_check: int = 8      # Decode steps per jitted call between host checks (finished samples, refills).
  prefill_bucket: int = 16      # Prefill lengths are padded to a multiple of this (one compile per bucket).
  share_prefix: bool = True     # The samples of a request share the prompt's full pages.

  def __post_init__(self):
    for name in ("num_slots", "page_size", "num_pages", "max_seq_len", "steps_per_check", "prefill_bucket"):
      if getattr(self, name) < 1:
        raise ValueError(f"EngineConfig.{name}: must be >= 1, got {getattr(self, name)}")

  @property
  def max_pages(self) -> int:
    return -(-self.max_seq_len // self.page_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
  prompt: tuple[int, ...]                # Prompt token ids (non-empty).
  num_samples: int = 1                   # Samples G wanted.
  max_new_tokens: int = 64               # Completion budget N per sample.
  stop_token_ids: tuple[int, ...] = ()   # A sample ends after emitting one of these (kept in its tokens).
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))
    object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))


@dataclasses.dataclass(frozen=True)
class Completion:
  """Sample `sample` of request `request` (its index in the list given): tokens (stop token included),
  logps (len(tokens),) f32 under the sampling distribution, finish_reason 'stop' or 'length'."""
  request: int
  sample: int
  tokens: list[int]
  logps: np.ndarray
  finish_reason: str


# ---------------------------------------------------------------- Jitted pieces

@jax.jit
def _sample_key(seed, sample):
  """() int32 each -> (2,) uint32 raw key fold_in(PRNGKey(seed), sample): a sample's base key, made on the
  host side once per sample so the compiled steps hash one fold (the position) instead of two."""
  return jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(seed), sample))


def _keys(base, position):
  """base (B, 2) uint32 raw keys, position (B,) int32 -> (B,) keys fold_in(base, position)."""
  return jax.vmap(lambda k, p: jax.random.fold_in(jax.random.wrap_key_data(k, impl="threefry2x32"), p))(base, position)


def _sample(logits, keys, sampling):
  """logits (B, V), keys (B,) -> tokens, logps (B,): `sample_logits` row by row, each row with its own key."""
  token, logp = jax.vmap(lambda l, k: sampling_lib.sample_logits(l[None], k, sampling))(logits, keys)
  return token[:, 0], logp[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"), donate_argnames=("pages",))
def _prefill(graphdef, params, pages, tokens, start, length, page_table, base_key, *, sampling):
  """Writes tokens (1, T) (the first `length` valid) at positions start.. and samples the next token.

  -> (token (), logp (), pages)."""
  model = nnx.merge(graphdef, params)
  t = tokens.shape[1]
  positions = start + jnp.arange(t, dtype=jnp.int32)[None]  # (1, T)
  valid = jnp.arange(t)[None] < length  # (1, T)
  hidden, pages = forward_lib.forward(model, pages, tokens, positions, valid, page_table)
  logits = model.logits(jax.lax.dynamic_index_in_dim(hidden[0], length - 1, keepdims=True))  # (1, V)
  token, logp = _sample(logits, _keys(base_key[None], (start + length)[None]), sampling)
  return token[0], logp[0], pages


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "steps"), donate_argnames=("pages",))
def _decode(graphdef, params, pages, page_table, slots, *, sampling, steps):
  """`steps` decode steps over all slots. slots: token, position (of the token to feed), key (B, 2) uint32
  (`_sample_key`), remaining (tokens still allowed), active (B,) and stop_ids (B, MAX_STOP_IDS; -1 = none).

  -> (pages, slots after the steps, tokens (B, steps) with -1 where a slot emitted nothing, logps (B, steps))."""
  model = nnx.merge(graphdef, params)

  def step(carry, _):
    pages, st = carry
    active = st["active"]
    hidden, pages = forward_lib.forward(model, pages, st["token"][:, None], st["position"][:, None],
                                        active[:, None], page_table)
    logits = model.logits(hidden[:, -1])  # (B, V)
    token, logp = _sample(logits, _keys(st["key"], st["position"] + 1), sampling)
    remaining = st["remaining"] - active.astype(jnp.int32)
    stopped = jnp.any(token[:, None] == st["stop_ids"], axis=1)
    st = {**st, "token": jnp.where(active, token, st["token"]), "position": st["position"] + active,
          "remaining": remaining, "active": active & ~stopped & (remaining > 0)}
    return (pages, st), (jnp.where(active, token, -1), jnp.where(active, logp, 0.0))

  (pages, slots), (tokens, logps) = jax.lax.scan(step, (pages, slots), None, length=steps)
  return pages, slots, tokens.T, logps.T


# ---------------------------------------------------------------- The engine

@dataclasses.dataclass
class _Running:
  """Host bookkeeping of the sample in one slot."""
  request: int
  sample: int
  prompt_len: int
  cache_tokens: int  # Tokens it will ever write: prompt + budget - 1 (the last token is never fed).
  max_own: int       # Pages it may allocate itself (its shared prefix pages excluded).
  own: int = 0
  tokens: list = dataclasses.field(default_factory=list)
  logps: list = dataclasses.field(default_factory=list)


class Engine:
  """Continuous-batching sampler over the trainer's params (a pure dict, as `sampling.generate` takes).

  `sampling` supplies temperature / top_k / top_p (its other fields are per request here)."""

  def __init__(self, graphdef, params, config: EngineConfig, sampling: sampling_lib.SamplingConfig):
    self.graphdef, self.params, self.config = graphdef, params, config
    self.sampling = dataclasses.replace(sampling, max_new_tokens=1, num_samples=1, seed=0, stop_token_ids=())
    self.model_cfg = nnx.merge(graphdef, params).cfg
    self.pool = pages_lib.PagePool(config.num_pages, config.page_size)
    self.tables = pages_lib.PageTables(config.num_slots, config.max_pages)
    self.pages = forward_lib.init_pages(self.model_cfg, config.num_pages, config.page_size)
    self.peak_pages = 0  # Most pages in use at once (the pool's high-water mark), for tests and benchmarks.

  # -- validation
  def _check(self, index: int, r: Request) -> None:
    c = self.config
    where = f"request {index} (prompt {len(r.prompt)} tokens, max_new_tokens {r.max_new_tokens})"
    if not r.prompt or r.num_samples < 1 or r.max_new_tokens < 1:
      raise ValueError(f"{where}: needs a non-empty prompt, num_samples >= 1 and max_new_tokens >= 1")
    if not 0 <= r.seed < 2 ** 31:
      raise ValueError(f"{where}: seed {r.seed} is not in [0, 2**31)")
    if len(r.stop_token_ids) > MAX_STOP_IDS:
      raise ValueError(f"{where}: {len(r.stop_token_ids)} stop ids, at most {MAX_STOP_IDS}")
    if len(r.prompt) + r.max_new_tokens > c.max_seq_len:
      raise pages_lib.PoolTooSmallError(f"EngineConfig.max_seq_len: {where} needs {len(r.prompt) + r.max_new_tokens} "
                                        f"tokens > max_seq_len {c.max_seq_len}; raise max_seq_len")
    need = self.pool.pages_for(len(r.prompt) + r.max_new_tokens - 1)
    if need > c.num_pages:
      raise pages_lib.PoolTooSmallError(f"EngineConfig.num_pages: {where} needs up to {need} pages of "
                                        f"{c.page_size} tokens, the pool has {c.num_pages}; raise num_pages")

  def _shared_pages(self, r: Request) -> int:
    """Prompt pages the samples of r share: the full pages before its last token (that one each prefills)."""
    if not self.config.share_prefix or r.num_samples == 1:
      return 0
    return (len(r.prompt) - 1) // self.config.page_size

  # -- the loop
  def generate(self, requests: list[Request]) -> list[Completion]:
    """Every sample of every request, ordered by (request, sample)."""
    return sorted(self.stream(requests), key=lambda c: (c.request, c.sample))

  def stream(self, requests: list[Request]) -> Iterator[Completion]:
    """Yields each sample as soon as it finishes."""
    requests = list(requests)
    for i, r in enumerate(requests):
      self._check(i, r)
    c, pool, tables = self.config, self.pool, self.tables
    b = c.num_slots
    slots = {"token": np.zeros(b, np.int32), "position": np.zeros(b, np.int32), "key": np.zeros((b, 2), np.uint32),
             "remaining": np.zeros(b, np.int32), "active": np.zeros(b, bool),
             "stop_ids": np.full((b, MAX_STOP_IDS), -1, np.int32)}
    running: list[_Running | None] = [None] * b
    pending = collections.deque((i, j) for i, r in enumerate(requests) for j in range(r.num_samples))
    prefixes: dict[int, list[int]] = {}  # request -> its shared prompt pages (the request's own reference)

    def finish(s: int) -> Completion:
      run = running[s]
      pool.free(tables.release(s))
      running[s] = None
      slots["active"][s] = False
      stop = requests[run.request].stop_token_ids
      reason = "stop" if run.tokens[-1] in stop else "length"
      return Completion(run.request, run.sample, run.tokens, np.asarray(run.logps, np.float32), reason)

    def claimable() -> int:  # Pages running samples may still allocate.
      return sum(run.max_own - run.own for run in running if run is not None)

    while pending or any(run is not None for run in running):
      # ---- Refill free slots, in FIFO order (a sample that does not fit yet waits; nothing overtakes it).
      for s in range(b):
        if running[s] is not None or not pending:
          continue
        i, j = pending[0]
        r = requests[i]
        n_shared = self._shared_pages(r)
        cache_tokens = len(r.prompt) + r.max_new_tokens - 1
        max_own = pool.pages_for(cache_tokens) - n_shared
        new_prefix = n_shared if (n_shared and i not in prefixes) else 0
        if pool.num_free - claimable() < max_own + new_prefix:
          if not any(run is not None for run in running):  # Cannot happen after _check; never spin.
            raise pages_lib.PoolTooSmallError(f"EngineConfig.num_pages: request {i} does not fit an empty pool")
          break
        pending.popleft()
        if new_prefix:
          prefixes[i] = pool.alloc(n_shared)
        run = _Running(i, j, len(r.prompt), cache_tokens, max_own)
        start = 0
        if n_shared:
          tables.append(s, pool.share(prefixes[i]))
          start = 0 if j == 0 else n_shared * c.page_size  # Sample 0 writes the shared pages.
          if j == r.num_samples - 1:
            pool.free(prefixes.pop(i))  # The last sample has its reference; the request lets go.
        run.own = pool.pages_for(len(r.prompt)) - n_shared
        tables.append(s, pool.alloc(run.own))
        running[s] = run
        key = np.asarray(_sample_key(np.int32(r.seed), np.int32(j)))
        token, logp = self._prefill(r.prompt[start:], start, s, key)
        run.tokens.append(token)
        run.logps.append(logp)
        if token in r.stop_token_ids or r.max_new_tokens == 1:
          yield finish(s)
          continue
        slots["token"][s], slots["position"][s] = token, len(r.prompt)
        slots["key"][s], slots["remaining"][s] = key, r.max_new_tokens - 1
        slots["active"][s] = True
        slots["stop_ids"][s] = -1
        slots["stop_ids"][s, :len(r.stop_token_ids)] = r.stop_token_ids
      if not slots["active"].any():
        continue
      # ---- Pages for the next chunk's writes (positions position .. position + steps - 1).
      for s, run in enumerate(running):
        if run is not None:
          want = pool.pages_for(min(int(slots["position"][s]) + c.steps_per_check, run.cache_tokens))
          extra = want - int(tables.num[s])
          if extra > 0:
            tables.append(s, pool.alloc(extra))
            run.own += extra
      self.peak_pages = max(self.peak_pages, pool.num_pages - pool.num_free)
      # ---- Decode.
      self.pages, out, tokens, logps = _decode(self.graphdef, self.params, self.pages, jnp.asarray(tables.table),
                                               {k: jnp.asarray(v) for k, v in slots.items()},
                                               sampling=self.sampling, steps=c.steps_per_check)
      out, tokens, logps = jax.device_get((out, tokens, logps))
      slots = {k: np.array(v) for k, v in out.items()}
      for s, run in enumerate(running):
        if run is None:
          continue
        emitted = tokens[s] >= 0
        run.tokens.extend(tokens[s][emitted].tolist())
        run.logps.extend(logps[s][emitted].tolist())
        if not slots["active"][s]:
          yield finish(s)

  def _prefill(self, tokens, start: int, slot: int, key: np.ndarray) -> tuple[int, float]:
    """Prefills `tokens` at positions start.. of `slot` (padded to the bucket) -> (token, logp) sampled next."""
    bucket = self.config.prefill_bucket
    width = -(-len(tokens) // bucket) * bucket
    buf = np.zeros((1, width), np.int32)
    buf[0, :len(tokens)] = tokens
    token, logp, self.pages = _prefill(self.graphdef, self.params, self.pages, jnp.asarray(buf), jnp.int32(start),
                                       jnp.int32(len(tokens)), jnp.asarray(self.tables.table[slot:slot + 1]),
                                       jnp.asarray(key), sampling=self.sampling)
    return int(token), float(logp)
