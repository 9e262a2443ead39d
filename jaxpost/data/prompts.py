"""Prompt records for online RL: `{"prompt": str | "messages": [...], "answer": ..., ["tests": ...]}`.

GSM8K-style records `{"question": ..., "answer": "worked solution ... #### 1,072"}` are read as
prompt = question, answer = what follows the last `####` ("1072", thousands separators dropped), the
worked solution kept as `solution`. MATH-style records `{"problem", "solution"}` are read as
prompt = problem, answer = the content of the solution's last \boxed{} (the solution if it has none).
Both use the anchors of `jaxpost.rewards.extract`, so gold and completions are read the same way.

A `prompt` string is wrapped as one user message; both forms are rendered with the chat template and
a generation prompt, so the policy answers as the assistant. The whole record stays available to the
reward functions (they read `answer`, `tests`, ...).
"""
from __future__ import annotations

from jaxpost.data.jsonl import DataError, read_jsonl
from jaxpost.rewards import extract
from jaxpost.tokenizers import check_messages


def prompt_tokens(record: dict, tokenizer, *, where: str) -> list[int]:
  """The chat-templated prompt with its generation prompt (`tokenizer.encode_chat`, bos included)."""
  if not isinstance(record, dict):
    raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
  record = normalize_record(record)
  if "messages" in record:
    messages = record["messages"]
  elif isinstance(record.get("prompt"), str) and record["prompt"]:
    messages = [{"role": "user", "content": record["prompt"]}]
  else:
    raise DataError(f"{where}: a prompt record needs a non-empty 'prompt' string or 'messages'; "
                    f"found keys {sorted(record)}")
  if "answer" not in record and "tests" not in record:
    raise DataError(f"{where}: a prompt record needs an 'answer' (or 'tests') for the reward")
  try:
    check_messages(messages)
  except ValueError as e:
    raise DataError(f"{where}: {e}") from None
  try:
    tokens, _ = tokenizer.encode_chat(messages, add_generation_prompt=True)
  except ValueError as e:  # The template rejects the conversation.
    raise DataError(f"{where}: {e}") from None
  return tokens.tolist()


def normalize_record(record: dict) -> dict:
  """GSM8K and MATH field names -> prompt/answer (other records pass through unchanged)."""
  if "prompt" not in record and "messages" not in record:
    if "question" in record and isinstance(record.get("answer"), str) and "####" in record["answer"]:
      final = extract.anchor_contents(record["answer"], "gsm8k")[0][-1]
      return {**record, "prompt": record["question"], "answer": final.strip().replace(",", ""),
              "solution": record["answer"]}
    if "problem" in record and isinstance(record.get("solution"), str):
      boxed, _ = extract.boxed_contents(record["solution"])
      return {**record, "prompt": record["problem"],
              "answer": boxed[-1].strip() if boxed else record["solution"]}
  return record


def load_prompts(paths, tokenizer, *, max_prompt_len: int) -> tuple[list[dict], dict]:
  """Reads prompt records; returns [{"tokens": [...], "record": {...}, "where": "path:line"}] and counts (`dropped` = longer
  than `max_prompt_len`, never silently: the count is logged)."""
  examples, dropped = [], 0
  for path, line, record in read_jsonl(paths):
    tokens = prompt_tokens(record, tokenizer, where=f"{path}:{line}")
    if len(tokens) > max_prompt_len:
      dropped += 1
      continue
    examples.append({"tokens": tokens, "record": normalize_record(record), "where": f"{path}:{line}"})
  if not examples:
    raise DataError(f"{paths}: no prompt fits max_prompt_len={max_prompt_len} ({dropped} dropped)")
  return examples, {"prompts": len(examples), "dropped_overlong_prompts": dropped}


def reply_tokens(example: dict, field: str, tokenizer, *, max_tokens: int) -> tuple[list[int], bool]:
  """The record's own reply as a completion of its prompt: (the tokens that follow `example["tokens"]` when the
  conversation ends with an assistant message holding `record[field]`, i.e. the reply and its end-of-turn
  token(s), cut to max_tokens; whether it was cut). DataError naming path:line without the field."""
  record, where = example["record"], example.get("where", "a prompt record")
  text = record.get(field)
  if not isinstance(text, str) or not text:
    raise DataError(f"{where}: no {field!r} string to use as the dataset's reply (distill.completion_field); "
                    f"found keys {sorted(record)}")
  messages = record["messages"] if "messages" in record else [{"role": "user", "content": record["prompt"]}]
  tokens, mask = tokenizer.encode_chat(list(messages) + [{"role": "assistant", "content": text}])
  prompt = example["tokens"]
  if tokens[:len(prompt)].tolist() != list(prompt):
    raise DataError(f"{where}: the chat template renders the prompt differently once a reply follows it")
  reply = tokens[len(prompt):][mask[len(prompt):]].tolist()  # The reply and its end-of-turn token(s).
  return reply[:max_tokens], len(reply) > max_tokens
