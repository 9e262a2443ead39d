"""Chat templates render the same string as transformers' `apply_chat_template(..., tokenize=False)`."""
import jinja2
import pytest

from jaxpost import tokenizers
from jaxpost.tokenizers import ChatTemplateError, render_chat_template

SYSTEM = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"},
          {"role": "assistant", "content": "Paris."}]
MULTI_TURN = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": " 4 "},
              {"role": "user", "content": "héllo 日本語 🙂, and 2+2 is 4?"},
              {"role": "assistant", "content": "Yes!\n\n  indented\tcode = [1, 2, 3]\n"}]
PROMPT = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Sky colour?"}]
CASES = [  # (style, conversation, add_generation_prompt); Gemma has no system role.
    *[(style, conv, gen) for style in ("qwen", "llama3") for conv, gen in
      ((SYSTEM, False), (MULTI_TURN, False), (MULTI_TURN, True), (PROMPT, True))],
    ("gemma", MULTI_TURN, False), ("gemma", MULTI_TURN[:3], True), ("gemma", MULTI_TURN[:1], False),
]


@pytest.mark.parametrize("style, conversation, add_generation_prompt", CASES)
def test_render_matches_transformers(hf_folders, style, conversation, add_generation_prompt):
  folder, hf = hf_folders[style]
  tok = tokenizers.load(folder)
  expected = hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
  assert tok.render_chat(conversation, add_generation_prompt=add_generation_prompt) == expected
  tokens, _ = tok.encode_chat(conversation, add_generation_prompt=add_generation_prompt)
  assert tokens.tolist() == hf.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                                   return_dict=False)


def test_template_variables_tools_and_kwargs(hf_folders):
  """tools go through the HTML-safe `tojson`; extra keyword arguments reach the template and win."""
  tools = [{"type": "function", "function": {"name": "get_weather", "description": "Météo <b>&</b> 天気",
                                              "parameters": {"type": "object", "properties": {}}}}]
  folder, hf = hf_folders["qwen"]
  tok = tokenizers.load(folder)
  expected = hf.apply_chat_template(PROMPT[1:], tools=tools, tokenize=False, add_generation_prompt=True)
  assert tok.render_chat(PROMPT[1:], add_generation_prompt=True, tools=tools) == expected
  assert '"Météo <b>&</b> 天気"' in expected  # not escaped to \\u or &lt;
  folder, hf = hf_folders["llama3"]
  expected = hf.apply_chat_template(SYSTEM, tokenize=False, date_string="01 Jan 2000")
  assert tokenizers.load(folder).render_chat(SYSTEM, date_string="01 Jan 2000") == expected
  assert "Today Date: 01 Jan 2000" in expected


def test_raise_exception_and_template_errors(hf_folders):
  folder, hf = hf_folders["gemma"]
  tok = tokenizers.load(folder)
  with pytest.raises(jinja2.exceptions.TemplateError, match="System role not supported"):
    hf.apply_chat_template(SYSTEM, tokenize=False)
  with pytest.raises(ChatTemplateError, match="gemma 'default': chat template: System role not supported"):
    tok.render_chat(SYSTEM)
  with pytest.raises(ChatTemplateError, match="roles must alternate"):
    tok.encode_chat(MULTI_TURN[:1] * 2)
  with pytest.raises(ChatTemplateError, match="line 2: .*endfor"):
    render_chat_template("{% for m in messages %}\n{{ m }}", [])
  with pytest.raises(ChatTemplateError, match="underscore attribute '_x'"):
    render_chat_template("{% set ns = namespace() %}{% set ns._x = 1 %}", [])
  with pytest.raises(ChatTemplateError, match="unsafe|access to attribute"):  # the sandbox
    render_chat_template("{{ messages.__class__.__mro__ }}", [])


def test_environment_features():
  """trim/lstrip blocks, loop controls, strftime_now, dict(), None keys dropped, reasoning aliases."""
  source = ("{% for m in messages %}\n"
            "  {% if m.skip is defined %}{% continue %}{% endif %}\n"
            "{{ m.role }}={{ m.content }}|{{ m.reasoning_content | default('-') }}|{{ 'tool' in m }}\n"
            "{% endfor %}{{ dict(a=1) | tojson }} {{ strftime_now('%Y') | length }}")
  messages = [{"role": "user", "content": "x", "tool": None}, {"role": "user", "content": "y", "skip": True},
              {"role": "assistant", "content": "z", "thinking": "t"}]
  text, spans = render_chat_template(source, messages)
  assert text == 'user=x|-|False\nassistant=z|t|False\n{"a": 1} 4' and spans == []


def test_generation_spans():
  # trim_blocks eats a newline right after a block tag, hence the "\n" written as an expression.
  source = ("{% for m in messages %}<{{ m.role }}>{% generation %}{{ m.content }}!{% endgeneration %}\n"
            "{{ '\n' }}{% endfor %}")
  text, spans = render_chat_template(source, [{"role": "u", "content": "ab"}, {"role": "a", "content": "cde"}])
  assert text == "<u>ab!\n<a>cde!\n"
  assert [text[a:b] for a, b in spans] == ["ab!", "cde!"] and spans == [(3, 6), (10, 14)]
