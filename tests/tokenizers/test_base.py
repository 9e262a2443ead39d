"""One chat interface for every backend: `encode_chat` and `chat_stop_ids`, as the data and RL callers use them."""
import os

import numpy as np
import pytest

from jaxpost import tokenizers
from jaxpost.data import DataError, tokenize_record
from jaxpost.data.prompts import prompt_tokens

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARITHMETIC = os.path.join(ROOT, "assets", "arithmetic", "tokenizer.model")
CHAT = [{"role": "user", "content": "What is 12+7?"}, {"role": "assistant", "content": "19"}]


def test_sentencepiece_default_is_bos_plus_builtin_chatml():
  """The sequences callers built before `encode_chat` existed: [bos] + tokenize_chat; stops <|im_end|>, eos."""
  tok = tokenizers.load(ARITHMETIC)
  for messages, gen in ((CHAT, False), (CHAT[:1], True)):
    tokens, loss_mask = tok.encode_chat(messages, add_generation_prompt=gen)
    old_tokens, old_mask = tokenizers.tokenize_chat(messages, tok, add_generation_prompt=gen)
    assert tokens.tolist() == [tok.bos_id] + old_tokens.tolist()
    assert loss_mask.tolist() == [False] + old_mask.tolist()
  assert tok.adds_bos and tok.chat_stop_ids == (tok.token_id(tokenizers.IM_END), tok.eos_id)
  # loss_from: a preference prompt with an earlier reply, then the completion; only the completion is trained.
  prompt, completion = CHAT + [{"role": "user", "content": "And 1+1?"}], [{"role": "assistant", "content": "2"}]
  tokens, loss_mask = tok.encode_chat(prompt + completion, loss_from=len(prompt))
  (p_tokens, _), (c_tokens, c_mask) = (tokenizers.tokenize_chat(m, tok) for m in (prompt, completion))
  assert tokens.tolist() == [tok.bos_id] + p_tokens.tolist() + c_tokens.tolist()  # as preferences.py builds it
  assert loss_mask.tolist() == [False] * (1 + len(p_tokens)) + c_mask.tolist()
  assert tok.decode(tokens[loss_mask]) == "2<|im_end|>"


def test_records_and_prompts_with_hf_tokenizers(hf_folders):
  """No second bos before a template that writes one; plain text gets bos only where the tokenizer adds it."""
  llama = tokenizers.load(hf_folders["llama3"][0])
  tokens, loss_mask = tokenize_record({"messages": CHAT}, llama, where="f:1")
  expected, expected_mask = llama.encode_chat(CHAT)
  np.testing.assert_array_equal(tokens, expected)
  np.testing.assert_array_equal(loss_mask, expected_mask)
  assert tokens[0] == llama.bos_id != tokens[1] and llama.decode(tokens[loss_mask]) == "19<|eot_id|>"
  tokens, _ = tokenize_record({"text": "abc"}, llama, where="f:1")
  assert tokens.tolist() == [llama.bos_id] + llama.encode("abc") + [llama.eos_id]

  qwen = tokenizers.load(hf_folders["qwen"][0])  # no bos at all
  tokens, _ = tokenize_record({"text": "abc"}, qwen, where="f:1")
  assert tokens.tolist() == qwen.encode("abc") + [qwen.eos_id]
  prompt = prompt_tokens({"prompt": "What is 12+7?", "answer": "19"}, qwen, where="f:1")
  assert qwen.decode(prompt) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                 "<|im_start|>user\nWhat is 12+7?<|im_end|>\n<|im_start|>assistant\n")


def test_template_errors_name_the_record(hf_folders):
  gemma = tokenizers.load(hf_folders["gemma"][0])
  with pytest.raises(DataError, match="data.jsonl:3: .*System role not supported"):
    tokenize_record({"messages": [{"role": "system", "content": "s"}, *CHAT]}, gemma, where="data.jsonl:3")
  with pytest.raises(DataError, match="p.jsonl:2: .*System role not supported"):
    prompt_tokens({"messages": [{"role": "system", "content": "s"}, CHAT[0]], "answer": "1"}, gemma, where="p.jsonl:2")
