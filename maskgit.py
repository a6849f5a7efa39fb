"""MaskGIT's released image tokenizer read into vqgan.VQGAN: its checkpoint is flax.serialization's msgpack of
{'params': ...}. A msgpack reader of our own keeps msgpack off the dependency list; maskgit_names maps Flax's
names onto the VQGAN's arrays, and every name and shape is checked.

    python maskgit.py --maskgit-count     # the 256x256 config's size vs MaskGIT's checkpoint
    python maskgit.py --from-maskgit tokenizer_imagenet256_checkpoint --out imagenet_vqgan.eqx   # convert
Read next: vqgan_train.py.
"""
import argparse
import math
import struct
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import vqgan

def read_msgpack(buf):
    """Decode msgpack bytes (the subset Flax writes) into dicts, lists, str, numbers and numpy arrays.

    Flax stores each array as extension type 1 (3 for a numpy scalar) whose payload is itself
    msgpack: [shape, dtype name, raw C-order bytes].
    """
    view, pos = memoryview(buf), 0

    def take(n):
        nonlocal pos
        if pos + n > len(view):
            raise ValueError("the file is truncated")
        pos += n
        return view[pos - n:pos]

    def uint(n):
        return int.from_bytes(take(n), "big")

    def extension(code, payload):
        if code not in (1, 3):
            raise ValueError(f"unknown msgpack extension type {code}")
        shape, dtype, raw = read_msgpack(payload)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()

    def item():
        b = uint(1)
        if b <= 0x7F or b >= 0xE0:  # positive / negative fixint
            return b if b <= 0x7F else b - 0x100
        if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):  # map
            n = b & 0x0F if b <= 0x8F else uint(2 if b == 0xDE else 4)
            return {item(): item() for _ in range(n)}
        if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):  # array
            n = b & 0x0F if b <= 0x9F else uint(2 if b == 0xDC else 4)
            return [item() for _ in range(n)]
        if 0xA0 <= b <= 0xBF or 0xD9 <= b <= 0xDB:  # str
            n = b & 0x1F if b <= 0xBF else uint(1 << (b - 0xD9))
            return str(take(n), "utf-8")
        if b in (0xC0, 0xC2, 0xC3):
            return {0xC0: None, 0xC2: False, 0xC3: True}[b]
        if 0xC4 <= b <= 0xC6:  # bin 8/16/32
            return bytes(take(uint(1 << (b - 0xC4))))
        if 0xC7 <= b <= 0xC9:  # ext 8/16/32
            n = uint(1 << (b - 0xC7))
            code = uint(1)
            return extension(code, take(n))
        if 0xD4 <= b <= 0xD8:  # fixext 1/2/4/8/16
            code = uint(1)
            return extension(code, take(1 << (b - 0xD4)))
        if b in (0xCA, 0xCB):
            return struct.unpack(">f" if b == 0xCA else ">d", take(4 if b == 0xCA else 8))[0]
        if 0xCC <= b <= 0xD3:  # uint / int 8..64
            n = 1 << ((b - 0xCC) % 4)
            return int.from_bytes(take(n), "big", signed=b >= 0xD0)
        raise ValueError(f"byte 0x{b:02x} at offset {pos - 1} is not msgpack")

    value = item()
    if pos != len(view):
        raise ValueError(f"{len(view) - pos} bytes follow the msgpack data")
    return value


