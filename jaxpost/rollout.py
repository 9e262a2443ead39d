"""Rollouts of an online run: prompts dealt in a checkpointable order, sampling with the live params,
host-side rewards, held-out greedy accuracy, and the training rows built from the samples.

Sampling goes through the rollout engine (jaxpost/engine, rl.sampler = engine): one request per prompt
(G samples, its own seed), groups judged as they complete, and a rejected group replaced by a fresh
prompt's request while the others still decode; or through the static sampler (rl.sampler = static,
`sampling.generate`), rounds of one padded batch of P prompts.

Under rl.env each sample is a multi-turn episode (jaxpost/envs): its prompt is the environment's opening
prompt (tools included), its completion every later token (the model's turns and the environment's tokens
between them), its reward the environment's; the environment's tokens carry no loss (`Group.model_mask`).

Row r = prompt (P_r tokens) + completion (C_r tokens, its stop token included), right-padded to T:
  inputs = row[:-1], targets = row[1:], loss_mask = 1 where the target is a completion token (a model token,
  under rl.env).
`old_logps` sit on the same positions: the sampler's log-prob of completion token j lands at column
P_r - 1 + j (the column whose target it is).
"""
from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np

from jaxpost import engine as engine_lib
from jaxpost import rewards as rewards_lib
from jaxpost import sampling as sampling_lib
from jaxpost.config import ConfigError
from jaxpost.data.jsonl import split_paths
from jaxpost.data.prompts import load_prompts, reply_tokens


