"""data.py: image-caption files stream their pairs and name what to skip; the held-out slice and sources."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

import data
import shapes


@pytest.fixture(scope="module")
def world():
    return shapes.examples(300, seed=0)


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


def test_the_held_out_slice_is_set_by_the_pairs_names_alone_and_about_its_share():
    names = [f"{i:09d}" for i in range(4000)]
    slice_of = lambda prefix: [data.is_held_out(prefix + n) for n in names]  # noqa: E731
    assert slice_of("a/shapes-00000.tar:") == slice_of("b/other.tar:")  # another .tar or folder holding the pair
    assert slice_of("") == [data.is_held_out(f"/data/{n}.jpg") for n in names]  # a folder's a.jpg + a.txt
    assert abs(np.mean(slice_of("")) - data.HELD_OUT) < 0.01
    assert not any(data.is_held_out(n, 0.0) for n in names)


def test_sources_are_folders_tars_globs_and_brace_patterns(shapes_tars, tmp_path):
    folder = shapes_tars[0].parent
    assert data.expand("a/{08..10}-{0..1}.tar") == ["a/08-0.tar", "a/08-1.tar", "a/09-0.tar", "a/09-1.tar",
                                                     "a/10-0.tar", "a/10-1.tar"]
    listed = [("tar", p) for p in shapes_tars]
    assert data.input_files(str(folder), 10) == listed
    assert data.input_files(f"{folder}/shapes-0000[0-3].tar", 10) == listed
    assert data.input_files(f"{folder}/shapes-{{00000..00001}}.tar,{folder}/*-0000[23].tar", 10) == listed
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(b"")
    assert [len(paths) for _, paths in data.input_files(str(tmp_path), 2)] == [2, 2, 1]
    with pytest.raises(FileNotFoundError, match="no data at"):
        data.input_files(f"{folder}/shapes-{{00000..00004}}.tar", 10)
