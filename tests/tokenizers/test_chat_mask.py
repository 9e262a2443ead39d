"""The assistant loss mask covers exactly each reply and its end-of-turn token(s), for any template."""
import numpy as np
import pytest

from hf_fixtures import REWRITING, save_folder
from jaxpost import tokenizers
from jaxpost.tokenizers.chat_mask import assistant_spans, token_mask

# The second reply's text ("4") also appears in the prompt, and the first reply has spaces that
# Llama 3 and Gemma `| trim` away: a string search for the reply would mask the wrong tokens.
CONVERSATION = [{"role": "user", "content": "What is 2+2? Say 4."}, {"role": "assistant", "content": " 4 "},
                {"role": "user", "content": "héllo 日本語 🙂 4"}, {"role": "assistant", "content": "Yes!\n\n  4\n"}]
EXPECTED = {  # style: the masked text of each reply, as the template writes it, then its end of turn.
    "qwen": [" 4 <|im_end|>", "Yes!\n\n  4\n<|im_end|>"],  # not the "\n" after <|im_end|>
    "llama3": ["4<|eot_id|>", "Yes!\n\n  4<|eot_id|>"],
    "gemma": ["4<end_of_turn>", "Yes!\n\n  4<end_of_turn>"],  # not the "\n" after <end_of_turn>
}


def _masked_runs(tok, tokens, loss_mask):
  """Decoded text of each maximal run of masked tokens."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], loss_mask.astype(np.int8), [0]])))
  return [tok.decode(tokens[a:b]) for a, b in zip(edges[::2], edges[1::2])]


@pytest.mark.parametrize("style", ["qwen", "llama3", "gemma"])
def test_mask_is_exactly_the_replies(hf_folders, style):
  folder, hf = hf_folders[style]
  tok = tokenizers.load(folder)
  tokens, loss_mask = tok.encode_chat(CONVERSATION)
  assert tokens.dtype == np.int32 and loss_mask.dtype == np.bool_ and tokens.shape == loss_mask.shape
  assert tokens.tolist() == hf.apply_chat_template(CONVERSATION, return_dict=False)
  assert _masked_runs(tok, tokens, loss_mask) == EXPECTED[style]
  # Every reply's mask ends on a stop id, so the model learns to stop where sampling stops.
  ends = np.flatnonzero(loss_mask & ~np.append(loss_mask[1:], False))
  assert len(ends) == 2 and all(tokens[i] == tok.chat_stop_ids[0] for i in ends)
  # The prompt for the last reply: only the earlier reply is masked, not the generation prompt. (Its ids
  # need not be a prefix of the conversation's: BPE may split "\n\n" differently before "Yes".)
  prompt, prompt_mask = tok.encode_chat(CONVERSATION[:3], add_generation_prompt=True)
  assert prompt.tolist() == hf.apply_chat_template(CONVERSATION[:3], add_generation_prompt=True, return_dict=False)
  assert _masked_runs(tok, prompt, prompt_mask) == EXPECTED[style][:1]
  # loss_from=2: the first reply is part of the prompt and carries no loss.
  tokens, loss_mask = tok.encode_chat(CONVERSATION, loss_from=2)
  assert _masked_runs(tok, tokens, loss_mask) == EXPECTED[style][1:]


def test_generation_tags_serve_a_template_that_rewrites_earlier_turns(tmp_path):
  """Replies before the last user turn lose their <think> part: prefixes break, {% generation %} spans don't."""
  hf = save_folder(tmp_path / "tags", "qwen", template=REWRITING)
  conversation = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>add</think>\n4"},
                  {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "<think>add</think>\n6"}]
  tok = tokenizers.load(str(tmp_path / "tags"))
  tokens, loss_mask = tok.encode_chat(conversation)
  assert _masked_runs(tok, tokens, loss_mask) == ["4<|im_end|>", "<think>add</think>\n6<|im_end|>"]
  expected = hf.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
  assert tokens.tolist() == expected["input_ids"]
  assert loss_mask.tolist() == [bool(m) for m in expected["assistant_masks"]]  # transformers' mask, same spans
  tokens, loss_mask = tok.encode_chat(conversation, loss_from=2)
  assert _masked_runs(tok, tokens, loss_mask) == ["<think>add</think>\n6<|im_end|>"]
  untagged = REWRITING.replace("{% generation %}", "").replace("{% endgeneration %}", "")
  tok = tokenizers.load(str(tmp_path / "tags"), chat_template=untagged)
  with pytest.raises(ValueError, match=r"messages\[:2\] is not a prefix of the whole conversation \(the template "
                                       r"rewrites earlier turns\).*character 54"):
    tok.encode_chat(conversation)


def test_generation_prompt_that_the_reply_does_not_repeat_is_an_error():
  """A `<think>` opened only by the generation prompt: the prompt is not a prefix of prompt + reply."""
  source = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<assistant><think>{% endif %}")
  render = lambda messages, gen: tokenizers.render_chat_template(source, messages, add_generation_prompt=gen)
  messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
  with pytest.raises(ValueError, match=r"messages\[:1\] rendered with the generation prompt is not a prefix of "
                                       r"messages\[:2\] \(ending with assistant messages\[1\]\).*character 22"):
    assistant_spans(render, messages)
  source = source.replace("<think>", "")
  text, spans = assistant_spans(render, messages)
  assert text == "<user>q</s><assistant>a</s>" and [text[a:b] for a, b in spans] == ["a</s>"]


def test_token_mask_overlap_rule():
  # Spans are [3, 6) and [9, 10); token ranges: inside, straddling either edge, outside, empty.
  offsets = [(0, 3), (2, 4), (4, 6), (6, 9), (9, 10), (5, 5), (6, 6), (10, 12)]
  assert token_mask(offsets, [(3, 6), (9, 10)]).tolist() == [False, True, True, False, True, True, False, False]
  assert token_mask([], [(0, 1)]).shape == (0,)
