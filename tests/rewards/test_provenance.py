"""Where rewarded answers came from, and how many hit the length budget: the counts the online loops log."""
import numpy as np
import pytest

from jaxpost import rewards
from jaxpost.config import ConfigError, base_config
from jaxpost import rollout
from jaxpost.rewards import provenance
from jaxpost.sampling import SampleOutput

RECORD = {"prompt": "what is 15 + 86?", "answer": "101"}
# (completion, hit the budget): math (flexible) scores 1, 1, 1, 0, 1; exact_match 1, 0, 1, 0, 0.
ROWS = [("101", False), ("15 + 86 = 101", False), (r"\boxed{101}", True), ("To calculate 15 + 86, we", True),
        ("The answer is 101.", True)]


def test_answer_metrics_counts_by_source_and_budget():
  """math rewarded rows 0, 1, 2, 4: anchored = 2 (the box, 'the answer is'), fallback = 2 ('101', '= 101').
  exact_match rewarded rows 0 and 2: the box is anchored, the bare '101' is the whole completion (fallback).
  The total math + 0.5 exact_match is > 0 on rows 0, 1, 2, 4; of those, rows 2 and 4 hit the budget."""
  completions = [c for c, _ in ROWS]
  out, metrics = rewards.score_batch("math,exact_match=0.5", completions, [RECORD] * 5,
                                     truncated=[t for _, t in ROWS])
  np.testing.assert_allclose(out, [1.5, 1.0, 1.5, 0.0, 1.0])
  assert (metrics["reward/math/anchored"], metrics["reward/math/fallback"]) == (2, 2)
  assert (metrics["reward/exact_match/anchored"], metrics["reward/exact_match/fallback"]) == (1, 1)
  assert metrics["reward/truncated"] == 3 and metrics["reward/truncated_rewarded"] == 2


def test_answer_metrics_skip_rewards_without_a_source():
  """format has no answer_source: no counts for it; no `truncated` given: no budget counts."""
  _, metrics = rewards.score_batch("format", ["<think>a</think><answer>1</answer>"], [{}])
  assert not [k for k in metrics if k.endswith(("/anchored", "/fallback")) or "truncated" in k]


def test_truncated_must_match_the_rows():
  reward_fns = rewards.combine("math")
  with pytest.raises(ValueError, match=r"truncated has shape \(2,\), rewards \(3,\)"):
    provenance.answer_metrics(reward_fns, np.ones((1, 3)), ["1"] * 3, [RECORD] * 3, np.ones(3), [True, False])


class _CharTokenizer:
  """Token i is chr(i); 0 is the stop token."""
  chat_stop_ids = (0,)

  def decode(self, ids):
    return "".join(chr(i) for i in ids)


def test_rollouts_score_passes_the_budget_hits():
  """The loops' scoring marks rows whose finish reason is 'length' as cut: 2 of the 5 here, the 'we' one
  unrewarded; greedy evaluation reports the same counts under eval/."""
  texts = [c for c, _ in ROWS]
  width = max(map(len, texts)) + 1
  tokens = np.zeros((len(texts), width), np.int32)
  for r, text in enumerate(texts):
    tokens[r, :len(text)] = [ord(ch) for ch in text]
  reasons = ["stop", "stop", "length", "length", "stop"]
  lengths = np.array([len(t) + (reason == "stop") for t, reason in zip(texts, reasons)], np.int32)
  out = SampleOutput(tokens, lengths, reasons, np.zeros(tokens.shape, np.float32))
  config = base_config()
  source = rollout.Rollouts(config.rl, 0, _CharTokenizer(), None, [], None, {}, rewards.combine("math"))
  scores, metrics = source.score(out, [{"record": RECORD}], num_samples=5)
  np.testing.assert_allclose(scores, [1, 1, 1, 0, 1])
  assert metrics["reward/truncated"] == 2 and metrics["reward/truncated_rewarded"] == 1
  assert (metrics["reward/math/anchored"], metrics["reward/math/fallback"]) == (2, 2)
  source.eval_prompts = [{"record": RECORD}] * 5  # One greedy sample each: the same 5 rows.
  source.sample = lambda *args, **kwargs: out
  assert source.evaluate(None) == {"eval/reward/mean": pytest.approx(0.8), "eval/accuracy": 80.0,
                                   "eval/math/anchored": 2, "eval/math/fallback": 2, "eval/truncated": 2,
                                   "eval/truncated_rewarded": 1}


def test_bad_reward_mode_is_a_config_error():
  config = base_config()
  config.rl.reward_fns = "math:strict,format"
  with pytest.raises(ConfigError, match=r"^config\.rl\.reward_fns='math:strict,format': unknown mode 'strict' of "
                                        r"reward 'math': its modes are \['anchored'"):
    rollout.Rollouts.from_config(config, None, None)


def test_pass_at_k_without_a_verifier_is_a_config_error():
  """pass@k counts correct samples; with only a shaping reward nothing defines correct (was: reward > 0)."""
  config = base_config()
  config.rl.pass_k, config.rl.reward_fns = 4, "format,math:0"
  with pytest.raises(ConfigError, match=r"^config\.rl\.pass_k=4: pass@k counts correct samples, and none of "
                                        r"config\.rl\.reward_fns='format,math:0' is a verifier"):
    rollout.Rollouts.from_config(config, None, None)
