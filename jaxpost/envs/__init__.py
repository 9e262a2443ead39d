"""Multi-turn environments: an episode from a record, tools through the model's own chat template.

  env = envs.make("calculator", {"question": "what is 123 * 45?", "answer": "5535"})
Registered: calculator, python (sandboxed), single_turn. See base.py for the interface, episode.py for
how rollouts run episodes.
"""
from jaxpost.envs.base import ENVS, Environment, EnvStep, ToolEnvironment, Turn, make, register
from jaxpost.envs.tools import Tool, ToolCall, ToolResult, call_tool
from jaxpost.envs import calculator as _calculator  # noqa: F401  (registers calculator)
from jaxpost.envs import python_tool as _python_tool  # noqa: F401  (registers python)
from jaxpost.envs import single_turn as _single_turn  # noqa: F401  (registers single_turn)

__all__ = ["ENVS", "Environment", "EnvStep", "Tool", "ToolCall", "ToolEnvironment", "ToolResult", "Turn",
           "call_tool", "make", "register"]
