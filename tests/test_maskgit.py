"""MaskGIT's released tokenizer read exactly: a checkpoint the test writes in its format gives MaskGIT's outputs."""
import dataclasses
import math
import struct

import equinox as eqx
import jax
import numpy as np
import pytest

import maskgit
import vqgan

SMALL = vqgan.VQGANConfig(image_size=16, filters=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                          embedding_dim=4, codebook_size=16, norm_groups=4,
                          final_norm=True)

# ----------------------------------------------------------------------------------------------
# MaskGIT's tokenizer in plain numpy, written from maskgit/nets/vqgan_tokenizer.py and nets/layers.py
# (channels last, as Flax). Given rng and empty scopes it creates each parameter where Flax's compact
# modules would (children named Type_i in creation order), which gives the checkpoint layout.

class Scope:
    def __init__(self, params, rng):
        self.params, self.rng, self.counts = params, rng, {}

    def child(self, kind):  # the next submodule of this type: Conv_0, Conv_1, ...
        i = self.counts.get(kind, 0)
        self.counts[kind] = i + 1
        return Scope(self.params.setdefault(f"{kind}_{i}", {}), self.rng)

    def param(self, name, shape, scale, offset=0.0):
        if name not in self.params:
            self.params[name] = (offset + scale * self.rng.standard_normal(shape)).astype(np.float32)
        return self.params[name]


def ref_conv(scope, x, features, size, bias=True):  # nn.Conv, padding SAME, stride 1; x (H, W, C)
    s = scope.child("Conv")
    kernel = s.param("kernel", (size, size, x.shape[-1], features), 1 / math.sqrt(size * size * x.shape[-1]))
    pad = size // 2
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[:2]
    out = sum(xp[i:i + h, j:j + w] @ kernel[i, j] for i in range(size) for j in range(size))
    return out + s.param("bias", (features,), 0.1) if bias else out


def ref_groupnorm(scope, x, groups):  # nn.GroupNorm: epsilon 1e-6, scale and bias
    s = scope.child("GroupNorm")
    h, w, c = x.shape
    g = x.reshape(h, w, groups, c // groups)
    g = (g - g.mean((0, 1, 3), keepdims=True)) / np.sqrt(g.var((0, 1, 3), keepdims=True) + 1e-6)
    return g.reshape(h, w, c) * s.param("scale", (c,), 0.1, 1.0) + s.param("bias", (c,), 0.1)


def swish(x):
    return x / (1 + np.exp(-x))


def ref_resblock(scope, x, filters, groups):
    s = scope.child("ResBlock")
    residual = x
    h = ref_conv(s, swish(ref_groupnorm(s, x, groups)), filters, 3, bias=False)
    h = ref_conv(s, swish(ref_groupnorm(s, h, groups)), filters, 3, bias=False)
    if x.shape[-1] != filters:
        residual = ref_conv(s, h, filters, 1, bias=False)  # MaskGIT applies the shortcut conv to h
    return h + residual


def ref_encoder(scope, x, cfg):
    x = ref_conv(scope, x, cfg.filters, 3, bias=False)
    for i, m in enumerate(cfg.channel_multipliers):
        for _ in range(cfg.num_res_blocks):
            x = ref_resblock(scope, x, cfg.filters * m, cfg.norm_groups)
        if i < len(cfg.channel_multipliers) - 1:  # TF-style 2x2 average pooling
            x = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, -1).mean((1, 3))
    for _ in range(cfg.num_res_blocks):
        x = ref_resblock(scope, x, cfg.filters * cfg.channel_multipliers[-1], cfg.norm_groups)
    return ref_conv(scope, swish(ref_groupnorm(scope, x, cfg.norm_groups)), cfg.embedding_dim, 1)


def ref_decoder(scope, x, cfg):
    filters = cfg.filters * cfg.channel_multipliers[-1]
    x = ref_conv(scope, x, filters, 3)
    for _ in range(cfg.num_res_blocks):
        x = ref_resblock(scope, x, filters, cfg.norm_groups)
    for i in reversed(range(len(cfg.channel_multipliers))):
        filters = cfg.filters * cfg.channel_multipliers[i]
        for _ in range(cfg.num_res_blocks):
            x = ref_resblock(scope, x, filters, cfg.norm_groups)
        if i > 0:  # nearest-neighbour upsampling, then a conv
            x = ref_conv(scope, x.repeat(2, axis=0).repeat(2, axis=1), filters, 3)
    return ref_conv(scope, swish(ref_groupnorm(scope, x, cfg.norm_groups)), 3, 3)


