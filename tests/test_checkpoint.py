"""checkpoint.py: a checkpoint is written all or nothing, and a wrong, missing or broken file is one clear error."""
import jax.numpy as jnp
import numpy as np
import pytest

import checkpoint


def test_checkpoints_are_written_atomically_and_load_back(tmp_path):
    path = tmp_path / "c.eqx"
    tree = {"w": jnp.arange(6.0).reshape(2, 3)}
    checkpoint.save_checkpoint(path, {"step": 7}, tree)
    header, loaded = checkpoint.load_checkpoint(path, "step", lambda h: {"w": jnp.zeros((2, 3))})
    assert header == {"step": 7} and np.array_equal(loaded["w"], tree["w"])
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "missing.eqx", "step", lambda h: tree)
    with pytest.raises(ValueError, match="does not match"):
        checkpoint.load_checkpoint(path, "step", lambda h: {"w": jnp.zeros((3, 3))})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="no vqgan checkpoint"):
        checkpoint.load_checkpoint(path, "vqgan", lambda h: tree)
    with pytest.raises(ValueError, match="truncated"):
        checkpoint.load_checkpoint(path, "step", lambda h: {"w": jnp.zeros((2, 3))})