def maskgit_names(vq):
    """{name in MaskGIT's Flax checkpoint: the array of vq it becomes}, e.g. 'encoder/ResBlock_3/Conv_1/kernel'.

    Flax names a module's children by type and creation order: Conv_0, Conv_1, ..., ResBlock_0, ...
    """
    names = {"quantizer/codebook": vq.quantizer.codebook}

    def conv_(name, c):
        names[f"{name}/kernel"] = c.weight
        if c.bias is not None:
            names[f"{name}/bias"] = c.bias

    def norm_(name, n):
        names[f"{name}/scale"], names[f"{name}/bias"] = n.weight, n.bias

    def blocks(prefix, blocks):
        for i, b in enumerate(blocks):
            norm_(f"{prefix}/ResBlock_{i}/GroupNorm_0", b.norm1)
            conv_(f"{prefix}/ResBlock_{i}/Conv_0", b.conv1)
            norm_(f"{prefix}/ResBlock_{i}/GroupNorm_1", b.norm2)
            conv_(f"{prefix}/ResBlock_{i}/Conv_1", b.conv2)
            if b.shortcut is not None:
                conv_(f"{prefix}/ResBlock_{i}/Conv_2", b.shortcut)

    enc, dec, cfg = vq.encoder, vq.decoder, vq.cfg
    conv_("encoder/Conv_0", enc.conv_in)
    blocks("encoder", [b for level in enc.levels for b in level] + list(enc.middle))
    if cfg.final_norm:
        norm_("encoder/GroupNorm_0", enc.norm_out)
    conv_("encoder/Conv_1", enc.conv_out)
    conv_("decoder/Conv_0", dec.conv_in)
    blocks("decoder", list(dec.middle) + [b for level in dec.levels for b in level])
    for i, c in enumerate(dec.upsample_convs):
        conv_(f"decoder/Conv_{i + 1}", c)
    if cfg.final_norm:
        norm_("decoder/GroupNorm_0", dec.norm_out)
    conv_(f"decoder/Conv_{len(dec.upsample_convs) + 1}", dec.conv_out)
    return names


def _flax_shape(name, array):  # Flax keeps conv kernels as (kh, kw, in, out) and conv biases as (out,)
    if name.endswith("kernel"):
        return array.shape[2:] + array.shape[1::-1]
    return array.shape[:1] if array.ndim == 3 else array.shape


def _flatten(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}/").items()}


def load_maskgit(path, cfg=vqgan.MASKGIT_IMAGENET):
    """MaskGIT's released tokenizer checkpoint (flax.serialization bytes of {'params': ...}) -> VQGAN."""
    try:
        with open(path, "rb") as f:
            tree = read_msgpack(f.read())
    except ValueError as e:
        raise ValueError(f"{path} is not a MaskGIT checkpoint: {e}") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("params"), dict):
        raise ValueError(f"{path} is not a MaskGIT checkpoint: it holds no 'params' dictionary")
    stored = _flatten(tree["params"])
    vq = eqx.filter_eval_shape(vqgan.VQGAN, cfg, key=jax.random.key(0))  # shapes only; the file fills it
    names = maskgit_names(vq)
    missing, unexpected = names.keys() - stored.keys(), stored.keys() - names.keys()
    if missing or unexpected:
        raise ValueError(f"{path} does not match {cfg}: missing {sorted(missing)[:3]} ({len(missing)} in all), "
                         f"unexpected {sorted(unexpected)[:3]} ({len(unexpected)} in all)")
    arrays = []
    for name, ours in names.items():
        theirs = stored[name]
        if not isinstance(theirs, np.ndarray) or theirs.shape != _flax_shape(name, ours):
            raise ValueError(f"{path}: {name} has shape {getattr(theirs, 'shape', type(theirs).__name__)}, "
                             f"expected {_flax_shape(name, ours)} for {cfg}")
        theirs = theirs.astype(np.float32)
        arrays.append(theirs.transpose(3, 2, 0, 1) if name.endswith("kernel") else theirs.reshape(ours.shape))
    return eqx.tree_at(lambda m: list(maskgit_names(m).values()), vq, [jnp.asarray(a) for a in arrays])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    todo = parser.add_mutually_exclusive_group(required=True)
    todo.add_argument("--maskgit-count", action="store_true",
                      help="print the 256x256 config's parameter count and the arrays the MaskGIT loader expects")
    todo.add_argument("--from-maskgit", metavar="PATH",
                      help="convert MaskGIT's tokenizer_imagenet256_checkpoint at PATH into an .eqx at --out")
    parser.add_argument("--out", default="imagenet_vqgan.eqx", help="where --from-maskgit writes the tokenizer")
    args = parser.parse_args()
    if args.maskgit_count:
        vq = eqx.filter_eval_shape(vqgan.VQGAN, vqgan.MASKGIT_IMAGENET, key=jax.random.key(0))
        names = maskgit_names(vq)
        print(f"MASKGIT_IMAGENET: {vqgan.parameter_count(vq):,} parameters in {len(names)} arrays; the loader "
              f"expects {len(names)} arrays holding {sum(math.prod(a.shape) for a in names.values()):,}")
        return
    try:
        vqgan.save_vqgan(args.out, load_maskgit(args.from_maskgit))
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
