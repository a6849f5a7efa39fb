"""Data for upgen: image-caption files on disk (folders, .tar shards) and text corpora, read as streams; and
running a jitted function over many rows of an array in fixed-size batches.

The text tokenizer is vocab.py, checkpoint files checkpoint.py, settings config.py.

The built-in shapes world lives in shapes.py. The method starts in vocab.py.
"""

import glob
import io
import itertools
import os
import re
import tarfile
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

# ----------------------------------------------------------------------------------------------
# Image-text files on disk, streamed one pair at a time (shards.py tokenises them into shards; vqgan_train.py
# trains a run's tokenizer on a sample of them)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
MIN_SIDE = 16  # smaller pictures (1x1 tracking pixels, icons) would be upscaled into a blur: not worth learning
HELD_OUT = 1 / 32  # share of pairs no tokenizer and no step trains on (a hash of their names), for held-out figures


def load_image(file, size):
    """An image file (path or file object) -> uint8 (size, size, 3): centre square crop, then resize."""
    name = getattr(file, "name", file)
    try:
        with Image.open(file) as opened:
            picture = opened.convert("RGB")
    except Exception as e:  # pillow raises many kinds of errors on broken files
        raise ValueError(f"cannot read image {name}: {type(e).__name__}") from None
    w, h = picture.size
    if min(w, h) < MIN_SIDE:
        raise ValueError(f"image {name} of {w}x{h} pixels is too small (under {MIN_SIDE})")
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return np.asarray(picture.resize((size, size), Image.Resampling.BICUBIC, box=box))


def _caption(raw: bytes):
    """-> (caption, "") or (None, why it is skipped)."""
    try:
        caption = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "caption is not UTF-8"
    return (caption, "") if caption else (None, "empty caption")


def tar_pairs(path, pictures=True):
    """(name, picture file object, caption, why) per sample of a WebDataset .tar (key.jpg + key.txt, the members of
    a key next to each other), in order. why is "" for a good pair, else the reason to skip it (picture and caption
    None); a truncated or broken tar ends with one such skip. pictures=False reads captions only (picture None)."""
    try:
        with tarfile.open(path) as tar:
            files = (m for m in tar if m.isfile())
            for key, members in itertools.groupby(files, lambda m: os.path.splitext(m.name)[0]):
                name, members = f"{path}:{key}", {os.path.splitext(m.name)[1].lower(): m for m in members}
                image = next((members[s] for s in IMAGE_SUFFIXES if s in members), None)
                if image is None or ".txt" not in members:
                    yield name, None, None, f"no {'picture' if image is None else 'caption'}"
                    continue
                caption, why = _caption(tar.extractfile(members[".txt"]).read())
                picture = None
                if pictures and not why:
                    picture = io.BytesIO(tar.extractfile(image).read())
                    picture.name = os.path.basename(image.name)  # for load_image's errors
                yield name, picture, caption, why
    except (tarfile.TarError, OSError) as e:  # a short read raises ReadError, so does a file that is no tar
        why = str(e).splitlines()[-1].strip(" -")  # tarfile lists each compression it tried: the last is plain tar
        yield str(path), None, None, f"truncated or broken tar ({type(e).__name__}: {why}), the rest of it skipped"


