"""data.py: the shapes world draws what its captions say; text survives the tokenizer; files fail cleanly."""

import io
import tarfile

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import data


@pytest.fixture(scope="module")
def world():
    return data.shapes(300, seed=0)


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = data.shapes(5, seed=3), data.shapes(5, seed=3), data.shapes(5, seed=4)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])


def test_every_description_occurs_and_labels_are_in_range(world):
    _, _, labels = data.shapes(3000, seed=1)
    assert len({tuple(row) for row in labels}) == 180
    assert labels.min() == 0 and list(labels.max(0)) == [2, 5, 1, 4]


def test_the_picture_has_the_captioned_colour_at_its_anchor(world):
    images, _, labels = world
    for image, (shape, colour, size, position) in zip(images, labels):
        if shape == 2 and size == 1:  # a small triangle is thinner at its centre than the jitter
            continue
        x, y = (data.ANCHORS[position] * 64).astype(int)
        assert np.abs(image[y, x].astype(int) - data.RGB[colour]).max() < 30


def test_large_shapes_cover_more_pixels_than_small_ones(world):
    images, _, labels = world
    area = (np.abs(images.astype(int) - images[:, :1, :1].astype(int)).max(-1) > 100).sum((1, 2)) / 64**2
    for shape in range(3):
        large = area[(labels[:, 0] == shape) & (labels[:, 2] == 0)]
        small = area[(labels[:, 0] == shape) & (labels[:, 2] == 1)]
        assert large.min() > 2.5 * small.max() * 0.9  # spans of 40-45% vs 20-25%: ~3x the area
    squares = area[(labels[:, 0] == 1) & (labels[:, 2] == 0)]
    assert 0.40**2 * 0.9 < squares.mean() < 0.45**2 * 1.1


def test_the_background_is_light(world):
    corners = world[0][:, 0, 0].astype(int)
    assert corners.min() >= 220


def test_the_picture_reader_reads_every_rendered_picture(world):
    images, _, labels = world
    assert all(data.read_picture(i) == tuple(l) for i, l in zip(images, labels))


def test_the_picture_reader_refuses_what_is_not_one_shape(world):
    images, _, _ = world
    blank = np.full((64, 64, 3), 240, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    rng = np.random.default_rng(0)
    left, right = data.render((0, 0, 1, 0), rng), data.render((1, 4, 1, 3), rng)
    two = np.where(np.abs(right.astype(int) - right[0, 0]).max(-1, keepdims=True) > 50, right, left)
    assert data.read_picture(blank) is None
    assert data.read_picture(noise) is None
    assert data.read_picture(two) is None


def test_captions_name_all_four_attributes_in_every_phrasing(world):
    _, captions, labels = world
    assert len(set(" ".join(c.split()[1:3]) for c in captions)) > 1  # phrasings vary
    assert all(data.parse_caption(c) == tuple(l) for c, l in zip(captions, labels))
    _, canonical, labels = data.shapes(50, seed=2, varied=False)
    assert all(c == data.canonical_caption(l) for c, l in zip(canonical, labels))
    assert data.parse_caption("a large red circle in the top left") == (0, 0, 0, 0)
    assert data.parse_caption("a red circle") is None  # no size, no position


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


def test_image_text_folders_and_tar_shards_stream_pairs_and_name_what_to_skip(tmp_path, world):
    images, captions, _ = world
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(images[i]))
        (folder / f"{i}.txt").write_text(captions[i])
    (folder / "3.png").write_bytes(_png(images[3]))  # no caption
    (folder / "4.png").write_bytes(_png(images[4]))
    (folder / "4.txt").write_bytes(b"caf\xe9")  # Latin-1, not UTF-8
    got = list(data.folder_pairs(data.picture_files(folder)))
    assert [why for *_, why in got] == ["", "", "", "no caption", "caption is not UTF-8"]
    assert [caption for _, _, caption, why in got if not why] == captions[:3]
    picture = data.load_image(got[0][1], 64)
    assert picture.shape == (64, 64, 3) and np.abs(picture.astype(int) - images[0]).max() <= 2  # PNG is lossless

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for name, payload in (("a.png", _png(images[0])), ("a.txt", captions[0].encode()), ("b.txt", b"alone")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    got = list(data.tar_pairs(shard))
    assert [(name, caption, why) for name, _, caption, why in got] == [
        (f"{shard}:a", captions[0], ""), (f"{shard}:b", None, "no picture")]
    assert np.array_equal(data.load_image(got[0][1], 64), picture)
    assert [picture for _, picture, _, _ in data.tar_pairs(shard, pictures=False)] == [None, None]
    with pytest.raises(ValueError, match="too small"):
        data.load_image(io.BytesIO(_png(images[0][:1, :1])), 64)


def test_text_corpus_is_one_document_per_line(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  second line  \n")
    assert list(data.text_lines(tmp_path / "a.txt")) == ["first line", "second line"]
    with pytest.raises(FileNotFoundError, match="no text"):
        next(data.text_lines(tmp_path / "missing.txt"))


def test_the_vocabulary_count_is_bounded_and_keeps_the_frequent_words():
    rare = (f"w{i}" for i in range(5000))  # 5000 words seen once, far past 16 x max_words distinct ones
    texts = (f"red blue red {word}" if i % 2 else f"blue {word}" for i, word in enumerate(rare))
    tokenizer = data.build_tokenizer(texts, max_words=8)
    assert tokenizer.words[:2] == ("blue", "red") and len(tokenizer.words) == 8
