"""Rollout engine v2: requests in, completed samples out, continuous batching over a paged KV cache.

  requests -> FIFO of samples (request r, sample j) -> free slots: prefill calls for the samples admitted
  together (one per width bucket) write their prompts' pages and sample token 0 -> jitted chunk of `steps_per_check` decode steps
  over all slots (B = num_slots, T = 1) -> host: append each slot's tokens, finish the samples that stopped,
  free their pages, refill the slots. The request list may grow while this runs (refills queue behind).

Determinism: the token at position p of sample j of a request is drawn with key
fold_in(fold_in(PRNGKey(seed), j), p) (the inner fold once per sample, `_sample_keys`), and a slot's
attention reads only its own pages, so a sample's tokens depend on (params, prompt, seed, j), not on its
slot, the number of slots, its neighbours or the mesh. Log-probs are under the distribution actually
sampled from (`sampling.sample_logits`; 0 when greedy).

Pages: a sample holds pages for the tokens it has; before each chunk the host adds the pages the next
`steps_per_check` tokens need. Admission is conservative so a running sample never waits for a page: a
sample starts only when the free pages minus what running samples may still claim cover its worst case
(prompt + budget). Shared prefixes: sample 0 of a request with num_samples > 1 writes the prompt; the
prompt's full pages (all but the page of its last token) are then shared read-only by its other samples,
which prefill only the rest (in the same prefill call too: every layer writes all rows' keys before any
row attends; or in a later one, narrower calls running after wider ones). The request keeps its reference until its last sample has started. Under a context mesh the
pages are sharded over KV heads (`forward.PAGES_LOGICAL`) and the params are read where they are.

Compiled shapes: the decode chunk runs the live samples' rows only, gathered from the host-side slot
state into a rows bucket (`_rows_bucket`: num_slots / 4^k, at least MIN_ROWS), so a draining batch decodes
small; it compiles once per (bucket, EngineConfig, SamplingConfig). Prefill compiles once per (rows
bucket, width), width a multiple of `prefill_bucket`.

Deviations from a production engine (vLLM-style), for later steps: no preemption (admission reserves the
worst case instead); prefill is its own call, not fused into the decode batch; paged attention gathers a
slot's whole page table (max_seq_len keys), not only the pages it holds; the host loop reads every chunk's
outputs (one process; the static sampler serves multi-host runs); one temperature / top-k / top-p per call.

Continued sequences (multi-turn episodes): a request with `keep_cache=True` hands back, with each finished
sample, a `CachedPrefix` holding one reference to the pages of every token it fed; a later request whose
prompt extends those tokens (`Request(cache=...)`, one sample) starts from them and prefills only the new
tokens (the last sampled token and what was appended after it). Keys fold the absolute position, so its
tokens are the ones a full prefill would sample. The caller releases a prefix (`Engine.release`) when the
sequence will not continue; an abandoned stream resets the pool, and prefixes from before the reset are then
ignored (full prefill).

Weight updates mid-stream (`weights=`, the asynchronous online loop's split pools): the params are read
again at each host check, so running samples continue on new weights; every token records the version of
the params that sampled it. Keys and values cached under older weights are kept, not recomputed.
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


@dataclasses.dataclass(frozen=True, eq=False)
class CachedPrefix:
  """The keys and values of `tokens` (positions 0 .. len(tokens) - 1) in the engine's pool, kept from a finished
  sample for a request that continues the same sequence; one reference to `pages` until Engine.release."""
  tokens: tuple[int, ...]
  pages: tuple[int, ...]
  generation: int                        # The pool it lives in (see Engine.generation).


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
  prompt: tuple[int, ...]                # Prompt token ids (non-empty).
  num_samples: int = 1                   # Samples G wanted.
  max_new_tokens: int = 64               # Completion budget N per sample.
  stop_token_ids: tuple[int, ...] = ()   # A sample ends after emitting one of these (kept in its tokens).
  seed: int = 0
  cache: CachedPrefix | None = None      # KV of a prefix of `prompt` (one sample only): prefill the rest.
  keep_cache: bool = False               # Hand back each finished sample's KV as Completion.cache.

  def __post_init__(self):
    object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))
    object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))


@dataclasses.dataclass(frozen=True)
class Completion:
  """Sample `sample` of request `request` (its index in the list given): tokens (stop token included),
  logps (len(tokens),) f32 under the sampling distribution, finish_reason 'stop' or 'length', versions
  (len(tokens),) int32: the params version that sampled each token."""
  request: int
  sample: int
  tokens: list[int]
  logps: np.ndarray
  finish_reason: str
  versions: np.ndarray | None = None
  cache: CachedPrefix | None = None  # With Request.keep_cache: prompt + tokens[:-1] (the last is never fed).


# ---------------------------------------------------------------- Jitted pieces

MIN_ROWS = 8  # Smallest rows bucket of a prefill or decode call (fewer compiles; tiny calls cost the same).


def _rows_bucket(n: int, cap: int) -> int:
  """Rows a call of n live rows runs: cap (num_slots) divided by a power of 4, the smallest that holds n and
  MIN_ROWS (128 slots: 8, 32 or 128 rows), so a model compiles a few sizes of each call, not one per n."""
  rows = cap
  while rows // 4 >= max(n, MIN_ROWS):
    rows //= 4
  return rows


def _sample_keys(seed, sample):
  """seed, sample (R,) int32 -> (R, 2) uint32 raw keys fold_in(PRNGKey(seed), sample): each sample's base
  key, made once at its prefill so the decode steps fold only the position."""
  return jax.vmap(lambda s, j: jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(s), j)))(seed, sample)


def _keys(base, position):
  """base (B, 2) uint32 raw keys, position (B,) int32 -> (B,) keys fold_in(base, position)."""
  return jax.vmap(lambda k, p: jax.random.fold_in(jax.random.wrap_key_data(k, impl="threefry2x32"), p))(base, position)


def _sample(logits, keys, sampling):
  """logits (B, V), keys (B,) -> tokens, logps (B,): `sample_logits` row by row, each row with its own key."""
  token, logp = jax.vmap(lambda l, k: sampling_lib.sample_logits(l[None], k, sampling))(logits, keys)
  return token[:, 0], logp[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"), donate_argnames=("pages",))
def _prefill(graphdef, params, pages, tokens, start, length, page_table, seed, sample, *, sampling):
  """Writes row r's tokens (R, T) (its first length[r] valid) at positions start[r].. of its pages and samples
  each row's next token. start, length, seed, sample (R,) int32; page_table (R, P). Rows of length 0 are
  padding (they write to the trash page; their outputs are ignored).

  -> (tokens (R,), logps (R,), base keys (R, 2) uint32 (`_sample_keys`), pages)."""
  model = nnx.merge(graphdef, params)
  t = tokens.shape[1]
  positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None]  # (R, T)
  valid = jnp.arange(t)[None] < length[:, None]  # (R, T)
  hidden, pages = forward_lib.forward(model, pages, tokens, positions, valid, page_table)
  last = jnp.take_along_axis(hidden, jnp.maximum(length - 1, 0)[:, None, None], axis=1)[:, 0]  # (R, D)
  base_key = _sample_keys(seed, sample)  # (R, 2)
  token, logp = _sample(model.logits(last), _keys(base_key, start + length), sampling)
  return token, logp, base_key, pages


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "steps"), donate_argnames=("pages",))
def _decode(graphdef, params, pages, page_table, slots, *, sampling, steps):
  """`steps` decode steps over all slots. slots: token, position (of the token to feed), key (B, 2) uint32
  (`_sample_keys`), remaining (tokens still allowed), active (B,) and stop_ids (B, MAX_STOP_IDS; -1 = none).

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
  versions: list = dataclasses.field(default_factory=list)


