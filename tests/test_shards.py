"""shards.py: pictures are tokenised once, into shards that a killed run, a full disk or broken files cannot spoil,
each process tokenising only its own files, and no shard read with a tokenizer it was not written with."""
import errno
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data
import shapes
import shards
import vocab

ROOT = Path(__file__).resolve().parents[1]
CFG = shards.ShardsConfig(shard_size=32, chunk=8)


def tokenise(source, vq, folder, **kwargs):
    return shards.tokenise(source, vq, folder, CFG, log=lambda line: None, **kwargs)


def contents(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


@pytest.fixture(scope="module")
def eight_tars(tmp_path_factory):
    """8 .tar shards of 32 shapes pictures as a brace pattern."""
    folder = tmp_path_factory.mktemp("eight")
    shards.render_shapes(folder, 256, 0, CFG)
    return f"{folder}/shapes-{{00000..00007}}.tar"


@pytest.fixture(scope="module")
def straight(eight_tars, tiny_vqgan, tmp_path_factory):
    """The files of an uninterrupted tokenisation of eight_tars."""
    folder = tmp_path_factory.mktemp("straight")
    tokenise(eight_tars, tiny_vqgan, folder)
    return contents(folder)


def test_shards_hold_codes_and_caption_ids_and_open_memory_mapped(straight, eight_tars, tiny_vqgan, tmp_path):
    import vqgan
    manifest = json.loads(straight["manifest-0of1.json"])
    held = [[data.is_held_out(f"shapes.tar:{32 * i + j:09d}") for j in range(32)] for i in range(8)]
    assert manifest["complete"] and [(s["examples"], s["held_out"]) for s in manifest["shards"]] == [
        (32 - sum(h), sum(h)) for h in held]
    assert sorted(straight) == sorted([f"{kind}-{i:05d}.npy" for i in range(8) for kind in ("images", "held-out")]
                                      + ["manifest-0of1.json"])
    for name, payload in straight.items():
        (tmp_path / name).write_bytes(payload)
    tokenizer, images, texts = shards.open_shards(tmp_path, tiny_vqgan)
    train, out = ~np.array(held[0]), np.array(held[0])
    assert isinstance(images[0], np.memmap) and images[0].dtype == np.uint16 and images[0].shape == (train.sum(), 80)
    pictures, captions, _ = shapes.examples(32, seed=[0, 0])  # shard 0 of render_shapes
    codes = vqgan.encode_images(vqgan.load_vqgan(tiny_vqgan), pictures)
    assert np.array_equal(images[0][:, :64], codes[train])  # the held-out pairs are in no training shard
    assert np.array_equal(np.load(tmp_path / "held-out-00000.npy")[:, :64], codes[out])
    assert [tokenizer.decode(row) for row in texts[0]] == [c for c, t in zip(captions, train) if t]  # no corpus
    lengths = [(tokenizer.encode(c) != vocab.PAD).sum() for i in range(8)
               for c, h in zip(shapes.examples(32, seed=[0, i])[1], held[i]) if not h]
    assert tokenizer.caption_lengths == tuple(np.bincount(lengths, minlength=17)[1:].tolist())


def test_held_out_rows_spread_over_every_process_s_shards(eight_tars, tiny_vqgan, tmp_path):
    for process in (0, 1):
        tokenise(eight_tars, tiny_vqgan, tmp_path, process=process, processes=2)
    every = np.concatenate([np.load(tmp_path / f"held-out-{i:05d}.npy") for i in range(8)])
    rows = shards.held_out_rows(tmp_path, 1000)
    assert sorted(map(bytes, rows)) == sorted(map(bytes, every))
    assert len(shards.held_out_rows(tmp_path, 3)) == 3


def test_a_killed_tokenisation_restarts_into_identical_shards(straight, eight_tars, tiny_vqgan, tmp_path):
    command = [sys.executable, str(ROOT / "shards.py"), "--images", eight_tars, "--vqgan", tiny_vqgan,
               "--out", str(tmp_path), "--chunk", str(CFG.chunk)]
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "manifest-0of1.json"
    while proc.poll() is None and not (manifest.exists() and json.loads(manifest.read_text())["shards"]):
        time.sleep(0.005)
    proc.kill()  # as soon as the first shard is done: half-way through the second
    proc.wait()
    assert proc.returncode == -9, "it finished before it could be killed"
    killed = json.loads(manifest.read_text())
    assert not killed["complete"] and 1 <= len(killed["shards"]) < 8
    with pytest.raises(ValueError, match="did not finish"):
        shards.open_shards(tmp_path, tiny_vqgan)
    tokenise(eight_tars, tiny_vqgan, tmp_path)
    assert contents(tmp_path) == straight


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_while_tokenising_stops_at_a_shard_boundary_and_the_rerun_writes_identical_shards(
        sig, straight, eight_tars, tiny_vqgan, tmp_path):
    command = [sys.executable, str(ROOT / "shards.py"), "--images", eight_tars, "--vqgan", tiny_vqgan,
               "--out", str(tmp_path), "--chunk", str(CFG.chunk)]
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    manifest = tmp_path / "manifest-0of1.json"
    while proc.poll() is None and not (manifest.exists() and json.loads(manifest.read_text())["shards"]):
        time.sleep(0.005)
    proc.send_signal(sig)  # as soon as the first shard is done: half-way through the second
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, "it finished before the signal came"
    stopped = json.loads(manifest.read_text())
    assert not stopped["complete"] and 1 <= len(stopped["shards"]) < 8
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == sorted(  # every shard written is listed, and whole
        name for s in stopped["shards"] for name in (s["file"], s["held_out_file"]["file"]))
    assert signal.Signals(sig).name in out.strip().splitlines()[-1]
    tokenise(eight_tars, tiny_vqgan, tmp_path)
    assert contents(tmp_path) == straight


def test_a_damaged_shard_is_named_and_tokenised_again(straight, eight_tars, tiny_vqgan, tmp_path):
    for name, payload in straight.items():
        (tmp_path / name).write_bytes(payload)
    truncated, flipped = tmp_path / "images-00002.npy", tmp_path / "images-00005.npy"
    truncated.write_bytes(truncated.read_bytes()[:-40])  # a copy cut short
    damaged = bytearray(flipped.read_bytes())
    damaged[-1] ^= 0xFF  # a bad sector: same size, one byte changed
    flipped.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="images-00002.npy is damaged") as e:
        shards.open_shards(tmp_path, tiny_vqgan)
    assert "\n" not in str(e.value)
    logs = []
    shards.tokenise(eight_tars, tiny_vqgan, tmp_path, CFG, log=logs.append)  # sizes and headers: the truncated one
    assert [line.split(" is damaged")[0] for line in logs if "is damaged" in line] == [f"token shard {truncated}"]
    assert contents(tmp_path) != straight
    shards.tokenise(eight_tars, tiny_vqgan, tmp_path, CFG, log=logs.append, verify=True)  # every byte: the other
    assert f"token shard {flipped} is damaged (its sha256 differs): tokenising its input file again" in logs
    assert contents(tmp_path) == straight


