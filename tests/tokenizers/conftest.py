"""The session fixture of Hugging Face tokenizer folders (built by hf_fixtures.py)."""
import pytest

from hf_fixtures import STYLES, save_folder


@pytest.fixture(scope="session")
def hf_folders(tmp_path_factory):
  """{style: (folder, transformers tokenizer reloaded from it)} for qwen, llama3, gemma."""
  root = tmp_path_factory.mktemp("hf_tokenizers")
  out = {}
  for style in STYLES:
    folder = root / style
    out[style] = (str(folder), save_folder(folder, style))
  return out
