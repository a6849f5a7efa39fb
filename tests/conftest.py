"""What the test files share: tiny untrained image tokenizers, shapes pictures in .tar shards, an XLA compile cache."""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# One XLA compilation cache for the session, set before any test imports jax: the many `python train.py` subprocesses
# compile the same tiny programs, and each reuses what an earlier one compiled (a third less CPU time in test_train).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="upgen-tests-xla-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def untrained_vqgan(path, image_size, levels, codebook_size):
    """Tokenising and training only need deterministic codes, so an untrained VQGAN will do."""
    import jax
    import vqgan
    cfg = vqgan.VQGANConfig(image_size=image_size, filters=8, channel_multipliers=(1,) * levels, embedding_dim=8,
                            codebook_size=codebook_size, norm_groups=4)
    vqgan.save_vqgan(path, vqgan.VQGAN(cfg, key=jax.random.key(0)))
    return str(path)


@pytest.fixture(scope="session")
def tiny_vqgan(tmp_path_factory):
    """8x8 codes of 64x64 pictures."""
    return untrained_vqgan(tmp_path_factory.mktemp("vq") / "vqgan.eqx", 64, 4, 32)


@pytest.fixture(scope="session")
def tiny_vqgan_16(tmp_path_factory):
    """4x4 codes of 16x16 pictures: the quickest to compile."""
    return untrained_vqgan(tmp_path_factory.mktemp("vq16") / "vqgan.eqx", 16, 3, 16)


@pytest.fixture(scope="session")
def shapes_tars(tmp_path_factory):
    """4 WebDataset .tar shards of 16 shapes pictures (PNG + caption) each."""
    import shards
    return shards.render_shapes(tmp_path_factory.mktemp("tars"), 64, 0, shards.ShardsConfig(shard_size=16))
