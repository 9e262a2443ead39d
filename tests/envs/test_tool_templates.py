"""Tool schemas, calls and results rendered by our template code equal transformers' `apply_chat_template(...,
tools=...)` for Qwen2.5- and Llama 3.1-style templates; the parser reads back the calls the template writes; an
episode on such a tokenizer continues with exactly the template's text."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tokenizers"))
import hf_fixtures  # noqa: E402
from tool_templates import LLAMA31_TOOLS, QWEN25_TOOLS  # noqa: E402

from jaxpost import envs, tokenizers  # noqa: E402
from jaxpost.envs import calculator, chat, episode as episode_lib, tool_calls  # noqa: E402

TEMPLATES = {"qwen": QWEN25_TOOLS, "llama3": LLAMA31_TOOLS}
FORMAT = {"qwen": "hermes", "llama3": "llama3"}
TOOLS = [calculator.CALCULATOR.schema,
         {"type": "function", "function": {"name": "get_weather", "description": "Météo <b>&</b> 天気",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "days": {"type": "integer"}},
                                                          "required": ["city"]}}}]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}
CONVERSATION = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "name": "get_weather", "content": '{"temp": 21}'},
                {"role": "assistant", "content": "It is 21 degrees."}]


@pytest.fixture(scope="module", params=list(TEMPLATES))
def style(request, tmp_path_factory):
  folder = tmp_path_factory.mktemp(request.param)
  hf = hf_fixtures.save_folder(folder, request.param, TEMPLATES[request.param])
  return request.param, tokenizers.load(str(folder)), hf


@pytest.mark.parametrize("upto,gen", [(1, True), (2, False), (3, True), (4, False)])
def test_rendering_with_tools_matches_transformers(style, upto, gen):
  name, tok, hf = style
  messages = CONVERSATION[:upto]
  expected = hf.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=gen)
  assert chat.render(tok, messages, TOOLS, gen) == expected
  assert chat.tool_format(tok) == FORMAT[name]


def test_parser_reads_back_the_rendered_call(style):
  """The text between the generation prompt and the end-of-turn token of the rendered tool-call turn parses
  to the call that was rendered."""
  name, tok, _ = style
  before = chat.render(tok, CONVERSATION[:1], TOOLS, True)
  after = chat.render(tok, CONVERSATION[:2], TOOLS, False)
  assert after.startswith(before)
  end = "<|im_end|>" if name == "qwen" else "<|eot_id|>"
  reply = after[len(before):].rstrip()
  assert reply.endswith(end)
  parsed = tool_calls.parse_reply(reply[:-len(end)], FORMAT[name])
  assert parsed.calls == (envs.ToolCall("get_weather", {"city": "Paris", "days": 2}),) and not parsed.errors


class _Weather(envs.ToolEnvironment):
  tools = (envs.Tool(name="get_weather", description="Météo <b>&</b> 天気", parameters=TOOLS[1]["function"]["parameters"],
                     fn=lambda city, days=1: {"temp": 21}),)

  def reset(self):
    return [dict(CONVERSATION[0])]

  def outcome(self, answer):
    return float("21" in answer)


def test_episode_on_a_hf_template_is_the_templates_rendering(style):
  """A scripted two-turn episode on the Qwen- or Llama-style tokenizer: the sequence equals the ids of the
  template's rendering of the transcript (after its bos handling), the tool result included."""
  name, tok, hf = style
  call_text = (
      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
      if name == "qwen" else '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}')
  replies = [call_text, "It is 21 degrees."]
  end = tok.chat_stop_ids[0]

  def generate(requests):
    return [(tok.encode(replies[turn]) + [end], [-0.1] * (len(tok.encode(replies[turn])) + 1), "stop", None)
            for _, _, _, turn in requests]
  ep = episode_lib.run_episodes([_Weather({})], tok, generate, max_turns=3, max_turn_tokens=64, max_completion_tokens=4096)[0]
  assert ep.reward == 1.0 and ep.turns == 2 and ep.counts["tool_calls"] == 1
  transcript = ep.messages
  assert transcript[2] == {"role": "tool", "name": "get_weather", "content": '{"temp": 21}'}
  text = hf.apply_chat_template(transcript, tools=TOOLS[1:], tokenize=False)
  ids = hf(text, add_special_tokens=False)["input_ids"]
  assert tok.decode(ep.tokens) == text.rstrip("\n")
  if name == "qwen":  # Turns meet at special tokens and newlines: even the ids equal one encoding of the text.
    assert ep.tokens == ids[:-1]
