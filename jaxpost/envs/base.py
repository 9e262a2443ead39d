"""The environment interface of multi-turn episodes, and the registry that names environments.

An episode starts from one data record:
  env = make("calculator", example, **options)
  messages = env.reset()               # the opening messages; env.tools are offered to the model
  step = env.step(turn)                # after each assistant turn: the environment's answer
  ... until step.done (or the turn / token budget ends the episode: rollouts call env.truncated()).
Environments are plain Python classes (one instance per episode, so they may keep state) registered by name,
like reward functions; `rl.env` picks one.

Rewards: a step may carry a per-turn reward; an episode's reward is the sum over its steps (outcome rewards
come with the step that ends it). Episode metrics add up the steps' `counts` (tool calls, tool errors,
malformed calls, ...).
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from jaxpost.envs import tool_calls as tool_calls_lib
from jaxpost.envs.tools import Tool, ToolCall, ToolResult, call_tool

Message = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Turn:
  """One assistant turn as the model wrote it, parsed in the tokenizer's tool-call format."""
  text: str                          # the decoded reply, its end-of-turn token left out
  content: str                       # the text outside tool calls
  calls: tuple[ToolCall, ...] = ()
  errors: tuple[str, ...] = ()       # malformed calls, one message each

  @classmethod
  def parse(cls, text: str, fmt: str) -> "Turn":
    reply = tool_calls_lib.parse_reply(text, fmt)
    return cls(text, reply.content, reply.calls, reply.errors)

  def message(self) -> Message:
    """The assistant message of this turn (with `tool_calls` when it made calls), for the template."""
    if self.calls:
      return {"role": "assistant", "content": self.content, "tool_calls": [c.as_message_entry() for c in self.calls]}
    return {"role": "assistant", "content": self.text}


@dataclasses.dataclass(frozen=True)
class EnvStep:
  messages: tuple[Message, ...] = ()           # the environment's answer (tool results, a user message)
  reward: float = 0.0                          # this turn's reward (the outcome on the last step)
  done: bool = False
  counts: dict = dataclasses.field(default_factory=dict)  # tool_calls, tool_errors, malformed_calls, ...


class Environment(abc.ABC):
  """One episode's environment. Subclasses set `tools` and implement reset and step."""
  tools: Sequence[Tool] = ()

  def __init__(self, example: dict, reward_fns="math"):
    """example: the data record; reward_fns: what scores its outcome (rl.reward_fns, a spec such as "math")."""
    self.example, self.reward_fns = example, reward_fns

  @abc.abstractmethod
  def reset(self) -> list[Message]:
    """The opening messages of the episode."""

  @abc.abstractmethod
  def step(self, turn: Turn) -> EnvStep:
    """The environment's answer to an assistant turn."""

  def truncated(self) -> float:
    """The reward of an episode cut by the turn or token budget before the environment ended it."""
    return 0.0


class ToolEnvironment(Environment):
  """A task solved with tools: each turn's calls are run and answered with tool messages; a turn without
  calls (and without malformed ones) is the final answer, scored by `outcome`."""

  @abc.abstractmethod
  def outcome(self, answer: str) -> float:
    """The reward of the final answer's text."""

  def step(self, turn: Turn) -> EnvStep:
    if not turn.calls and not turn.errors:
      return EnvStep(reward=float(self.outcome(turn.content)), done=True)
    results: list[ToolResult] = [call_tool(self.tools, call) for call in turn.calls]
    messages = [{"role": "tool", "name": r.name, "content": r.content} for r in results]
    messages += [{"role": "tool", "name": "error", "content": f"error: {e}"} for e in turn.errors]
    counts = {"tool_calls": len(results), "tool_errors": sum(not r.ok for r in results),
              "tool_timeouts": sum(r.timed_out for r in results), "malformed_calls": len(turn.errors)}
    return EnvStep(tuple(messages), counts=counts)


ENVS: dict[str, Callable[..., Environment]] = {}


def register(name: str):
  """Class decorator: registers an Environment subclass under `name`."""
  def wrap(cls):
    if name in ENVS and ENVS[name] is not cls:
      raise ValueError(f"environment {name!r} is already registered ({ENVS[name].__name__})")
    ENVS[name] = cls
    return cls
  return wrap


def make(name: str, example: dict, **options) -> Environment:
  """The environment `name` for one episode of `example`."""
  if name not in ENVS:
    raise KeyError(f"unknown environment {name!r}; registered: {', '.join(sorted(ENVS))}")
  return ENVS[name](example, **options)