def maskgit_reference(params, image, cfg, rng):
    """image (H, W, 3) in [0, 1] -> (latents (h, w, D), ids (h, w), reconstruction (H, W, 3)); fills params."""
    z = ref_encoder(Scope(params.setdefault("encoder", {}), rng), image, cfg)
    codebook = Scope(params.setdefault("quantizer", {}), rng).param(
        "codebook", (cfg.codebook_size, cfg.embedding_dim), 1.0)
    ids = (((z[:, :, None] - codebook) ** 2).sum(-1)).argmin(-1)
    return z, ids, ref_decoder(Scope(params.setdefault("decoder", {}), rng), codebook[ids], cfg)


# ----------------------------------------------------------------------------------------------
# msgpack exactly as flax.serialization.msgpack_serialize writes it (msgpack-python, use_bin_type):
# the smallest encoding of each value, arrays as extension 1 holding [shape, dtype name, bytes].

def pack(obj):
    def sized(n, small_tag, small_max, tags):  # header for a str, bin or ext of length n
        if n <= small_max:
            return bytes([small_tag | n])
        for tag, width in zip(tags, (1, 2, 4)):
            if n < 256 ** width:
                return bytes([tag]) + n.to_bytes(width, "big")
        raise ValueError(n)

    def container(n, fix, tag16, tag32):
        return bytes([fix | n]) if n <= 15 else bytes([tag16]) + n.to_bytes(2, "big") if n < 65536 else \
            bytes([tag32]) + n.to_bytes(4, "big")

    if isinstance(obj, dict):
        return container(len(obj), 0x80, 0xDE, 0xDF) + b"".join(pack(k) + pack(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return container(len(obj), 0x90, 0xDC, 0xDD) + b"".join(pack(v) for v in obj)
    if isinstance(obj, str):
        b = obj.encode()
        return sized(len(b), 0xA0, 31, (0xD9, 0xDA, 0xDB)) + b
    if isinstance(obj, bytes):
        return sized(len(obj), 0, -1, (0xC4, 0xC5, 0xC6)) + obj
    if isinstance(obj, bool) or obj is None:
        return {None: b"\xc0", False: b"\xc2", True: b"\xc3"}[obj]
    if isinstance(obj, int):
        if 0 <= obj < 128 or -32 <= obj < 0:
            return bytes([obj & 0xFF])
        for i, fmt in enumerate("BHIQ" if obj >= 0 else "bhiq"):
            try:
                return bytes([(0xCC if obj >= 0 else 0xD0) + i]) + struct.pack(">" + fmt, obj)
            except struct.error:
                continue
    if isinstance(obj, float):
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, np.ndarray):
        payload = pack([list(obj.shape), obj.dtype.name, obj.tobytes("C")])
        n = len(payload)
        fixext = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
        head = bytes([fixext[n]]) if n in fixext else sized(n, 0, -1, (0xC7, 0xC8, 0xC9))
        return head + b"\x01" + payload
    raise TypeError(type(obj))


def write_maskgit_checkpoint(path, cfg, seed=0):
    """A MaskGIT-layout Flax checkpoint with random weights at path -> (params, image, reference outputs)."""
    rng = np.random.default_rng(seed)
    params = {}
    image = rng.uniform(size=(cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    outputs = maskgit_reference(params, image, cfg, rng)
    path.write_bytes(pack({"params": params}))
    return params, image, outputs


def flat_shapes(tree, prefix=""):
    if isinstance(tree, np.ndarray):
        return {prefix[:-1]: tree.shape}
    return {k: v for key, sub in tree.items() for k, v in flat_shapes(sub, f"{prefix}{key}/").items()}


# ----------------------------------------------------------------------------------------------

def test_msgpack_reader_decodes_the_standard_encodings():
    assert maskgit.read_msgpack(b"\x82\xa1a\x01\xa1b\x93\xcd\x01\x00\xd0\xff\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00") == \
        {"a": 1, "b": [256, -1, 1.5]}
    values = {"s" * 40: "t" * 300, "ints": [127, -32, 255, -128, 65535, -40000, 2 ** 40, -(2 ** 40)],
              "big": {str(i): i for i in range(20)}, "raw": b"x" * 70000, "list": list(range(20)),
              "flags": [True, False, None]}
    assert maskgit.read_msgpack(pack(values)) == values
    for array in (np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros((0,), np.int32), np.full((), 2.5)):
        back = maskgit.read_msgpack(pack(array))
        assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)


def test_maskgit_imagenet_config_has_the_released_tokenizers_parameters():
    # the layout MaskGIT's Flax code creates, traced at 16x16 (parameter shapes do not depend on image size)
    cfg = vqgan.MASKGIT_IMAGENET
    params = {}
    maskgit_reference(params, np.zeros((16, 16, 3), np.float32), dataclasses.replace(cfg, image_size=16),
                      np.random.default_rng(0))
    expected = flat_shapes(params)
    model = eqx.filter_eval_shape(vqgan.VQGAN, cfg, key=jax.random.key(0))
    ours = {name: maskgit._flax_shape(name, a) for name, a in maskgit.maskgit_names(model).items()}
    assert ours == expected
    assert len(expected) == 168
    assert vqgan.parameter_count(model) == sum(math.prod(s) for s in expected.values())
    assert 54.4e6 < vqgan.parameter_count(model) < 54.6e6
    # Flax's nn.GroupNorm, which MaskGIT uses with its defaults, normalises 32 groups of channels
    norms = [x for x in jax.tree.leaves(model, is_leaf=lambda x: isinstance(x, eqx.nn.GroupNorm))
             if isinstance(x, eqx.nn.GroupNorm)]
    assert len(norms) > 20 and {n.groups for n in norms} == {32}


def test_load_maskgit_gives_maskgits_outputs(tmp_path):
    path = tmp_path / "tokenizer_checkpoint"
    params, image, (z, ids, recon) = write_maskgit_checkpoint(path, SMALL)
    model = maskgit.load_maskgit(path, SMALL)
    # one conv, checked against a direct numpy convolution with the stored kernel
    kernel = params["encoder"]["Conv_0"]["kernel"]  # (3, 3, 3, filters)
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    direct = np.einsum("hwijc,ijco->hwo", np.lib.stride_tricks.sliding_window_view(padded, (3, 3), (0, 1))
                       .transpose(0, 1, 3, 4, 2), kernel)
    ours = model.encoder.conv_in(image.transpose(2, 0, 1))
    np.testing.assert_allclose(np.asarray(ours).transpose(1, 2, 0), direct, atol=1e-5)
    np.testing.assert_array_equal(model.quantizer.codebook, params["quantizer"]["codebook"])
    np.testing.assert_array_equal(model.decoder.norm_out.weight, params["decoder"]["GroupNorm_0"]["scale"])
    # the whole tokenizer: latents, token ids and decoded picture agree with the numpy MaskGIT
    ours_z, ours_ids, ours_recon = eqx.filter_jit(
        lambda m, x: (m.encoder(x), m.encode(x), m.decode(ids)))(model, image.transpose(2, 0, 1))
    np.testing.assert_allclose(np.asarray(ours_z).transpose(1, 2, 0), z, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ours_ids, ids)
    np.testing.assert_allclose(np.asarray(ours_recon).transpose(1, 2, 0), recon, rtol=1e-4, atol=1e-4)


def one_line_error(excinfo, *words):
    text = str(excinfo.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_bad_maskgit_checkpoints_fail_with_one_line(tmp_path):
    path = tmp_path / "ckpt"
    params, _, _ = write_maskgit_checkpoint(path, SMALL)
    with pytest.raises(OSError):
        maskgit.load_maskgit(tmp_path / "missing", SMALL)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError) as e:
        maskgit.load_maskgit(path, SMALL)
    one_line_error(e, "truncated")
    write_maskgit_checkpoint(path, SMALL)
    with pytest.raises(ValueError) as e:  # a checkpoint of another size
        maskgit.load_maskgit(path, dataclasses.replace(SMALL, num_res_blocks=2))
    one_line_error(e, "missing", "ResBlock")
    params["quantizer"]["codebook"] = params["quantizer"]["codebook"][:, :2]
    path.write_bytes(pack({"params": params}))
    with pytest.raises(ValueError) as e:
        maskgit.load_maskgit(path, SMALL)
    one_line_error(e, "quantizer/codebook", "(16, 2)")
