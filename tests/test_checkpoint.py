"""checkpoint.restore_params's errors name the setting (or path) the user gave, not always init_checkpoint."""
import os

import pytest

from jaxpost import checkpoint


def test_missing_checkpoint_names_the_setting_that_pointed_there(tmp_path):
  empty = str(tmp_path / "run")
  os.makedirs(os.path.join(empty, "checkpoints"))
  with pytest.raises(FileNotFoundError, match=rf"^config.ppo.value_init={empty}: no checkpoint in {empty}/checkpoints$"):
    checkpoint.restore_params(empty, {}, source="config.ppo.value_init")
  # Export and generate pass the workdir itself (their flag's value): the message starts with that path.
  with pytest.raises(FileNotFoundError, match=rf"^{empty}: no checkpoint in {empty}/checkpoints$"):
    checkpoint.restore_params(empty, {})