def test_a_full_disk_is_one_error_and_the_rerun_writes_identical_shards(straight, eight_tars, tiny_vqgan, tmp_path,
                                                                        monkeypatch):
    real_save, calls = np.save, []

    def save_then_fill_the_disk(f, array):
        calls.append(1)
        if len(calls) == 6:  # each shard saves its held-out pairs, then its training pairs: images-00002
            f.write(b"\x93NUMPY half a shard")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(f, array)

    monkeypatch.setattr(np, "save", save_then_fill_the_disk)
    with pytest.raises(OSError, match="images-00002.npy failed .* the disk is full; free space and rerun"):
        tokenise(eight_tars, tiny_vqgan, tmp_path)
    assert sorted(contents(tmp_path)) == sorted([f"held-out-{i:05d}.npy" for i in range(3)] + [
        "images-00000.npy", "images-00001.npy", "manifest-0of1.json"])  # no .tmp
    monkeypatch.setattr(np, "save", real_save)
    tokenise(eight_tars, tiny_vqgan, tmp_path)
    assert contents(tmp_path) == straight


def test_shards_of_another_vqgan_are_refused(straight, eight_tars, tiny_vqgan_16, tmp_path):
    for name, payload in straight.items():
        (tmp_path / name).write_bytes(payload)
    with pytest.raises(ValueError, match=r"another VQGAN .* \(sha256 differs\): refusing"):
        shards.open_shards(tmp_path, tiny_vqgan_16)
    with pytest.raises(ValueError, match="another VQGAN"):
        tokenise(eight_tars, tiny_vqgan_16, tmp_path)
    with pytest.raises(ValueError, match="holds the shards of"):
        tokenise(eight_tars.replace("00007", "00006"), tiny_vqgan_16, tmp_path)


