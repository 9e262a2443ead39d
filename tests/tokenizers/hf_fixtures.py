"""Test data for tests/tokenizers: tiny Hugging Face tokenizer folders, built offline: one byte-level BPE vocabulary trained here with
`tokenizers`, saved by `transformers` with a Qwen-, Llama-3- or Gemma-style chat template.

The templates are written in the shape of the released ones (default system prompt, tools as JSON,
`strftime_now`, `bos_token` in the template, `| trim`, `raise_exception` on a system role, loop
controls), so rendering parity with `apply_chat_template` exercises the same Jinja features.
"""
import json

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
CORPUS = ["You are a helpful assistant. What is the capital of France? Paris is the capital of France.\n",
          "user assistant system model Cutting Knowledge Date: December 2023\nToday Date: 26 Nov 2026\n\n",
          "  indented\tcode = [1, 2, 3]  # comment\n\nhéllo wörld, naïve café; 日本語 🙂 numbers 0123456789 + - * /\n",
          '{"type": "function", "function": {"name": "get_weather", "parameters": {}}} 2+2 is 4. Yes!\n']

QWEN = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- '\\n\\n# Tools\\n<tools>' }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- '\\n' }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- '\\n</tools><|im_end|>\\n' }}\n"
    "{%- elif messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' and loop.first %}{%- continue %}{%- endif %}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")

LLAMA3 = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    "        {%- set date_string = strftime_now('%d %b %Y') %}\n"
    "    {%- else %}\n"
    "        {%- set date_string = '26 Jul 2024' %}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] | trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = '' %}\n"
    "{%- endif %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}\n"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}\n"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}\n"
    "{{- system_message }}\n"
    "{{- '<|eot_id|>' }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n")

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

# Qwen3-like: the reasoning of replies before the last user turn is dropped, so earlier turns are
# rewritten as the conversation grows; the `{% generation %}` tags still locate each reply.
REWRITING = (
    "{%- set ns = namespace(last_user=0) %}\n"
    "{%- for message in messages %}{% if message.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}"
    "{% endfor %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'assistant' %}\n"
    "        {%- set content = message.content %}\n"
    "        {%- if loop.index0 < ns.last_user and '</think>' in content %}\n"
    "            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_start|>assistant\\n' }}{% generation %}{{ content + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n")


def train_bpe(post_bos: str | None = None):
  """A byte-level BPE (GPT-2 style pre-tokenizer) with SPECIALS as added special tokens."""
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS * 3, trainer)
  byte_level = processors.ByteLevel(trim_offsets=True)
  if post_bos is None:
    tok.post_processor = byte_level
  else:  # Llama 3 / Gemma: the post-processor puts bos first.
    template = processors.TemplateProcessing(single=f"{post_bos} $A", pair=f"{post_bos} $A {post_bos} $B",
                                             special_tokens=[(post_bos, tok.token_to_id(post_bos))])
    tok.post_processor = processors.Sequence([byte_level, template])
  return tok


STYLES = {
    # name: (template, special tokens, post-processor bos, generation_config eos ids (as tokens))
    "qwen": (QWEN, dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"), None, ["<|im_end|>", "<|endoftext|>"]),
    "llama3": (LLAMA3, dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"), "<|begin_of_text|>",
               ["<|endoftext|>", "<|eot_id|>"]),
    "gemma": (GEMMA, dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"), "<bos>", None),
}


def save_folder(path, style: str, template: str | None = None):
  """Saves a tokenizer folder of `style` with transformers; returns the transformers tokenizer."""
  default_template, specials, post_bos, gen_eos = STYLES[style]
  tok = train_bpe(post_bos)
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template or default_template,
                                            **specials)
  hf.save_pretrained(str(path))
  if gen_eos is not None:
    ids = [tok.token_to_id(t) for t in gen_eos]
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}))
  return transformers.AutoTokenizer.from_pretrained(str(path))
