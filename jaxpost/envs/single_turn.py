"""`single_turn`: today's recipes as a one-turn environment. The opening messages are the record's prompt,
the model answers once, and the reply (tool-call syntax and all, as plain text) is scored by `reward_fns`."""
from __future__ import annotations

from jaxpost.envs.base import Environment, EnvStep, Turn, register
from jaxpost.envs.calculator import opening_messages, score_answer


@register("single_turn")
class SingleTurn(Environment):

  def __init__(self, example: dict, reward_fns="math", system: str = ""):
    super().__init__(example, reward_fns)
    self.system = system

  def reset(self) -> list[dict]:
    return opening_messages(self.example, self.system)

  def step(self, turn: Turn) -> EnvStep:
    return EnvStep(reward=score_answer(self.reward_fns, turn.text, self.example), done=True)
