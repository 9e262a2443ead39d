"""Where the rewarded answers came from, so that a gamed reward curve shows in metrics.jsonl.

A reward that extracts an answer has an `answer_source(completion, example)` method (or attribute)
returning 'anchored' (an anchor such as \\boxed{} held it), 'fallback' (read from unanchored text) or
None. Of the rows a reward scored > 0, `answer_metrics` counts

  reward/NAME/anchored    answers taken from an anchor
  reward/NAME/fallback    answers taken by the unanchored fallback

and, given which rows hit the completion budget (finish reason 'length'),

  reward/truncated            rows cut at the budget
  reward/truncated_rewarded   rows cut at the budget whose total reward is > 0

A policy that learns to restate the question and stop at the budget shows as truncated_rewarded
climbing with the reward; one that learns the prompt's format shows anchored overtaking fallback.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np


def answer_metrics(reward_fns, scores: np.ndarray, completions: Sequence[str], examples: Sequence[dict],
                   rewards: np.ndarray, truncated: Sequence[bool] | None = None) -> dict:
  """scores (K, N): raw score of reward k on row n; rewards (N,): their weighted sum. Returns the counts
  of the module docstring (ints) for the rewards that have `answer_source`."""
  metrics = {}
  for k, r in enumerate(reward_fns):
    source_of = getattr(r.fn, "answer_source", None)
    if source_of is None:
      continue
    sources = []
    for i in np.flatnonzero(scores[k] > 0):
      try:
        sources.append(source_of(completions[i], examples[i]))
      except Exception as e:  # noqa: BLE001 - a metric must not stop the run; the reward itself scored.
        logging.warning("reward %s: answer_source failed on completion %d: %s", r.name, i, e)
    metrics[f"reward/{r.name}/anchored"] = sources.count("anchored")
    metrics[f"reward/{r.name}/fallback"] = sources.count("fallback")
  if truncated is not None:
    cut = np.asarray(truncated, bool)
    if cut.shape != rewards.shape:
      raise ValueError(f"truncated has shape {cut.shape}, rewards {rewards.shape}")
    metrics["reward/truncated"] = int(cut.sum())
    metrics["reward/truncated_rewarded"] = int((cut & (rewards > 0)).sum())
  return metrics
