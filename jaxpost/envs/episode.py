"""Running multi-turn episodes: the model writes a turn, the environment answers, generation resumes on
the same sequence, until the environment ends the episode or a budget does.

Sequence of one episode (its tokens, never re-encoded from text):
  opening prompt (the template's rendering of env.reset() with env.tools, generation prompt included)
  + turn 1 (sampled tokens, its end-of-turn token included)
  + continuation 1 (environment tokens: the template's text between that end-of-turn token and the next
    generation prompt, tool results inside, see chat.continuation_text)
  + turn 2 + ... + turn n.
`model_mask` is True exactly on sampled tokens, and `logps` holds the sampler's log-prob there (0 elsewhere):
environment tokens are in the sequence (the model attends to them) but out of the loss and out of the
importance ratios. `versions` records the policy version of each sampled token (-1 elsewhere).

Budgets: the opening prompt has at most `max_prompt_tokens` (else ValueError: it would not fit the rows), each
turn samples at most `max_turn_tokens`, and everything after the prompt (turns and environment tokens) stays
within `max_completion_tokens`. A turn cut by its budget, `max_turns` turns without an end, or a sequence at the
token budget ends the episode as truncated, rewarded `env.truncated()`.

Generation goes through `generate(requests) -> results`, one request per running episode per round:
(context ids, budget, episode index, turn index) -> (tokens, logps, finish_reason, versions); a `close()` on it,
if any, runs at the end. `engine_generate` adapts the rollout engine: each turn continues from the keys and
values its episode's last turn left in the engine's pages and prefills only the appended tokens.
Environment steps run on a thread pool, so tool calls (sandboxed programs) overlap.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from jaxpost.envs import chat
from jaxpost.envs.base import Environment, Turn

COUNTS = ("tool_calls", "tool_errors", "tool_timeouts", "malformed_calls")


@dataclasses.dataclass
class Episode:
  example: dict
  messages: list            # the transcript: opening messages, assistant turns, environment messages
  tokens: list              # [L] ids: prompt + turns + continuations
  prompt_len: int
  model_mask: list          # [L] True on sampled tokens
  logps: list               # [L] sampler log-probs on sampled tokens, 0.0 elsewhere
  versions: list            # [L] policy version of sampled tokens, -1 elsewhere
  reward: float = 0.0
  turns: int = 0
  done: bool = False        # the environment ended it
  truncated: bool = False   # a budget ended it
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, ids, model: bool, logps=None, versions=None) -> None:
    ids = [int(i) for i in ids]
    self.tokens += ids
    self.model_mask += [model] * len(ids)
    self.logps += [float(x) for x in logps] if logps is not None else [0.0] * len(ids)
    self.versions += [int(v) for v in versions] if versions is not None else [-1] * len(ids)


Request = tuple  # (context ids, budget, episode index, turn index)
Result = tuple   # (tokens, logps, finish_reason "stop" | "length", versions or None)


def run_episodes(envs: Sequence[Environment], tokenizer, generate: Callable[[list[Request]], list[Result]], *,
                 max_turns: int, max_turn_tokens: int, max_completion_tokens: int, max_prompt_tokens: int = 1 << 30,
                 workers: int = 8) -> list[Episode]:
  """Runs one episode per environment, all turns of all episodes batched round by round."""
  fmt = chat.tool_format(tokenizer)
  stop_ids = set(tokenizer.chat_stop_ids)
  episodes, tools = [], []
  for i, env in enumerate(envs):
    messages = env.reset()
    schemas = [t.schema for t in env.tools]
    ids = chat.encode_prompt(tokenizer, chat.render(tokenizer, messages, schemas, add_generation_prompt=True))
    if len(ids) > max_prompt_tokens:
      raise ValueError(f"episode {i}: the opening prompt has {len(ids)} tokens (tools included), more than the "
                       f"{max_prompt_tokens} allowed")
    episode = Episode(env.example, list(messages), [], len(ids), [], [], [])
    episode.add(ids, model=False)
    episodes.append(episode)
    tools.append(schemas)

  def finish_truncated(i):
    episodes[i].truncated = True
    episodes[i].reward += float(envs[i].truncated())

  def step(i, turn):
    return envs[i].step(turn)

  limit = [e.prompt_len + max_completion_tokens for e in episodes]  # whole-sequence budget per episode
  active = list(range(len(envs)))
  with contextlib.ExitStack() as stack:
    if hasattr(generate, "close"):
      stack.callback(generate.close)
    pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max_workers=workers))
    while active:
      requests = [(list(episodes[i].tokens), min(max_turn_tokens, limit[i] - len(episodes[i].tokens)), i,
                   episodes[i].turns) for i in active]
      results = generate(requests)
      turns = {}
      for i, (tokens, logps, reason, versions) in zip(active, results):
        episode = episodes[i]
        episode.add(tokens, model=True, logps=logps, versions=versions)
        episode.turns += 1
        if reason != "stop" or not tokens or tokens[-1] not in stop_ids:
          finish_truncated(i)
          continue
        turns[i] = Turn.parse(tokenizer.decode(list(tokens[:-1])), fmt)
      steps = dict(zip(turns, pool.map(step, turns, turns.values())))
      next_active = []
      for i, env_step in steps.items():
        episode = episodes[i]
        episode.reward += float(env_step.reward)
        episode.counts.update(env_step.counts)
        before = episode.messages + [turns[i].message()]
        episode.messages = before + list(env_step.messages)
        if env_step.done:
          episode.done = True
          continue
        if episode.turns >= max_turns:
          finish_truncated(i)
          continue
        cont = tokenizer.encode(chat.continuation_text(tokenizer, before, env_step.messages, tools[i]))
        if len(episode.tokens) + len(cont) >= limit[i]:  # No room for the answer and a model token after it.
          finish_truncated(i)
          continue
        episode.add(cont, model=False)
        next_active.append(i)
      active = next_active
  return episodes


def episode_metrics(episodes: Sequence[Episode]) -> dict:
  """Means over episodes: turns, tool calls, tool errors and timeouts, malformed calls, episode length
  (tokens after the prompt) and model tokens; the fractions truncated and that called a tool (used_tools)."""
  n = max(len(episodes), 1)
  out = {"episode/turns": sum(e.turns for e in episodes) / n,
         "episode/length": sum(len(e.tokens) - e.prompt_len for e in episodes) / n,
         "episode/model_tokens": sum(sum(e.model_mask) for e in episodes) / n,
         "episode/truncated": sum(e.truncated for e in episodes) / n}
  out.update({f"episode/{k}": sum(e.counts[k] for e in episodes) / n for k in COUNTS})
  out["episode/used_tools"] = sum(e.counts["tool_calls"] > 0 for e in episodes) / n  # fraction with a call
  return out


def engine_generate(engine, params, sampling, *, seed: int, stop_ids: Sequence[int], version: int = 0,
                    reuse_cache: bool = True):
  """A `generate` for run_episodes on the rollout engine: each request its own sample, seeded by (seed,
  episode, turn), so an episode's samples do not depend on which others run beside it. With reuse_cache each
  turn starts from the keys and values its episode's previous turn left in the engine (`CachedPrefix`) and
  prefills only what was appended; the samples are the same either way (keys fold absolute positions). When
  the running episodes' worst cases do not fit the engine's pool together (more episodes than it was sized
  for, e.g. an evaluation of many prompts), nothing is kept and each turn prefills its whole context.
  `generate.close()` releases what is still kept (run_episodes calls it)."""
  from jaxpost import engine as engine_lib
  kept = {}  # episode -> CachedPrefix of its sequence so far

  def generate(requests: list[Request]) -> list[Result]:
    running = {i for _, _, i, _ in requests}
    for i in [i for i in kept if i not in running]:  # Episodes that ended: their sequences will not continue.
      engine.release(kept.pop(i))
    # Kept pages sit outside the slots between calls: keep them only while every running episode's worst case
    # (its context and turn budget) fits the pool at once, so admission never waits on pages nobody frees.
    worst = sum(engine.pool.pages_for(len(ids) + budget - 1) for ids, budget, _, _ in requests)
    keep = reuse_cache and worst <= engine.config.num_pages
    if not keep:
      close()
    reqs = [engine_lib.Request(prompt=tuple(ids), num_samples=1, max_new_tokens=budget,
                               stop_token_ids=tuple(stop_ids), cache=kept.get(i), keep_cache=keep,
                               seed=int(np.random.SeedSequence([seed, i, turn]).generate_state(1)[0] % 2 ** 31))
            for ids, budget, i, turn in requests]
    by_request = {c.request: c for c in engine.stream(params, reqs, sampling, version=version)}
    for k, (_, _, i, _) in enumerate(requests):
      engine.release(kept.pop(i, None))
      if by_request[k].cache is not None:
        kept[i] = by_request[k].cache
    return [(by_request[k].tokens, by_request[k].logps, by_request[k].finish_reason, by_request[k].versions)
            for k in range(len(reqs))]

  def close() -> None:
    while kept:
      engine.release(kept.popitem()[1])
  generate.close = close
  return generate
