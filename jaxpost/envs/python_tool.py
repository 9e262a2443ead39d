"""`python` environment: a question answered with the help of a tool that runs Python in the code reward's
sandbox (rewards/code.py: its own user, pid, network and mount namespaces, resource limits, a wall-clock
timeout), and returns what the program printed. The final answer is scored as in `calculator`."""
from __future__ import annotations

from jaxpost.envs.base import register
from jaxpost.envs.calculator import QuestionTask
from jaxpost.envs.tools import Tool
from jaxpost.rewards import code as code_lib

LIMITS = code_lib.SandboxLimits(timeout_s=5.0, cpu_s=5, memory_mb=512, max_processes=16)


def run_python(code: str) -> str:
  """stdout of `code` in the sandbox, or its error (the last lines of stderr, or the timeout)."""
  result = code_lib.run_python(code, LIMITS)
  out = result.stdout.rsplit("\n", 2)[0] if result.completed else result.stdout  # drop the runner's nonce line
  if result.timed_out:
    raise TimeoutError(f"the program ran past {LIMITS.timeout_s:g} s")
  if not result.completed:
    raise RuntimeError("\n".join(result.stderr.strip().splitlines()[-3:]) or f"exit status {result.returncode}")
  return out.strip() or "(no output; print the value you need)"


PYTHON = Tool(name="python", description="Run a Python program and return what it prints.",
              parameters={"type": "object", "properties": {"code": {"type": "string",
                                                                    "description": "the program"}},
                          "required": ["code"]},
              fn=run_python, timeout_s=LIMITS.timeout_s + 5.0)


@register("python")
class Python(QuestionTask):
  tools = (PYTHON,)
