"""Checkpoint files: one JSON header line, then the arrays written by eqx.tree_serialise_leaves; loading rebuilds
the tree's skeleton from the header, then fills it. Every file is written atomically (so are token shards).

One header layout for every file: each config under the name of its file, {"vqgan": VQGANConfig} in vqgan.eqx,
{"upgen": UPGenConfig, "tokenizer": Tokenizer} in upgen.eqx, and a train state adds {"train", "run", "step"}.
A file's kind is the key its loader asks for.
"""
import errno
import json
import os
import socket
from pathlib import Path

import equinox as eqx

def write_atomically(path, write):
    """write(file object) into path, all or nothing: a crash or a full disk mid-write leaves what was at path.

    The temporary name is this process's own, so hosts sharing a folder never write into each other's file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        hint = ": the disk is full; free space and rerun to continue" if e.errno == errno.ENOSPC else ""
        raise OSError(e.errno, f"writing {path} failed ({e.strerror or e}){hint}") from None


def save_checkpoint(path, header, tree):
    """Atomically (write_atomically): a crash mid-write leaves the previous file at path untouched."""
    def write(f):
        f.write((json.dumps(header) + "\n").encode())
        eqx.tree_serialise_leaves(f, tree)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, write)


def read_header(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        try:
            return json.loads(f.readline())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} is not an upgen checkpoint (its first line is no JSON header)") from None


def load_checkpoint(path, kind, skeleton):
    """-> (header, tree) of a file whose header holds kind, where skeleton(header) builds a tree of the right
    structure to fill."""
    header = read_header(path)
    if kind not in header:
        raise ValueError(f"{path} is no {kind} checkpoint (its header holds {', '.join(header) or 'nothing'})")
    with open(path, "rb") as f:
        f.readline()
        try:
            tree = eqx.tree_deserialise_leaves(f, skeleton(header))
        except Exception as e:  # numpy/equinox raise EOFError, ValueError, ... on broken files
            why = f"{path} is truncated or does not match its header ({type(e).__name__}: {e})"
            raise ValueError(why[:300]) from None
        if f.read(1):
            raise ValueError(f"{path} is longer than its header says: not a checkpoint of this model")
    return header, tree
