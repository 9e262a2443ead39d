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


def test_a_state_saved_with_the_old_rng_key_restores(tmp_path):
  """Checkpoints written before the unused state["rng"] went hold it beside step, params and opt_state;
  they still restore into today's state (values and shardings), the extra entry unread."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  state = {"step": jnp.int32(3), "params": {"w": jnp.arange(8, dtype=jnp.float32)}, "opt_state": {"mu": jnp.ones(8)}}
  saver = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  saver.save(3, {**state, "rng": jax.random.PRNGKey(1)}, {"cursor": 5})
  saver.close()
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
  reader = checkpoint.Checkpointer(str(tmp_path))
  restored, data = reader.restore(3, abstract)
  reader.close()
  assert sorted(restored) == ["opt_state", "params", "step"] and data == {"cursor": 5}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
