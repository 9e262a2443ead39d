"""Environments against scripted policies (fixed replies): exact transcripts, token sequences, masks, rewards;
tools that misbehave end as error observations within their limits."""
import os
import time

import numpy as np
import pytest

from jaxpost import envs, tokenizers
from jaxpost.envs import calculator, chat, episode as episode_lib, tool_calls
from jaxpost.tokenizers import chat_template

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK = tokenizers.load(os.path.join(ROOT, "assets", "arithmetic", "tokenizer.model"))
IM_END = TOK.token_id("<|im_end|>")


def _call(name, **arguments):
  import json
  return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def _scripted(replies, finish=None):
  """generate() that answers episode i's turn t with replies[i][t] (+ <|im_end|>), logps -0.01 * position."""
  seen = []

  def generate(requests):
    out = []
    for ids, budget, i, turn in requests:
      seen.append((i, turn, len(ids), budget))
      tokens = TOK.encode(replies[i][turn]) + [IM_END]
      reason = (finish or {}).get((i, turn), "stop")
      if reason == "length" or len(tokens) > budget:  # As the engine: never past the budget.
        tokens, reason = tokens[:budget], "length"
      out.append((tokens, [-0.01 * (k + 1) for k in range(len(tokens))], reason, [7] * len(tokens)))
    return out
  generate.seen = seen
  return generate


