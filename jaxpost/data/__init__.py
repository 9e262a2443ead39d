"""Data: JSONL sources with file:line errors, record tokenisation, packing and the grain pipeline."""
from jaxpost.data.jsonl import DataError, expand_paths, read_jsonl
from jaxpost.data.packing import FIELDS, pack_examples, shift_example
from jaxpost.data.pipeline import build_dataset, eval_batches, make_train_iterator
from jaxpost.data.records import tokenize_record

__all__ = ["DataError", "FIELDS", "build_dataset", "eval_batches", "expand_paths", "make_train_iterator",
           "pack_examples", "read_jsonl", "shift_example", "tokenize_record"]
