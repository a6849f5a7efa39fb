"""Data for upgen: image-text files on disk, text corpora, the text tokenizer, checkpoint files.

The built-in shapes world lives in shapes.py. Read next: vqgan.py (pictures -> tokens), then upgen.py.
"""

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import numpy as np
from PIL import Image

# ----------------------------------------------------------------------------------------------
# Image-text files on disk

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def load_image(file, size):
    """An image file (path or file object) -> uint8 (size, size, 3): centre square crop, then resize."""
    name = getattr(file, "name", file)
    try:
        with Image.open(file) as opened:
            picture = opened.convert("RGB")
    except Exception as e:  # pillow raises many kinds of errors on broken files
        raise ValueError(f"cannot read image {name}: {type(e).__name__}") from None
    w, h = picture.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return np.asarray(picture.resize((size, size), Image.Resampling.BICUBIC, box=box))


def _pairs_in_tar(tar_path):
    """(key, image file object, caption) for each WebDataset sample: members key.jpg + key.txt."""
    with tarfile.open(tar_path) as tar:
        members = {}
        for member in tar.getmembers():
            if member.isfile():
                key, suffix = os.path.splitext(member.name)
                members.setdefault(key, {})[suffix.lower()] = member
        for key in sorted(members):
            files = members[key]
            image = next((files[s] for s in IMAGE_SUFFIXES if s in files), None)
            caption = tar.extractfile(files[".txt"]).read().decode("utf-8", "replace") if ".txt" in files else None
            yield f"{tar_path}:{key}", image and io.BytesIO(tar.extractfile(image).read()), caption


def _pairs_in_folder(folder):
    for path in sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        text = path.with_suffix(".txt")
        yield str(path), path, text.read_text("utf-8", "replace") if text.exists() else None


def image_text_pairs(path, image_size):
    """Image-caption pairs from a folder (a.jpg + a.txt, img2dataset's layout), a WebDataset .tar shard
    or a folder of shards -> (images uint8 (n, S, S, 3), captions, skipped "name: why" strings)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no data at {path}: give a folder of images with .txt captions or .tar shards")
    shards = [path] if path.is_file() else sorted(path.rglob("*.tar"))
    sources = [_pairs_in_tar(s) for s in shards] if shards else [_pairs_in_folder(path)]
    images, captions, skipped = [], [], []
    for source in sources:
        for name, file, caption in source:
            if file is None or caption is None:
                skipped.append(f"{name}: no {'image' if file is None else 'caption'}")
                continue
            try:
                images.append(load_image(file, image_size))
                captions.append(caption.strip())
            except ValueError as e:
                skipped.append(f"{name}: {e}")
    if not images:
        raise ValueError(f"no readable image-caption pairs in {path} ({len(skipped)} skipped)")
    return np.stack(images), captions, skipped


def text_lines(path):
    """Unpaired text: one document per non-empty line, from a .txt file or a folder of them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no text at {path}: give a .txt file or a folder of them")
    files = [path] if path.is_file() else sorted(path.rglob("*.txt"))
    lines = [line.strip() for f in files for line in f.read_text("utf-8", "replace").splitlines()]
    return [line for line in lines if line]


# ----------------------------------------------------------------------------------------------
# The text tokenizer
#
# Words, with a byte fallback. A word vocabulary built from the training text keeps captions short
# (8-12 tokens for the shapes world instead of ~40 bytes), so the model fills few text slots when it
# writes a caption; any word not in the vocabulary is spelled out in UTF-8 bytes, so every string
# encodes, nothing needs downloading, and decoding gives back readable text. The vocabulary is saved
# in the checkpoint header with the model.

PAD, MASK = 0, 1
N_SPECIAL, N_BYTES = 2, 256
WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Tokenizer:
    words: tuple[str, ...]  # the word vocabulary; ids N_SPECIAL + N_BYTES + i
    length: int = 16  # every text is truncated or padded with PAD to this many tokens
    caption_lengths: tuple[int, ...] = ()  # training captions of 1, 2, ..., length tokens: how many of each.
    #                                        Captioning needs it (sample.write_text); () = unknown

    @property
    def vocab_size(self):
        return N_SPECIAL + N_BYTES + len(self.words)

    def encode(self, text):
        """str -> int32 (length,): lower-cased words; unknown words as bytes; then PAD."""
        index = {w: N_SPECIAL + N_BYTES + i for i, w in enumerate(self.words)}
        ids = []
        for word in WORD.findall(text.lower()):
            if word in index:
                ids.append(index[word])
            else:  # the space goes with the bytes, so that decoding keeps unknown words apart
                ids.extend(N_SPECIAL + b for b in (" " + word).encode("utf-8"))
        ids = ids[: self.length]
        return np.array(ids + [PAD] * (self.length - len(ids)), np.int32)

    def decode(self, ids):
        """int ids -> str; PAD and MASK are dropped."""
        out = bytearray()
        for i in (int(i) for i in ids):
            if i >= N_SPECIAL + N_BYTES and i < self.vocab_size:
                out += (" " + self.words[i - N_SPECIAL - N_BYTES]).encode("utf-8")
            elif i >= N_SPECIAL and i < N_SPECIAL + N_BYTES:
                out.append(i - N_SPECIAL)
        return out.decode("utf-8", "replace").strip()


def build_tokenizer(texts, length=16, max_words=8192):
    """The max_words most frequent words of texts (ties in first-seen order) as a Tokenizer."""
    counts = {}
    for text in texts:
        for word in WORD.findall(text.lower()):
            counts[word] = counts.get(word, 0) + 1
    words = sorted(counts, key=lambda w: -counts[w])[:max_words]
    return Tokenizer(tuple(words), length)


def tokenizer_from_header(fields: dict) -> Tokenizer:
    """The Tokenizer saved in a checkpoint header (JSON turns its tuples into lists)."""
    return Tokenizer(tuple(fields["words"]), fields["length"], tuple(fields.get("caption_lengths", ())))


# ----------------------------------------------------------------------------------------------
# Checkpoint files: one JSON header line (configs, step, tokenizer), then the arrays written by
# eqx.tree_serialise_leaves. Loading rebuilds the tree's skeleton from the header, then fills it.


def save_checkpoint(path, header, tree):
    """Write atomically: a crash mid-write leaves the previous file at path untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write((json.dumps(header) + "\n").encode())
        eqx.tree_serialise_leaves(f, tree)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_header(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        try:
            return json.loads(f.readline())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} is not an upgen checkpoint (its first line is no JSON header)") from None


def load_checkpoint(path, skeleton):
    """-> (header, tree), where skeleton(header) builds a tree of the right structure to fill."""
    header = read_header(path)
    with open(path, "rb") as f:
        f.readline()
        try:
            tree = eqx.tree_deserialise_leaves(f, skeleton(header))
        except Exception as e:  # numpy/equinox raise EOFError, ValueError, ... on broken files
            raise ValueError(f"{path} is truncated or does not match its header ({type(e).__name__}: {e})"[:300]) from None
        if f.read(1):
            raise ValueError(f"{path} is longer than its header says: not a checkpoint of this model")
    return header, tree