def test_calculator_episode_transcript_tokens_mask_and_reward():
  """Turn 1 calls the calculator, turn 2 answers. The token sequence is exactly the template's rendering of
  the transcript (minus the newline after the last <|im_end|>), the model mask covers exactly the two replies
  and their <|im_end|>, and the reward is the math reward of the final answer."""
  example = {"question": "what is 123 * 45?", "answer": "5535"}
  replies = [[_call("calculator", expression="123 * 45"), "The answer is 5535."],
             [_call("calculator", expression="123 * 45"), "The answer is 5536."]]
  eps = episode_lib.run_episodes([envs.make("calculator", example) for _ in replies], TOK, _scripted(replies),
                                 max_turns=4, max_turn_tokens=256, max_completion_tokens=2048)
  ep = eps[0]
  call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "123 * 45"}}}
  assert ep.messages == [{"role": "user", "content": "what is 123 * 45?"},
                         {"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "name": "calculator", "content": "5535"},
                         {"role": "assistant", "content": "The answer is 5535."}]
  text = chat.render(TOK, ep.messages, [calculator.CALCULATOR.schema], add_generation_prompt=False)
  assert "<tool_response>\n5535\n</tool_response>" in text
  assert ep.tokens == chat.encode_prompt(TOK, text)[:-1]  # the last "\n" is never generated
  reply_ids = [TOK.encode(r) + [IM_END] for r in replies[0]]
  mask = np.asarray(ep.model_mask)
  assert mask.sum() == sum(map(len, reply_ids))
  # The first reply starts right after the prompt; the second ends the sequence.
  assert ep.tokens[ep.prompt_len:ep.prompt_len + len(reply_ids[0])] == reply_ids[0] and mask[ep.prompt_len:][:len(reply_ids[0])].all()
  assert ep.tokens[-len(reply_ids[1]):] == reply_ids[1] and mask[-len(reply_ids[1]):].all()
  assert not mask[:ep.prompt_len].any()
  assert np.all(np.asarray(ep.logps)[~mask] == 0) and np.all(np.asarray(ep.logps)[mask] < 0)
  assert set(np.asarray(ep.versions)[mask]) == {7} and set(np.asarray(ep.versions)[~mask]) == {-1}
  assert (ep.reward, eps[1].reward) == (1.0, 0.0)
  assert ep.done and not ep.truncated and ep.turns == 2
  assert ep.counts["tool_calls"] == 1 and ep.counts["tool_errors"] == 0
  metrics = episode_lib.episode_metrics(eps)
  assert metrics["episode/turns"] == 2 and metrics["episode/tool_calls"] == 1 and metrics["episode/truncated"] == 0


def test_malformed_calls_and_tool_errors_are_observations_and_counted():
  """Bad JSON, an unclosed tag, an unknown tool, a missing argument and a division by zero each come back
  as a tool message starting with 'error:'; the episode goes on to the answer."""
  example = {"question": "what is 6 * 7?", "answer": "42"}
  replies = [['<tool_call>\n{"name": "calculator", "arguments": {expression: 1}}\n</tool_call>',
              "<tool_call>\n{\"name\": \"calculator\"",
              _call("abacus", expression="6*7") + "\n" + _call("calculator") + "\n" + _call("calculator", expression="1/0"),
              "42"]]
  ep = episode_lib.run_episodes([envs.make("calculator", example)], TOK, _scripted(replies), max_turns=8,
                                max_turn_tokens=256, max_completion_tokens=4096)[0]
  tool_msgs = [m for m in ep.messages if m["role"] == "tool"]
  assert len(tool_msgs) == 5 and all(m["content"].startswith("error:") for m in tool_msgs), tool_msgs
  assert "not valid JSON" in tool_msgs[0]["content"] and "not closed" in tool_msgs[1]["content"]
  assert "unknown tool 'abacus'" in tool_msgs[2]["content"] and "missing required argument" in tool_msgs[3]["content"]
  assert "ZeroDivisionError" in tool_msgs[4]["content"]
  assert ep.counts["malformed_calls"] == 2 and ep.counts["tool_calls"] == 3 and ep.counts["tool_errors"] == 3
  assert ep.reward == 1.0 and ep.turns == 4


def test_budgets_truncate_episodes():
  """A turn cut by its token budget, and max_turns turns of tool calls: both end truncated with reward 0.
  The per-turn budget shrinks to what the episode budget leaves."""
  example = {"question": "what is 2 + 2?", "answer": "4"}
  loop = [_call("calculator", expression="2+2")] * 3
  gen = _scripted([loop, ["4" * 50]], finish={(1, 0): "length"})
  eps = episode_lib.run_episodes([envs.make("calculator", example) for _ in range(2)], TOK, gen, max_turns=2,
                                 max_turn_tokens=200, max_completion_tokens=4096)
  assert [e.truncated for e in eps] == [True, True] and [e.reward for e in eps] == [0.0, 0.0]
  assert eps[0].turns == 2 and eps[0].counts["tool_calls"] == 2 and eps[1].turns == 1
  assert all(budget == 200 for *_, budget in gen.seen)
  gen = _scripted([loop])
  call_len = len(TOK.encode(loop[0])) + 1
  ep = episode_lib.run_episodes([envs.make("calculator", example)], TOK, gen, max_turns=8, max_turn_tokens=200,
                                max_completion_tokens=call_len + 5)[0]
  # The call fits the budget; the tool's answer after it (more than 5 tokens) would not leave room for a model
  # token, so the episode ends after the call, within its budget.
  assert gen.seen[0][3] == call_len + 5 and ep.truncated and ep.turns == 1
  assert len(ep.tokens) - ep.prompt_len == call_len


def test_single_turn_environment_is_todays_prompt():
  """No tools: the opening tokens are the built-in chat template's (today's prompt), one turn, math reward."""
  example = {"messages": [{"role": "user", "content": "what is 12 + 30?"}], "answer": "42"}
  ep = episode_lib.run_episodes([envs.make("single_turn", example)], TOK, _scripted([["42"]]), max_turns=4,
                                max_turn_tokens=8, max_completion_tokens=512)[0]
  expected, _ = TOK.encode_chat(example["messages"], add_generation_prompt=True)
  assert ep.tokens[:ep.prompt_len] == expected.tolist()
  assert ep.turns == 1 and ep.done and ep.reward == 1.0


def test_chatml_tools_template_without_tools_is_the_builtin_chatml():
  messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
  for gen in (False, True):
    assert chat.render(TOK, messages, None, gen) == chat_template.render_chat(messages, gen)


def _tool(fn, timeout_s=0.5):
  return envs.Tool(name="t", description="", parameters={"type": "object", "properties": {}}, fn=fn,
                   timeout_s=timeout_s)


def test_hostile_tools_end_as_error_observations_within_their_limits():
  def hang():
    while True:
      time.sleep(0.01)

  def boom():
    raise RuntimeError("kaboom")
  start = time.monotonic()
  out = envs.call_tool([_tool(hang)], envs.ToolCall("t", {}))
  assert out.timed_out and not out.ok and "timed out after 0.5 s" in out.content
  assert time.monotonic() - start < 1.5
  out = envs.call_tool([_tool(boom)], envs.ToolCall("t", {}))
  assert not out.ok and out.content == "error: RuntimeError: kaboom"
  out = envs.call_tool([_tool(lambda: "x" * 10 ** 6)], envs.ToolCall("t", {}))
  assert out.ok and len(out.content) < 2100 and "characters cut" in out.content
  out = envs.call_tool([_tool(lambda: object())], envs.ToolCall("t", {}))
  assert not out.ok and "not text or JSON" in out.content


def test_python_tool_runs_in_the_sandbox_and_hostile_code_is_an_error():
  env = envs.make("python", {"question": "q", "answer": "1024"})
  step = env.step(envs.Turn.parse(_call("python", code="print(2 ** 10)"), "hermes"))
  assert step.messages[0]["content"] == "1024" and not step.done
  start = time.monotonic()
  for code, expect in (("while True:\n    pass", "ran past"), ("raise ValueError('no')", "ValueError: no"),
                       ("import subprocess\nsubprocess.run(['sh', '-c', 'echo x > /tmp/jaxpost_tool_escape'])\nprint('ok')",
                        "ok")):
    step = env.step(envs.Turn.parse(_call("python", code=code), "hermes"))
    assert expect in step.messages[0]["content"], step.messages
  assert time.monotonic() - start < 20
  from jaxpost.rewards import code as code_lib
  if code_lib.sandbox_info().filesystem_isolated:
    assert not os.path.exists("/tmp/jaxpost_tool_escape")


@pytest.mark.parametrize("expression,expected", [("123 * 45", "5535"), ("7 / 2", "3.5"), ("(2 + 3) ** 2", "25"),
                                                 ("-4 // 3", "-2"), ("10 % 4", "2"), ("1.5 * 4", "6")])
def test_calculator_values(expression, expected):
  assert calculator.evaluate(expression) == expected


@pytest.mark.parametrize("expression,error", [("2 ** 1000", "exponent"), ("__import__('os')", "unsupported"),
                                              ("9" * 300, "longer"), ("1 +", "not an arithmetic"),
                                              ("10 ** 60 * 10 ** 60", "larger than 1e100")])
def test_calculator_refuses(expression, error):
  with pytest.raises(ValueError, match=error):
    calculator.evaluate(expression)


def test_parsers():
  hermes = tool_calls.parse_hermes('Sure.\n<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>')
  assert hermes.content == "Sure." and hermes.calls == (envs.ToolCall("f", {"x": 1}),) and not hermes.errors
  assert tool_calls.parse_hermes("no calls here").content == "no calls here"
  assert "must be a JSON object" in tool_calls.parse_hermes('<tool_call>[1]</tool_call>').errors[0]
  llama = tool_calls.parse_llama3('<|python_tag|>{"name": "f", "parameters": {"x": 2}}; {"name": "g", "parameters": {}}')
  assert llama.calls == (envs.ToolCall("f", {"x": 2}), envs.ToolCall("g", {})) and not llama.errors
  assert tool_calls.parse_llama3("The answer is 4.").content == "The answer is 4."
  assert "not valid JSON" in tool_calls.parse_llama3('{"name": "f", "parameters": {').errors[0]
  with pytest.raises(KeyError, match="unknown environment 'nope'.*calculator"):
    envs.make("nope", {})


def test_sft_encoding_of_a_transcript_is_the_episodes_sequence():
  """A tool-use transcript as an SFT record ({"messages", "tools"}) tokenises to exactly the ids and mask the
  scripted episode that produced it holds: SFT trains the very tokens a rollout of it would sample. (The reply
  is written as the template renders a call, "content\n<tool_call>..."; a transcript records calls parsed, so a
  differently spaced reply would be trained in the template's form.)"""
  from jaxpost.data.records import tokenize_record
  example = {"question": "what is 123 * 45?", "answer": "5535"}
  replies = [["I will check.\n" + _call("calculator", expression="123 * 45"), "The answer is 5535."]]
  ep = episode_lib.run_episodes([envs.make("calculator", example)], TOK, _scripted(replies), max_turns=4,
                                max_turn_tokens=256, max_completion_tokens=2048)[0]
  tokens, mask = tokenize_record({"messages": ep.messages, "tools": [calculator.CALCULATOR.schema]}, TOK,
                                 where="sft.jsonl:1")
  assert tokens.tolist() == ep.tokens and mask.tolist() == ep.model_mask
  from jaxpost.data.jsonl import DataError
  with pytest.raises(DataError, match="sft.jsonl:3: messages\\[1\\]: expected a dict with role"):
    tokenize_record({"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}], "tools": []},
                    TOK, where="sft.jsonl:3")
