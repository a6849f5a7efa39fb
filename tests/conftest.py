"""Fixtures shared by the test files: tiny untrained image tokenizers, shapes pictures in WebDataset .tar shards."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
