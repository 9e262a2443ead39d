"""`single_turn`: today's recipes as a one-turn environment. The opening messages are the record's prompt,
the model answers once, and the reply (tool-call syntax and all, as plain text) is scored by `reward_fns`."""
from __future__ import annotations

from jaxpost.envs.base import EnvStep, Turn, register
from jaxpost.envs.calculator import QuestionTask, score_answer


@register("single_turn")
class SingleTurn(QuestionTask):
  """No tools; the first reply ends the episode."""

  def step(self, turn: Turn) -> EnvStep:
    return EnvStep(reward=score_answer(self.reward_fns, turn.text, self.example), done=True)
