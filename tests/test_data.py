"""data.py: text survives the tokenizer; image-caption files and checkpoints fail cleanly."""

import io
import tarfile

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import data
import shapes


@pytest.fixture(scope="module")
def world():
    return shapes.examples(300, seed=0)


def test_captions_round_trip_through_the_tokenizer(world):
    _, captions, _ = world
    tokenizer = data.build_tokenizer(captions)
    for caption in captions:
        ids = tokenizer.encode(caption)
        assert ids.shape == (16,) and ids.dtype == np.int32
        assert tokenizer.decode(ids) == caption
        assert (ids >= data.N_SPECIAL + data.N_BYTES).sum() == len(caption.split())  # one id per word


def test_any_string_encodes_and_padding_is_explicit(world):
    tokenizer = data.build_tokenizer(world[1], length=16)
    assert list(tokenizer.encode("")) == [data.PAD] * 16
    assert tokenizer.encode("x" * 10_000).shape == (16,)
    assert data.MASK not in tokenizer.encode("[MASK] [PAD] mask pad")  # text cannot forge special ids
    unknown = tokenizer.encode("a zebra in the café")
    assert tokenizer.decode(unknown) == "a zebra in the café"  # unknown words spelled in bytes
    ids = tokenizer.encode("a red circle")
    assert list(ids[3:]) == [data.PAD] * 13
    assert tokenizer.decode([data.MASK, data.PAD, *ids]) == "a red circle"
    assert isinstance(tokenizer.decode(np.arange(tokenizer.vocab_size)), str)  # any generation decodes


def test_checkpoints_are_written_atomically_and_load_back(tmp_path):
    path = tmp_path / "c.eqx"
    tree = {"w": jnp.arange(6.0).reshape(2, 3)}
    data.save_checkpoint(path, {"step": 7}, tree)
    header, loaded = data.load_checkpoint(path, lambda h: {"w": jnp.zeros((2, 3))})
    assert header == {"step": 7} and np.array_equal(loaded["w"], tree["w"])
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        data.load_checkpoint(tmp_path / "missing.eqx", lambda h: tree)
    with pytest.raises(ValueError, match="does not match"):
        data.load_checkpoint(path, lambda h: {"w": jnp.zeros((3, 3))})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        data.load_checkpoint(path, lambda h: {"w": jnp.zeros((2, 3))})


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_text_folders_and_tar_shards_skip_broken_images(tmp_path, world):
    images, captions, _ = world
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(images[i]))
        (folder / f"{i}.txt").write_text(captions[i])
    (folder / "3.jpg").write_bytes(b"not an image")
    (folder / "3.txt").write_text("broken")
    got, got_captions, skipped = data.image_text_pairs(folder, 64)
    assert got.shape == (3, 64, 64, 3) and got_captions == captions[:3]
    assert np.abs(got.astype(int) - images[:3]).max() <= 2  # PNG is lossless; resize to the same size
    assert len(skipped) == 1 and "3.jpg" in skipped[0]

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(2):
            for name, payload in ((f"{i:05d}.png", _png(images[i])), (f"{i:05d}.txt", captions[i].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    got, got_captions, skipped = data.image_text_pairs(shard, 32)
    assert got.shape == (2, 32, 32, 3) and got_captions == captions[:2] and not skipped

    with pytest.raises(FileNotFoundError, match="no data"):
        data.image_text_pairs(tmp_path / "nowhere", 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable"):
        data.image_text_pairs(tmp_path / "empty", 64)


def test_text_corpus_is_one_document_per_line(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  second line  \n")
    assert data.text_lines(tmp_path / "a.txt") == ["first line", "second line"]