class Engine:
  """Continuous-batching sampler: a page pool and slots, reused across calls; params and sampling settings
  come with each call (the trainer's live params, a pure dict, as `sampling.generate` takes them)."""

  def __init__(self, graphdef, model_cfg, config: EngineConfig):
    self.graphdef, self.model_cfg, self.config = graphdef, model_cfg, config
    self.pool = pages_lib.PagePool(config.num_pages, config.page_size)
    self.tables = pages_lib.PageTables(config.num_slots, config.max_pages)
    self.pages = forward_lib.init_pages(model_cfg, config.num_pages, config.page_size)
    self.peak_pages = 0  # Most pages in use at once (the pool's high-water mark), for tests and benchmarks.
    # Running totals: decode occupancy = decode_tokens / (decode_rows * steps_per_check), the share of the
    # decode rows computed that produced a token; the `queued_` pair counts only chunks that started with
    # samples still waiting for a slot (the steady state, before a workload drains).
    self.stats = {"decode_calls": 0, "decode_rows": 0, "decode_tokens": 0, "queued_decode_rows": 0,
                  "queued_decode_tokens": 0, "prefill_calls": 0, "prefill_rows": 0, "prefill_tokens": 0}
    self.generation = 0  # Bumped when the pool is reset: prefixes of older generations are void.
    self._held: dict[int, CachedPrefix] = {}  # id -> live CachedPrefix (each holds one reference to its pages)

  # -- kept prefixes
  def _usable(self, cache: CachedPrefix | None) -> CachedPrefix | None:
    live = cache is not None and cache.generation == self.generation and id(cache) in self._held
    return cache if live else None

  def release(self, cache: CachedPrefix | None) -> None:
    """Drops a kept prefix's pages (a no-op for None or a prefix from before a pool reset)."""
    if self._usable(cache) is not None:
      del self._held[id(cache)]
      self.pool.free(cache.pages)

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
    if r.cache is not None:
      n = len(r.cache.tokens)
      if r.num_samples != 1 or n >= len(r.prompt) or r.prompt[:n] != r.cache.tokens:
        raise ValueError(f"{where}: a cached prefix of {n} tokens needs one sample and a prompt that extends "
                         "exactly those tokens")
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
  def generate(self, params, requests: list[Request], sampling: sampling_lib.SamplingConfig) -> list[Completion]:
    """Every sample of every request, ordered by (request, sample)."""
    return sorted(self.stream(params, requests, sampling), key=lambda c: (c.request, c.sample))

  def stream(self, params, requests: list[Request], sampling: sampling_lib.SamplingConfig, *,
             on_tokens=None, version: int = 0, weights=None) -> Iterator[Completion]:
    """Yields each sample as soon as it finishes (see `stream_chunks`)."""
    for finished in self.stream_chunks(params, requests, sampling, on_tokens=on_tokens, version=version,
                                       weights=weights):
      yield from finished

  def stream_chunks(self, params, requests: list[Request], sampling: sampling_lib.SamplingConfig, *,
                    on_tokens=None, version: int = 0, weights=None) -> Iterator[list[Completion]]:
    """Yields the samples that finished at each host check (a non-empty list each time). `requests` may grow
    while this runs (the caller appends to the list, e.g. refills after a completion): appended requests
    queue behind the others and can start at the very next check.

    sampling: temperature / top_k / top_p for every request (its other fields are per request here).
    on_tokens(request, sample, tokens): called with each sample's new tokens as they reach the host.
    version: recorded on every token sampled with `params`. weights() -> (version, params), if given, is
    called at each host check and its params used from then on (running samples continue on them).
    A caller may stop iterating early (close the generator): the samples still running are dropped and
    every page returns to the pool."""
    try:
      yield from self._chunks(params, requests, sampling, on_tokens, version, weights)
    finally:
      held = {p for cache in self._held.values() for p in cache.pages}
      if self.pool.num_pages - self.pool.num_free != len(held):  # Abandoned (or failed) midway: start clean.
        self.pool = pages_lib.PagePool(self.config.num_pages, self.config.page_size)
        self.tables = pages_lib.PageTables(self.config.num_slots, self.config.max_pages)
        self.generation += 1
        self._held.clear()

  def _chunks(self, params, requests, sampling, on_tokens, version, weights) -> Iterator[list[Completion]]:
    """`stream_chunks`' loop."""
    sampling = dataclasses.replace(sampling, max_new_tokens=1, num_samples=1, seed=0, stop_token_ids=())
    self.pages = forward_lib.place_pages(self.pages, params)
    c, pool, tables = self.config, self.pool, self.tables
    b = c.num_slots
    slots = {"token": np.zeros(b, np.int32), "position": np.zeros(b, np.int32), "key": np.zeros((b, 2), np.uint32),
             "remaining": np.zeros(b, np.int32), "active": np.zeros(b, bool),
             "stop_ids": np.full((b, MAX_STOP_IDS), -1, np.int32)}
    running: list[_Running | None] = [None] * b
    pending = collections.deque()  # (request, sample) in FIFO order
    seen = 0  # Requests queued so far (the list may grow).
    prefixes: dict[int, list[int]] = {}  # request -> its shared prompt pages (the request's own reference)
    finished: list[Completion] = []  # Since the last yield.

    def finish(s: int) -> Completion:
      run = running[s]
      r = requests[run.request]
      pages = tables.release(s)
      cache = None
      if r.keep_cache:  # Keep the pages of every token fed: the prompt and all sampled tokens but the last.
        fed = r.prompt + tuple(run.tokens[:-1])
        keep = pool.pages_for(len(fed))
        cache = CachedPrefix(fed, tuple(pages[:keep]), self.generation)
        self._held[id(cache)] = cache
        pages = pages[keep:]
      pool.free(pages)
      running[s] = None
      slots["active"][s] = False
      reason = "stop" if run.tokens[-1] in r.stop_token_ids else "length"
      return Completion(run.request, run.sample, run.tokens, np.asarray(run.logps, np.float32), reason,
                        np.asarray(run.versions, np.int32), cache)

    def claimable() -> int:  # Pages running samples may still allocate.
      return sum(run.max_own - run.own for run in running if run is not None)

    def emit(s: int, tokens, logps) -> None:
      run = running[s]
      run.tokens.extend(tokens)
      run.logps.extend(logps)
      run.versions.extend([version] * len(tokens))
      if on_tokens is not None and tokens:
        on_tokens(run.request, run.sample, list(tokens))

    while True:
      if finished:
        yield finished  # The caller may append requests now; they are read just below.
        finished = []
      while seen < len(requests):
        self._check(seen, requests[seen])
        pending.extend((seen, j) for j in range(requests[seen].num_samples))
        seen += 1
      if not pending and all(run is None for run in running):
        return
      if weights is not None:
        version, params = weights()
      # ---- Refill free slots in FIFO order (a sample that does not fit yet waits; nothing overtakes it).
      admitted = []  # (slot, prompt tokens to prefill, their start position, base key)
      for s in range(b):
        if running[s] is not None or not pending:
          continue
        i, j = pending[0]
        r = requests[i]
        cached = self._usable(r.cache)
        n_cached = len(cached.pages) if cached else 0
        n_shared = 0 if cached else self._shared_pages(r)
        cache_tokens = len(r.prompt) + r.max_new_tokens - 1
        max_own = pool.pages_for(cache_tokens) - n_shared - n_cached
        new_prefix = n_shared if (n_shared and i not in prefixes) else 0
        if pool.num_free - claimable() < max_own + new_prefix:
          if not admitted and all(run is None for run in running):  # Cannot happen after _check; never spin.
            raise pages_lib.PoolTooSmallError(f"EngineConfig.num_pages: request {i} does not fit an empty pool")
          break
        pending.popleft()
        if new_prefix:
          prefixes[i] = pool.alloc(n_shared)
        run = _Running(i, j, len(r.prompt), cache_tokens, max_own)
        start = 0
        if cached:  # The slot reads (and extends, past its end) the kept prefix's pages.
          tables.append(s, pool.share(cached.pages))
          start = len(cached.tokens)
        elif n_shared:
          tables.append(s, pool.share(prefixes[i]))
          # Sample 0 writes the shared pages (FIFO admits it first, in this call or an earlier one: within a
          # prefill call every layer writes all rows' keys before any row attends).
          start = 0 if j == 0 else n_shared * c.page_size
          if j == r.num_samples - 1:
            pool.free(prefixes.pop(i))  # The last sample has its reference; the request lets go.
        run.own = pool.pages_for(len(r.prompt)) - n_shared - n_cached
        tables.append(s, pool.alloc(run.own))
        running[s] = run
        admitted.append((s, r.prompt[start:], start, (r.seed, j)))
      for (s, *_), (token, logp, key) in zip(admitted, self._prefill(params, admitted, sampling) if admitted else []):
        run, r = running[s], requests[running[s].request]
        emit(s, [token], [logp])
        if token in r.stop_token_ids or r.max_new_tokens == 1:
          finished.append(finish(s))
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
      # ---- Decode the running samples only: their rows gathered into a power-of-two bucket (the slot
      # state and page tables live on the host, so a slot is just a row here; a draining batch runs small).
      live = np.flatnonzero(slots["active"])
      rows = _rows_bucket(len(live), b)
      sub = {k: np.zeros((rows,) + v.shape[1:], v.dtype) for k, v in slots.items()}
      for k, v in slots.items():
        sub[k][:len(live)] = v[live]
      table = np.zeros((rows, c.max_pages), np.int32)
      table[:len(live)] = tables.table[live]
      self.pages, out, tokens, logps = _decode(self.graphdef, params, self.pages, table, sub,
                                               sampling=sampling, steps=c.steps_per_check)
      out, tokens, logps = jax.device_get((out, tokens, logps))
      for k, v in out.items():
        slots[k][live] = v[:len(live)]
      queued = bool(pending) or seen < len(requests)
      emitted = tokens[:len(live)] >= 0  # (live, steps)
      self.stats["decode_calls"] += 1
      self.stats["decode_rows"] += rows
      self.stats["decode_tokens"] += int(emitted.sum())
      if queued:
        self.stats["queued_decode_rows"] += rows
        self.stats["queued_decode_tokens"] += int(emitted.sum())
      for row, s in enumerate(live):
        emit(s, tokens[row][emitted[row]].tolist(), logps[row][emitted[row]].tolist())
        if not slots["active"][s]:
          finished.append(finish(s))

  def _prefill(self, params, admitted, sampling) -> list[tuple[int, float, np.ndarray]]:
    """Prefills every admitted (slot, tokens, start, (seed, sample)) -> each row's sampled token, its logp
    and the sample's base key, in order.

    One call per width bucket (a multiple of prefill_bucket), widest first: a request's sample 0 carries
    its whole prompt, so it is in the widest call its siblings' (shorter) rows need, or in an earlier one.
    Rows are padded to a `_rows_bucket`, so the compiles are few."""
    c = self.config
    width = lambda t: -(-len(t) // c.prefill_bucket) * c.prefill_bucket
    results = {}
    for w in sorted({width(t) for _, t, _, _ in admitted}, reverse=True):
      group = [(i, a) for i, a in enumerate(admitted) if width(a[1]) == w]
      rows = _rows_bucket(len(group), c.num_slots)
      buf, table = np.zeros((rows, w), np.int32), np.zeros((rows, c.max_pages), np.int32)
      start, length, seed, sample = (np.zeros(rows, np.int32) for _ in range(4))
      for row, (_, (s, tokens, first, (seed[row], sample[row]))) in enumerate(group):
        buf[row, :len(tokens)], start[row], length[row], table[row] = tokens, first, len(tokens), self.tables.table[s]
      token, logp, key, self.pages = _prefill(self.graphdef, params, self.pages, buf, start, length, table, seed,
                                              sample, sampling=sampling)
      token, logp, key = jax.device_get((token, logp, key))
      results.update({i: (int(token[row]), float(logp[row]), key[row]) for row, (i, _) in enumerate(group)})
      self.stats["prefill_calls"] += 1
      self.stats["prefill_rows"] += len(group)
      self.stats["prefill_tokens"] += int(length.sum())
    return [results[i] for i in range(len(admitted))]
