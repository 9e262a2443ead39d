"""Multi-turn episodes on the rollout engine: environment tokens sit in the sequence with mask 0, and the
sampler's log-probs of every model token equal the trainer's (one forward over the finished sequence) within
1e-4, across turns whose contexts each re-enter the engine."""
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost import envs, sampling, tokenizers
from jaxpost.engine import Engine, EngineConfig
from jaxpost.envs import episode as episode_lib
from jaxpost.models import ModelConfig, Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK = tokenizers.load(os.path.join(ROOT, "assets", "arithmetic", "tokenizer.model"))


STOPS = tuple(range(40, 48))
STOP_BIAS = -0.5


class _ManyStops:
  """The arithmetic tokenizer with STOPS ending a turn (the stop token need not be the template's end-of-turn
  for the sequence to be exact)."""

  def __init__(self, tok):
    self._tok = tok
    self.chat_stop_ids = STOPS

  def __getattr__(self, name):
    return getattr(self._tok, name)


class _GoOn(envs.Environment):
  """Answers every turn with a user message; the third turn ends the episode with reward = its turn count."""

  def reset(self):
    return [{"role": "user", "content": "what is 12 + 30?"}]

  def step(self, turn):
    self.n = getattr(self, "n", 0) + 1
    return envs.EnvStep(({"role": "user", "content": f"go on {self.n}"},), reward=float(self.n == 3),
                        done=self.n == 3)


def _env_runs(e):
  """Lengths of the runs of environment tokens after the prompt."""
  mask = np.asarray(e.model_mask[e.prompt_len:])
  edges = np.flatnonzero(np.diff(np.concatenate([[1], mask.astype(int), [1]])))
  return (edges[1::2] - edges[::2]).tolist()


def _params(cfg, seed=0):
  graphdef, abstract = nnx.eval_shape(lambda: nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param))
  rng = np.random.default_rng(seed)
  fill = lambda a: jnp.asarray(rng.normal(size=a.shape) * a.shape[0] ** -0.5 if a.ndim >= 2 else
                               1.0 + 0.1 * rng.normal(size=a.shape), a.dtype)
  params = jax.tree.map(fill, nnx.to_pure_dict(abstract))
  # STOPS' embeddings differ from every other token's in one dimension (dim 0: STOP_BIAS against 1), which moves
  # their logits together through the tied unembedding: at these weights they hold ~30% of the mass at every
  # position, so a random model's turns end within a few tokens.
  embedding = np.array(params["embed"]["embedding"])
  embedding[:, 0] = 1.0
  embedding[list(STOPS), 0] = STOP_BIAS
  params["embed"]["embedding"] = jnp.asarray(embedding)
  return graphdef, params


def test_multi_turn_episode_logps_equal_the_trainers_and_env_tokens_are_masked():
  cfg = ModelConfig(vocab_size=TOK.vocab_size, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                    mlp_dim=64)
  graphdef, params = _params(cfg)
  engine = Engine(graphdef, cfg, EngineConfig(num_slots=4, page_size=8, num_pages=64, max_seq_len=128,
                                              steps_per_check=4, prefill_bucket=32))
  tok = _ManyStops(TOK)

  def run(reuse_cache):
    before = dict(engine.stats)
    generate = episode_lib.engine_generate(engine, params, sampling.SamplingConfig(temperature=1.0), seed=0,
                                           stop_ids=tok.chat_stop_ids, version=3, reuse_cache=reuse_cache)
    eps = episode_lib.run_episodes([_GoOn({}) for _ in range(4)], tok, generate, max_turns=5, max_turn_tokens=12,
                                   max_completion_tokens=96)
    assert engine.pool.num_free == engine.pool.num_pages  # every kept prefix released at the end
    return eps, engine.stats["prefill_tokens"] - before["prefill_tokens"]
  eps, prefilled = run(reuse_cache=True)
  fresh, prefilled_fresh = run(reuse_cache=False)
  # Continuing from the kept pages samples the same tokens as prefilling each turn's whole context, and
  # prefills only what was appended: the opening prompts once, then per later turn the last sampled token
  # and the environment's continuation.
  assert [e.tokens for e in eps] == [e.tokens for e in fresh]
  np.testing.assert_allclose(np.concatenate([e.logps for e in eps]), np.concatenate([e.logps for e in fresh]),
                             atol=1e-5)
  expected = sum(e.prompt_len + sum(1 + n for n in _env_runs(e)) for e in eps)
  assert prefilled == expected < prefilled_fresh, (prefilled, expected, prefilled_fresh)
  # Twice the episodes: their worst cases (prompt + 96 tokens, 16 pages each) exceed the 64 pages, so nothing is
  # kept between turns (no admission can wait on kept pages); the first four are the same episodes as before.
  generate = episode_lib.engine_generate(engine, params, sampling.SamplingConfig(temperature=1.0), seed=0,
                                         stop_ids=tok.chat_stop_ids, version=3)
  more = episode_lib.run_episodes([_GoOn({}) for _ in range(8)], tok, generate, max_turns=5, max_turn_tokens=12,
                                  max_completion_tokens=96)
  assert [e.tokens for e in more[:4]] == [e.tokens for e in eps]
  assert sum(e.done for e in eps) >= 2, [(e.turns, e.truncated) for e in eps]
  tokens = np.zeros((len(eps), 128), np.int32)
  for r, e in enumerate(eps):
    tokens[r, :len(e.tokens)] = e.tokens
  logits = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, jnp.asarray(tokens))
  trainer = np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32)),
                                           jnp.asarray(tokens[:, 1:, None]), -1)[..., 0])  # (B, 127)
  for r, e in enumerate(eps):
    mask = np.asarray(e.model_mask)
    assert not mask[:e.prompt_len].any() and mask[e.prompt_len]
    if e.done:  # three turns, two continuations between them: "go on 1", "go on 2" as user turns, mask 0.
      env_runs = np.flatnonzero(np.diff(mask.astype(int)) == -1)
      assert len(env_runs) == 2 and e.reward == 1.0
      assert "go on 1" in TOK.decode(e.tokens) and "go on 2" in TOK.decode(e.tokens)
    positions = np.flatnonzero(mask)
    np.testing.assert_allclose(np.asarray(e.logps)[positions], trainer[r, positions - 1], atol=1e-4)
    assert set(np.asarray(e.versions)[positions]) == {3}