def picture_files(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_pairs(paths, pictures=True):
    """The same for picture files, each with its caption beside it (a.jpg + a.txt: img2dataset's files layout)."""
    for path in paths:
        text = path.with_suffix(".txt")
        caption, why = _caption(text.read_bytes()) if text.exists() else (None, "no caption")
        yield str(path), path if pictures and not why else None, caption, why


def expand(pattern):
    """Brace ranges as WebDataset writes them: 'a/{000..002}.tar' -> ['a/000.tar', 'a/001.tar', 'a/002.tar']."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    head, tail, first = pattern[:m.start()], pattern[m.end():], m.group(1)
    return [p for i in range(int(first), int(m.group(2)) + 1) for p in expand(f"{head}{i:0{len(first)}d}{tail}")]


def input_files(source, shard_size):
    """source: a folder, a .tar, or comma-separated .tar globs / brace patterns -> its input files, in order:
    ("tar", path) per .tar, or ("folder", paths) per shard_size pictures of a folder."""
    paths = []
    for pattern in (p for part in source.split(",") if part for p in expand(part)):
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern] * os.path.exists(pattern)
        if not found:
            raise FileNotFoundError(f"no data at {pattern}: give a folder of pictures with .txt captions, .tar "
                                    "shards, or a pattern such as 'dump/{00000..00099}.tar'")
        paths += [Path(p) for p in found]
    if len(paths) == 1 and paths[0].is_dir():
        tars, pictures = sorted(paths[0].rglob("*.tar")), picture_files(paths[0])
        if tars:
            return [("tar", t) for t in tars]
        if not pictures:
            raise ValueError(f"no pictures or .tar shards in {paths[0]}")
        return [("folder", pictures[i:i + shard_size]) for i in range(0, len(pictures), shard_size)]
    return [("tar", p) for p in paths]


def pairs(file, pictures=True):
    """The (name, picture, caption, why) of every pair of an input file of input_files, in order."""
    kind, path = file
    return tar_pairs(path, pictures) if kind == "tar" else folder_pairs(path, pictures)


def describe(file):
    kind, path = file
    return str(path) if kind == "tar" else f"{path[0]} .. {path[-1]} ({len(path)} pictures)"


def is_held_out(name, share=HELD_OUT):
    """Whether a pair is in the held-out slice: a hash of its key (a .tar member's, or a picture's file name
    without folder and suffix), so every host, run and copy of the data agrees, and the slice is spread over it."""
    key = name.rsplit(":", 1)[1] if ":" in name else Path(name).stem  # tar_pairs names pairs "path:key"
    return zlib.crc32(key.encode()) < share * 2 ** 32


def decode_pair(name, picture, caption, why, size):
    """One pair -> (picture uint8 (size, size, 3), caption, "") or (None, None, "name: why") to skip it."""
    if why:
        return None, None, f"{name}: {why}"
    try:
        return load_image(picture, size), caption, ""
    except ValueError as e:
        return None, None, f"{name}: {e}"


def no_pairs_error(source, skipped):
    """The one-line error for a source none of whose pictures can be used, from the reasons they were skipped."""
    if skipped and all(why.endswith(": no caption") for why in skipped):
        return ValueError(f"no picture in {source} has a caption: pictures need a caption file a.txt beside a.jpg")
    return ValueError(f"no readable image-caption pairs in {source}: {len(skipped)} pictures could not be read"
                      + (f" (first: {skipped[0]})" if skipped else ""))


def text_lines(path):
    """Unpaired text, streamed: one document per non-empty line, from a .txt file or a folder of them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no text at {path}: give a .txt file or a folder of them")
    for file in [path] if path.is_file() else sorted(path.rglob("*.txt")):
        with open(file, encoding="utf-8", errors="replace") as f:
            yield from (line.strip() for line in f if line.strip())


# ----------------------------------------------------------------------------------------------
# Many rows through one jitted function (encoding pictures, decoding, probing, evaluating)


def in_batches(f, x, size, *, key):
    """f(chunk, key) over x (n, ...) in chunks of `size` rows, the last one padded to the same size so
    that f compiles once and memory stays bounded; each chunk gets its own key -> numpy (n, ...)."""
    x, size = np.asarray(x), min(size, len(x))
    keys = jax.random.split(key, -(-len(x) // size))
    out = []
    starts = tqdm(range(0, len(x), size), desc="in batches", leave=False, disable=len(keys) == 1)
    for start, chunk_key in zip(starts, keys):
        chunk = x[start:start + size]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
        out.append(np.asarray(f(jnp.asarray(padded), chunk_key))[:len(chunk)])
    return np.concatenate(out)