def _png(picture):
    png = io.BytesIO()
    Image.fromarray(picture).save(png, format="PNG")
    return png.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_broken_files_are_skipped_counted_and_listed(tiny_vqgan, tmp_path):
    pictures, captions, _ = shapes.examples(6, seed=1)
    good = [(f"{i}{suffix}", payload) for i in range(3)
            for suffix, payload in ((".png", _png(pictures[i])), (".txt", captions[i].encode()))]
    _tar(tmp_path / "0.tar", good + [
        ("3.png", _png(pictures[3])[:40]),  # a truncated picture
        ("3.txt", b"a large red circle in the top left"),
        ("4.png", _png(pictures[4])),  # no caption
        ("5.png", _png(pictures[5])), ("5.txt", b"caf\xe9"),  # not UTF-8
        ("6.png", _png(pictures[5][:1, :1])), ("6.txt", b"a dot"),  # 1x1 pixels
    ])
    truncated = tmp_path / "1.tar"
    truncated.write_bytes(_tar(truncated, good).read_bytes()[:3000])  # ends inside the second picture
    _tar(tmp_path / "2.tar", [])  # an empty shard
    (tmp_path / "3.tar").write_bytes(b"no tar at all" * 100)
    manifest = tokenise(f"{tmp_path}/{{0..3}}.tar", tiny_vqgan, tmp_path / "shards")
    assert [s["examples"] for s in manifest["shards"]] == [3, 1, 0, 0]
    whys = [why.replace(str(tmp_path), "") for s in manifest["shards"] for why in s["skipped"]]
    assert whys[:4] == ["/0.tar:3: cannot read image 3.png: UnidentifiedImageError", "/0.tar:4: no caption",
                        "/0.tar:5: caption is not UTF-8", "/0.tar:6: image 6.png of 1x1 pixels is too small (under 16)"]
    assert whys[4] == "/1.tar: truncated or broken tar (ReadError: unexpected end of data), the rest of it skipped"
    assert whys[5:] == ["/2.tar: no image-caption pairs",
                        "/3.tar: truncated or broken tar (ReadError: method tar: ReadError('invalid header')), the "
                        "rest of it skipped"]
    tokenizer, images, _ = shards.open_shards(tmp_path / "shards", tiny_vqgan)
    assert [len(s) for s in images] == [3, 1]  # the empty shards are never opened
    assert [tokenizer.decode(row[64:]) for row in images[0]] == captions[:3]


def test_each_process_tokenises_only_its_own_files(shapes_tars, tiny_vqgan, tmp_path):
    tars = []
    for i, tar in enumerate(shapes_tars):  # the pictures of process 0's files are broken: process 1 must not see it
        members = [(m.name, b"broken" if i % 2 == 0 and m.name.endswith(".png") else tarfile.open(tar).extractfile(m)
                    .read()) for m in tarfile.open(tar).getmembers()]
        tars.append(_tar(tmp_path / tar.name, members))
    (tmp_path / "corpus.txt").write_text("".join(f"line {i}\n" for i in range(5)))
    cfg = shards.ShardsConfig(shard_size=2)
    manifest = shards.tokenise(f"{tmp_path}/*.tar", tiny_vqgan, tmp_path / "shards", cfg,
                               text=str(tmp_path / "corpus.txt"), process=1, processes=2, log=lambda line: None)
    assert [s["file"] for s in manifest["shards"]] == ["images-00001.npy", "images-00003.npy"]
    assert not [why for s in manifest["shards"] for why in s["skipped"]]
    assert [s["file"] for s in manifest["text_shards"]] == ["text-00001.npy"]  # lines 2 and 3
    tokenizer, _, texts = shards.open_shards(tmp_path / "shards", tiny_vqgan, 1, 2)
    assert [tokenizer.decode(row) for row in texts[0]] == ["line 2", "line 3"]
    with pytest.raises(ValueError, match="4 input file.* for 5 processes"):
        shards.tokenise(f"{tmp_path}/*.tar", tiny_vqgan, tmp_path / "five", process=0, processes=5)


def test_the_command_line_reports_bad_input_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "shards.py"), "--images", str(tmp_path / "nowhere"),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no data at") and len(result.stderr.strip().splitlines()) == 1