@dataclasses.dataclass
class Rollouts:
  """Prompts, tokenizer, rewards and sampling settings of an online run (config.rl)."""
  rl: object
  seed: int
  tokenizer: object
  graphdef: object
  prompts: list
  eval_prompts: list | None
  prompt_stats: dict
  reward_fns: object
  sampling: sampling_lib.SamplingConfig | None = None  # rl's sampler settings, built once (sample() varies G, T, seed).
  engine: engine_lib.Engine | None = None  # Built on first use under rl.sampler = engine (its page pool persists).
  eval_engine: engine_lib.Engine | None = None  # evaluate()'s own, when rollouts run on another thread.
  separate_eval_engine: bool = False  # Asynchronous loop: the producer thread owns `engine`.

  def __post_init__(self):
    if self.sampling is None:
      rl = self.rl
      self.sampling = sampling_lib.SamplingConfig(
          max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p,
          num_samples=rl.num_generations, stop_token_ids=self.tokenizer.chat_stop_ids, seed=self.seed)

  @classmethod
  def from_config(cls, config, tokenizer, graphdef) -> "Rollouts":
    rl = config.rl
    try:
      reward_fns = rewards_lib.combine(rl.reward_fns)
    except (KeyError, ValueError, ImportError, AttributeError, TypeError) as e:
      raise ConfigError(f"config.rl.reward_fns={rl.reward_fns!r}: {e.args[0] if e.args else e}") from None
    if rl.pass_k and not any(r.weight != 0 and rewards_lib.is_verifier(r.fn) for r in reward_fns):
      raise ConfigError(f"config.rl.pass_k={rl.pass_k}: pass@k counts correct samples, and none of "
                        f"config.rl.reward_fns={rl.reward_fns!r} is a verifier (math, exact_match, multiple_choice, "
                        "code, or a function with `.verifier = True`)")
    if not config.data.train_path:
      raise ConfigError(f"config.data.train_path: empty; {config.algorithm} needs prompt JSONL")
    prompts, stats = load_prompts(split_paths(config.data.train_path), tokenizer, max_prompt_len=rl.max_prompt_len)
    eval_prompts = None
    if config.data.eval_path:
      eval_prompts, _ = load_prompts(split_paths(config.data.eval_path), tokenizer,
                                     max_prompt_len=rl.max_prompt_len)
      eval_prompts = eval_prompts[:rl.eval_prompts]
    return cls(rl, config.train.seed, tokenizer, graphdef, prompts, eval_prompts, stats, reward_fns)

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return self.tokenizer.chat_stop_ids

  def next_prompts(self, n: int, loop_state: dict) -> list[dict]:
    """n prompts from a seeded shuffle, epoch after epoch; the position lives in `loop_state` (checkpointed)."""
    out = []
    while len(out) < n:
      order = np.random.default_rng(self.seed + loop_state["epoch"]).permutation(len(self.prompts))
      take = order[loop_state["cursor"]:loop_state["cursor"] + n - len(out)]
      out += [self.prompts[i] for i in take]
      loop_state["cursor"] += len(take)
      if loop_state["cursor"] >= len(self.prompts):
        loop_state["cursor"], loop_state["epoch"] = 0, loop_state["epoch"] + 1
    return out

  def sample(self, params, batch_prompts, *, seed: int, num_samples: int | None = None,
             temperature: float | None = None, purpose: str = "train"):
    """G samples (num_samples, default rl.num_generations) of each prompt at `temperature` (default
    rl.temperature) -> sampling.SampleOutput. purpose: "eval" samples on the evaluation's engine."""
    cfg = dataclasses.replace(self.sampling, seed=seed, num_samples=num_samples or self.sampling.num_samples,
                              temperature=self.sampling.temperature if temperature is None else temperature)
    if self.rl.sampler == "static":
      return sampling_lib.generate(self.graphdef, params, [p["tokens"] for p in batch_prompts], cfg,
                                   pad_id=self.tokenizer.pad_id or 0,
                                   compiler_options=sampling_lib.CUDA_GRAPHS if self.rl.cuda_graphs else ())
    requests = [self._request(p, seed, k, cfg.num_samples) for k, p in enumerate(batch_prompts)]
    done = self._engine(params, purpose).generate(params, requests, cfg)
    return sample_output(done, cfg.max_new_tokens, self.tokenizer.pad_id or 0)

  def collect(self, params, loop_state: dict, *, seed: int, judge, version: int = 0, weights=None,
              cancel=None) -> tuple[list["Group"], dict]:
    """Groups of G samples until rl.prompts_per_step (P) are kept or rl.max_refills * P more prompts are spent
    (the engine: replacements as requests; static: whole rounds of P). May return more than P kept groups.

    judge(prompts, out) -> (keep (k,) bool, rewards (k*G,), metrics) scores k complete groups at once (out:
    their rows, G per prompt, in order); each rejected group's prompt is replaced by the next prompt.
    version: the params' policy version, recorded per token. weights() -> (version, params), if given, is read
    at each of the engine's host checks (weights updated mid-sample). cancel() -> True stops early (the
    groups judged so far are returned). Returns (every judged Group, kept or not, in the order judged; the
    judge's metrics over all its rows)."""
    rl = self.rl
    if rl.env:
      return self._collect_episodes(params, loop_state, seed=seed, judge=judge, version=version, cancel=cancel)
    g, want, spare = rl.num_generations, rl.prompts_per_step, rl.max_refills * rl.prompts_per_step
    judged, parts = [], []

    def judge_groups(prompts, out, versions) -> None:
      """Judges len(prompts) groups (out: their rows, G per prompt; versions (k*G, N) int32, -1 past the end)."""
      keep, rewards, metrics = judge(prompts, out)
      parts.append((len(prompts) * g, metrics))
      judged.extend(groups_of(prompts, out, keep, rewards, versions))

    if rl.sampler == "static":  # Rounds of P fresh prompts (one batch shape, one compile) while groups miss.
      for round_ in range(rl.max_refills + 1):
        prompts = self.next_prompts(want, loop_state)
        out = self.sample(params, prompts, seed=seed + round_)
        versions = np.where(np.arange(out.tokens.shape[1]) < out.lengths[:, None], version, -1).astype(np.int32)
        judge_groups(prompts, out, versions)
        if sum(x.keep for x in judged) >= want or (cancel is not None and cancel()):
          break
      return judged, merge_metrics(parts)
    prompts = self.next_prompts(want, loop_state)
    requests = [self._request(p, seed, k, g) for k, p in enumerate(prompts)]
    samples = collections.defaultdict(list)
    for finished in self._engine(params).stream_chunks(params, requests, self.sampling, version=version,
                                                       weights=weights):
      if cancel is not None and cancel():
        break
      complete = []  # Requests whose G samples are all done at this check.
      for c in finished:
        samples[c.request].append(c)
        if len(samples[c.request]) == g:
          complete.append(c.request)
      if not complete:
        continue
      done = [x for r in complete for x in sorted(samples.pop(r), key=lambda x: x.sample)]
      judge_groups([prompts[r] for r in complete], sample_output(done, rl.max_new_tokens, self.tokenizer.pad_id or 0),
                   sample_versions(done, rl.max_new_tokens))
      kept = sum(x.keep for x in judged)
      if kept >= want:
        break  # Enough: the requests still running are dropped (the engine frees their pages).
      # Replacements join the running engine as new requests: enough in flight to fill the missing groups
      # at the keep rate seen so far this step (so a step takes few rounds), within the spare prompts.
      in_flight = len(requests) - len(judged)
      target = math.ceil((want - kept) / max(kept / len(judged), 0.1))
      for _ in range(min(max(target - in_flight, 0), spare)):
        spare -= 1
        prompts += self.next_prompts(1, loop_state)
        requests.append(self._request(prompts[-1], seed, len(requests), g))
    return judged, merge_metrics(parts)

  def dataset_groups(self, loop_state: dict, field: str, *, judge, version: int = 0) -> tuple[list["Group"], dict]:
    """A step of the dataset's own replies instead of samples (GKD's off-policy steps): P prompts dealt as
    `collect` deals them, each group its record's `field` reply (`reply_tokens`) on all G rows, scored by the
    judge like samples (for the reward metrics). The rows carry no sampler log-probs (zeros); their tokens are
    recorded as of `version` (the step's policy)."""
    rl, g = self.rl, self.rl.num_generations
    prompts = self.next_prompts(rl.prompts_per_step, loop_state)
    replies = [reply_tokens(p, field, self.tokenizer, max_tokens=rl.max_new_tokens) for p in prompts]
    tokens = np.full((len(prompts) * g, rl.max_new_tokens), self.tokenizer.pad_id or 0, np.int32)
    lengths = np.zeros(len(prompts) * g, np.int32)
    for r in range(len(prompts) * g):
      reply = replies[r // g][0]
      tokens[r, :len(reply)], lengths[r] = reply, len(reply)
    out = sampling_lib.SampleOutput(tokens=tokens, lengths=lengths, logps=np.zeros(tokens.shape, np.float32),
                                    finish_reasons=["length" if replies[r // g][1] else "stop" for r in range(len(lengths))])
    keep, rewards, metrics = judge(prompts, out)
    versions = np.where(np.arange(tokens.shape[1]) < lengths[:, None], version, -1).astype(np.int32)  # (R, N)
    return groups_of(prompts, out, keep, rewards, versions), metrics

  def episodes(self, params, batch_prompts, *, seed: int, num_samples: int, temperature: float | None = None,
               version: int = 0, purpose: str = "train"):
    """num_samples episodes of rl.env per prompt (row r: prompt r // num_samples) -> (SampleOutput of the
    completions after each opening prompt, model_mask (R, N) bool, the opening prompts' ids (P lists),
    rewards (R,) f32, metrics)."""
    from jaxpost import envs
    from jaxpost.envs import episode as episode_lib
    rl = self.rl
    cfg = dataclasses.replace(self.sampling, temperature=self.sampling.temperature if temperature is None else temperature)
    generate = episode_lib.engine_generate(self._engine(params, purpose), params, cfg, seed=seed,
                                           stop_ids=self.stop_ids, version=version)
    make = lambda record: envs.make(rl.env, record, reward_fns=rl.reward_fns)
    try:
      eps = episode_lib.run_episodes([make(p["record"]) for p in batch_prompts for _ in range(num_samples)],
                                     self.tokenizer, generate, max_turns=rl.max_turns,
                                     max_turn_tokens=rl.max_turn_tokens or rl.max_new_tokens,
                                     max_completion_tokens=rl.max_new_tokens, max_prompt_tokens=rl.max_prompt_len)
    except ValueError as e:
      if "opening prompt" not in str(e):
        raise
      raise ConfigError(f"config.rl.max_prompt_len={rl.max_prompt_len}: rl.env={rl.env!r}: {e}") from None
    n = rl.max_new_tokens
    tokens = np.full((len(eps), n), self.tokenizer.pad_id or 0, np.int32)
    logps, mask = np.zeros((len(eps), n), np.float32), np.zeros((len(eps), n), bool)
    for r, e in enumerate(eps):
      c = len(e.tokens) - e.prompt_len
      tokens[r, :c], logps[r, :c] = e.tokens[e.prompt_len:], e.logps[e.prompt_len:]
      mask[r, :c] = e.model_mask[e.prompt_len:]
    out = sampling_lib.SampleOutput(tokens=tokens, lengths=np.array([len(e.tokens) - e.prompt_len for e in eps],
                                                                    np.int32),
                                    finish_reasons=["stop" if e.done else "length" for e in eps], logps=logps)
    rewards = np.array([e.reward for e in eps], np.float32)
    metrics = {"reward/env": float(rewards.mean()) if len(eps) else 0.0, **episode_lib.episode_metrics(eps)}
    if any(r.weight != 0 and rewards_lib.is_verifier(r.fn) for r in self.reward_fns):
      metrics["accuracy"] = 100.0 * float((rewards >= 1.0).mean()) if len(eps) else 0.0
    prompts = [eps[p * num_samples].tokens[:eps[p * num_samples].prompt_len] for p in range(len(batch_prompts))]
    return out, mask, prompts, rewards, metrics

  def _collect_episodes(self, params, loop_state: dict, *, seed: int, judge, version: int, cancel):
    """`collect` under rl.env: rounds of episodes for the prompts still missing (P, then the groups the judge
    dropped), rl.max_refills rounds at most; the judge sees the environments' rewards (`scored`)."""
    rl, g = self.rl, self.rl.num_generations
    judged, parts = [], []
    for round_ in range(rl.max_refills + 1):
      missing = rl.prompts_per_step - sum(x.keep for x in judged)
      prompts = self.next_prompts(missing, loop_state)
      out, mask, opening, rewards, metrics = self.episodes(params, prompts, seed=seed + round_, num_samples=g,
                                                           version=version)
      prompts = [dict(p, tokens=ids) for p, ids in zip(prompts, opening)]  # The rows start with the env's prompt.
      keep, shaped, metrics = judge(prompts, out, scored=(rewards, metrics))
      parts.append((len(prompts) * g, metrics))
      judged.extend(groups_of(prompts, out, keep, shaped, np.where(mask, version, -1).astype(np.int32), mask))
      if sum(x.keep for x in judged) >= rl.prompts_per_step or (cancel is not None and cancel()):
        break
    return judged, merge_metrics(parts)

  def _evaluate_episodes(self, params) -> dict:
    """Greedy episodes of the held-out prompts: mean reward, accuracy (where a verifier scores the outcome) and
    the episodes' metrics (turns, tool calls, ...)."""
    _, _, _, rewards, metrics = self.episodes(params, self.eval_prompts, seed=0, num_samples=1, temperature=0.0,
                                              purpose="eval")
    result = {"eval/reward/mean": float(np.mean(rewards))}
    result.update({"eval/" + k: v for k, v in metrics.items() if k == "accuracy" or k.startswith("episode/")})
    return result

  def _request(self, prompt: dict, seed: int, k: int, num_samples: int) -> engine_lib.Request:
    """The engine request of the k-th prompt drawn under `seed`: its own seed, hashed from (seed, k)."""
    request_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0] % 2 ** 31)
    return engine_lib.Request(prompt=prompt["tokens"], num_samples=num_samples, max_new_tokens=self.rl.max_new_tokens,
                              stop_token_ids=self.stop_ids, seed=request_seed)

  def _engine(self, params, purpose: str = "train") -> engine_lib.Engine:
    """The rollout engine, built on first use: rl.engine's slots and pages (0 = automatic, see config.py);
    purpose "eval" gets a second one when `separate_eval_engine` (an engine serves one thread)."""
    if purpose == "eval" and self.separate_eval_engine:
      if self.eval_engine is None:
        self.eval_engine = self._new_engine(params)
      return self.eval_engine
    if self.engine is None:
      self.engine = self._new_engine(params)
    return self.engine

  def _new_engine(self, params) -> engine_lib.Engine:
    from flax import nnx
    rl, e = self.rl, self.rl.engine
    slots = e.num_slots or rl.prompts_per_step * rl.num_generations
    max_seq_len = rl.max_prompt_len + rl.max_new_tokens
    pages = e.num_pages or slots * -(-(max_seq_len - 1) // e.page_size)
    config = engine_lib.EngineConfig(num_slots=slots, page_size=e.page_size, num_pages=pages,
                                     max_seq_len=max_seq_len, steps_per_check=min(e.steps_per_check, rl.max_new_tokens))
    return engine_lib.Engine(self.graphdef, nnx.merge(self.graphdef, params).cfg, config)

  def score(self, out, batch_prompts, num_samples: int):
    """(rewards (R,) f32, reward metrics) of sampled rows (see `score_rows`)."""
    return self.score_rows(out, batch_prompts, num_samples)[:2]

  def score_rows(self, out, batch_prompts, num_samples: int):
    """(rewards (R,) f32, reward metrics, correct (R,) bool or None without a verifier) of sampled rows;
    row r belongs to prompt r // num_samples. Metrics include `accuracy` where a verifier defines it."""
    texts = [self.tokenizer.decode([x for x in c if x not in self.stop_ids]) for c in out.completions()]
    records = [batch_prompts[r // num_samples]["record"] for r in range(len(texts))]
    return rewards_lib.score_rows(self.reward_fns, texts, records, timeout_s=self.rl.reward_timeout_s,
                                  truncated=[f == "length" for f in out.finish_reasons])

  def evaluate(self, params) -> dict:
    """Greedy decoding of the held-out prompts: mean reward, and where a verifier defines correctness,
    accuracy (% of prompts answered correctly) and, if asked, pass@k (% with a correct one of k samples)."""
    rl = self.rl
    if rl.env:
      return self._evaluate_episodes(params)
    out = self.sample(params, self.eval_prompts, num_samples=1, temperature=0.0, seed=0, purpose="eval")
    rewards, metrics, correct = self.score_rows(out, self.eval_prompts, 1)
    result = {"eval/reward/mean": float(np.mean(rewards))}
    if correct is not None:
      result["eval/accuracy"] = 100.0 * float(np.mean(correct))
    # How the greedy answers were read, and how many ran to the budget (see rewards/provenance.py).
    result.update({"eval/" + k[len("reward/"):]: v for k, v in metrics.items()
                   if k.endswith(("/anchored", "/fallback")) or k.startswith("reward/truncated")})
    if rl.pass_k:
      out = self.sample(params, self.eval_prompts, num_samples=rl.pass_k, seed=1, purpose="eval")
      _, _, correct = self.score_rows(out, self.eval_prompts, rl.pass_k)
      result[f"eval/pass@{rl.pass_k}"] = 100.0 * float(np.mean(correct.reshape(-1, rl.pass_k).any(axis=1)))
    return result


@dataclasses.dataclass(frozen=True)
class Group:
  """One prompt's G samples as judged: out holds its G rows; rewards (G,) as the judge shaped them."""
  prompt: dict
  out: sampling_lib.SampleOutput
  keep: bool
  rewards: np.ndarray
  versions: np.ndarray  # (G, N) int32: the policy version that sampled each token (-1 past a sample's end).
  model_mask: np.ndarray | None = None  # (G, N) bool under rl.env: True on the model's tokens (else all of them).

  def oldest(self) -> int:
    """The oldest policy version any of its tokens came from."""
    return int(self.versions[self.versions >= 0].min(initial=np.iinfo(np.int32).max))


def groups_of(prompts: list[dict], out: sampling_lib.SampleOutput, keep, rewards, versions,
              model_mask=None) -> list[Group]:
  """One Group per prompt from judged rows (G = rows / prompts consecutive rows each): out, rewards (R,),
  versions (R, N) and model_mask (R, N) or None, sliced per group; keep (P,)."""
  if not prompts:
    return []
  g = len(out.lengths) // len(prompts)
  rows = [slice(p * g, (p + 1) * g) for p in range(len(prompts))]
  return [Group(prompt, sampling_lib.SampleOutput(out.tokens[r], out.lengths[r], out.finish_reasons[r], out.logps[r]),
                bool(keep[p]), np.asarray(rewards[r]), versions[r], None if model_mask is None else model_mask[r])
          for p, (prompt, r) in enumerate(zip(prompts, rows))]


def sample_output(completions, max_new_tokens: int, pad_id: int) -> sampling_lib.SampleOutput:
  """Engine completions, in row order -> the static sampler's SampleOutput (tokens and logps padded to N)."""
  tokens = np.full((len(completions), max_new_tokens), pad_id, np.int32)
  logps = np.zeros((len(completions), max_new_tokens), np.float32)
  for r, c in enumerate(completions):
    tokens[r, :len(c.tokens)], logps[r, :len(c.tokens)] = c.tokens, c.logps
  return sampling_lib.SampleOutput(tokens=tokens, lengths=np.array([len(c.tokens) for c in completions], np.int32),
                                   finish_reasons=[c.finish_reason for c in completions], logps=logps)


def sample_versions(completions, max_new_tokens: int) -> np.ndarray:
  """Engine completions, in row order -> their tokens' policy versions (R, N) int32, -1 past each end."""
  versions = np.full((len(completions), max_new_tokens), -1, np.int32)
  for r, c in enumerate(completions):
    versions[r, :len(c.tokens)] = c.versions
  return versions


def merge_metrics(parts: list[tuple[int, dict]]) -> dict:
  """Reward metrics of several scoring calls [(rows, metrics)] as one call over all their rows would give
  them: counts (ints) add up, rates and means (floats) average weighted by rows."""
  total = sum(n for n, _ in parts)
  out = {}
  for key in dict.fromkeys(k for _, m in parts for k in m):
    values = [(n, m[key]) for n, m in parts if key in m]
    if all(isinstance(v, (int, np.integer)) for _, v in values):
      out[key] = int(sum(v for _, v in values))
    else:
      out[key] = float(sum(n * v for n, v in values) / max(sum(n for n, _ in values), 1)) if total else 0.0
  return out


def rollout_batch(prompts: list[list[int]], completions: list[list[int]], sample_logps: np.ndarray | None, *,
                  num_samples: int, seq_len: int, rows: int | None = None,
                  completion_masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Completions -> training rows (see the module docstring). prompts: P lists; completions: P*G lists
  (row r belongs to prompt r // G); sample_logps (P*G, N); completion_masks (P*G, N) bool, the completion
  tokens that carry loss (None: all of them).

  Returns int32 inputs/targets/loss_mask/positions/segment_ids (R, T) and f32 old_logps (R, T) when
  sample_logps is given; R = `rows` (>= P*G; extra rows are all padding, loss_mask 0)."""
  total = len(completions)
  rows = total if rows is None else rows
  out = {k: np.zeros((rows, seq_len), np.int32) for k in ("inputs", "targets", "loss_mask", "positions",
                                                           "segment_ids")}
  if sample_logps is not None:
    out["old_logps"] = np.zeros((rows, seq_len), np.float32)
  for r, completion in enumerate(completions):
    prompt = prompts[r // num_samples]
    seq = list(prompt) + list(completion)
    if len(seq) - 1 > seq_len:
      raise ValueError(f"row {r}: prompt {len(prompt)} + completion {len(completion)} tokens exceed "
                       f"seq_len + 1 = {seq_len + 1}")
    n = len(seq) - 1
    out["inputs"][r, :n] = seq[:-1]
    out["targets"][r, :n] = seq[1:]
    out["loss_mask"][r, len(prompt) - 1:n] = 1 if completion_masks is None else completion_masks[r, :len(completion)]
    out["positions"][r, :n] = np.arange(n)
    out["segment_ids"][r, :n] = 1
    if sample_logps is not None:
      out["old_logps"][r, len(prompt) - 1:n] = sample_logps[r, :len(completion)]
  return out
