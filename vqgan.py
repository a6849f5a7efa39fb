"""The image tokenizer: MaskGIT's ConvNet VQGAN in Equinox, pictures -> tokens -> pictures.

A picture goes through a convolutional encoder, each latent vector is replaced by the index of its
nearest codebook vector (its token), and a convolutional decoder turns the codes back into a picture.
    vq = vqgan.load_vqgan("checkpoints/shapes/vqgan.eqx")
    ids = vqgan.encode_images(vq, pictures)  # uint8 (B, 64, 64, 3) -> int32 (B, 64)
    pictures = vqgan.decode_tokens(vq, ids)
MaskGIT's released ImageNet tokenizer is read into the same VQGAN by maskgit.py; a small one is trained by
vqgan_train.py. Read next: upgen.py, the transformer that models these tokens.
"""
import dataclasses
import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import checkpoint
import config
import data


@dataclass(frozen=True)
class VQGANConfig:
    image_size: int = 64  # pictures are image_size x image_size RGB, values in [0, 1]
    filters: int = 12  # channels of the first level; level i has filters * channel_multipliers[i]
    # one level each; the image halves between levels. One width throughout, because a ResBlock that changes
    # width has no residual path (MaskGIT's quirk below), which slows training
    channel_multipliers: tuple[int, ...] = (1, 1, 1, 1)
    num_res_blocks: int = 1  # residual blocks per level (and in the middle)
    embedding_dim: int = 16  # size of a latent vector and of a codebook entry
    codebook_size: int = 512  # number of distinct image tokens
    norm_groups: int = 2  # GroupNorm groups; MaskGIT keeps Flax's 32. With one channel per group GroupNorm
    #                       erases each channel's mean, so small widths need several channels per group
    # GroupNorm before the encoder's and the decoder's last conv, as MaskGIT. It erases a picture's overall
    # brightness, so a shapes tokenizer with it cannot say how light the background is
    final_norm: bool = False

    def __post_init__(self):
        config.check(self, [("image_size", self.image_size % self.downsampling == 0,
                             f"is not divisible by the {self.downsampling} pixels of a token")])

    @property
    def downsampling(self):  # pixels per token along each side
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def tokens_per_side(self):
        return self.image_size // self.downsampling


# MaskGIT's ImageNet tokenizer (maskgit/configs/vqgan_config.py): 256x256 -> 16x16 tokens, ~54.5M parameters.
MASKGIT_IMAGENET = VQGANConfig(image_size=256, filters=128, channel_multipliers=(1, 1, 2, 2, 4),
                               num_res_blocks=2, embedding_dim=256, codebook_size=1024, norm_groups=32,
                               final_norm=True)


# ----------------------------------------------------------------------------------------------
# The model. Every module works on one example, channels first: (C, H, W).

def conv(cin, cout, size, *, key, bias=True):
    """Flax's nn.Conv with padding 'SAME' for odd kernels, stride 1."""
    return eqx.nn.Conv2d(cin, cout, size, padding=size // 2, use_bias=bias, key=key)


def norm(cfg, channels):
    return eqx.nn.GroupNorm(cfg.norm_groups, channels, eps=1e-6)  # Flax GroupNorm's epsilon


def final_norm(cfg, channels):  # the norm before the encoder's and the decoder's last conv, if cfg keeps it
    return norm(cfg, channels) if cfg.final_norm else eqx.nn.Identity()


def downsample(x):  # (C, H, W) -> (C, H/2, W/2); MaskGIT's TF-style 2x2 average pool, H and W even
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def upsample(x):  # (C, H, W) -> (C, 2H, 2W), nearest neighbour as jax.image.resize(method="nearest")
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(eqx.Module):
    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    shortcut: eqx.nn.Conv2d | None  # 1x1, only where the channel count changes

    def __init__(self, cfg, cin, cout, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1, self.conv1 = norm(cfg, cin), conv(cin, cout, 3, key=k1, bias=False)
        self.norm2, self.conv2 = norm(cfg, cout), conv(cout, cout, 3, key=k2, bias=False)
        self.shortcut = conv(cout, cout, 1, key=k3, bias=False) if cin != cout else None

    def __call__(self, x):  # (cin, H, W) -> (cout, H, W)
        h = self.conv1(jax.nn.swish(self.norm1(x)))
        h = self.conv2(jax.nn.swish(self.norm2(h)))
        # MaskGIT's quirk, kept so its weights give its outputs: where the width changes, the
        # "shortcut" projects the block's own output h, so the input x never reaches the output.
        return h + (x if self.shortcut is None else self.shortcut(h))


def res_blocks(cfg, cin, cout, *, key):
    keys = jax.random.split(key, cfg.num_res_blocks)
    return tuple(ResBlock(cfg, cin if i == 0 else cout, cout, key=k) for i, k in enumerate(keys))


class Encoder(eqx.Module):
    conv_in: eqx.nn.Conv2d
    levels: tuple[tuple[ResBlock, ...], ...]  # full resolution first; downsample after all but the last
    middle: tuple[ResBlock, ...]
    norm_out: eqx.nn.GroupNorm | eqx.nn.Identity  # Identity without cfg.final_norm
    conv_out: eqx.nn.Conv2d

    def __init__(self, cfg, *, key):
        keys = jax.random.split(key, len(cfg.channel_multipliers) + 3)
        widths = [cfg.filters * m for m in cfg.channel_multipliers]
        self.conv_in = conv(3, cfg.filters, 3, key=keys[0], bias=False)
        self.levels = tuple(res_blocks(cfg, cin, cout, key=k)
                            for cin, cout, k in zip([cfg.filters] + widths, widths, keys[3:]))
        self.middle = res_blocks(cfg, widths[-1], widths[-1], key=keys[1])
        self.norm_out = final_norm(cfg, widths[-1])
        self.conv_out = conv(widths[-1], cfg.embedding_dim, 1, key=keys[2])

    def __call__(self, image):  # (3, H, W) in [0, 1] -> (D, h, w)
        x = self.conv_in(image)
        for i, level in enumerate(self.levels):
            for block in level:
                x = block(x)
            if i < len(self.levels) - 1:
                x = downsample(x)
        for block in self.middle:
            x = block(x)
        return self.conv_out(jax.nn.swish(self.norm_out(x)))


class Decoder(eqx.Module):
    conv_in: eqx.nn.Conv2d
    middle: tuple[ResBlock, ...]
    levels: tuple[tuple[ResBlock, ...], ...]  # deepest first; upsample + conv after all but the last
    upsample_convs: tuple[eqx.nn.Conv2d, ...]
    norm_out: eqx.nn.GroupNorm | eqx.nn.Identity  # Identity without cfg.final_norm
    conv_out: eqx.nn.Conv2d

    def __init__(self, cfg, *, key):
        keys = jax.random.split(key, 2 * len(cfg.channel_multipliers) + 2)
        widths = [cfg.filters * m for m in reversed(cfg.channel_multipliers)]
        self.conv_in = conv(cfg.embedding_dim, widths[0], 3, key=keys[0])
        self.middle = res_blocks(cfg, widths[0], widths[0], key=keys[1])
        self.levels = tuple(res_blocks(cfg, cin, cout, key=k)
                            for cin, cout, k in zip([widths[0]] + widths, widths, keys[2::2]))
        self.upsample_convs = tuple(conv(w, w, 3, key=k) for w, k in zip(widths[:-1], keys[3::2]))
        self.norm_out = final_norm(cfg, widths[-1])
        self.conv_out = conv(widths[-1], 3, 3, key=keys[-1])

    def __call__(self, z):  # (D, h, w) -> (3, H, W), roughly in [0, 1]
        x = self.conv_in(z)
        for block in self.middle:
            x = block(x)
        for i, level in enumerate(self.levels):
            for block in level:
                x = block(x)
            if i < len(self.levels) - 1:
                x = self.upsample_convs[i](upsample(x))
        return self.conv_out(jax.nn.swish(self.norm_out(x)))


class Quantizer(eqx.Module):
    codebook: jax.Array  # (K, D)

    def __call__(self, z):  # (D, h, w) -> token ids (h, w), the nearest code of each latent vector
        flat = z.reshape(z.shape[0], -1).T  # (h*w, D)
        # MaskGIT's expansion |a|^2 - 2ab + |b|^2, so ties and rounding break the same way
        distances = (flat ** 2).sum(1, keepdims=True) - 2 * flat @ self.codebook.T + (self.codebook ** 2).sum(1)
        return jnp.argmin(distances, axis=1).reshape(z.shape[1:])

    def lookup(self, ids):  # (h, w) -> (D, h, w)
        return jnp.moveaxis(self.codebook[ids], -1, 0)


class VQGAN(eqx.Module):
    cfg: VQGANConfig = eqx.field(static=True)
    encoder: Encoder
    quantizer: Quantizer
    decoder: Decoder

    def __init__(self, cfg=VQGANConfig(), *, key):
        k_enc, k_code, k_dec = jax.random.split(key, 3)
        self.cfg = cfg
        self.encoder = Encoder(cfg, key=k_enc)
        limit = math.sqrt(3 / cfg.codebook_size)  # MaskGIT: variance_scaling(1, fan_in, uniform)
        self.quantizer = Quantizer(jax.random.uniform(k_code, (cfg.codebook_size, cfg.embedding_dim),
                                                      minval=-limit, maxval=limit))
        self.decoder = Decoder(cfg, key=k_dec)

    def encode(self, image):  # (3, H, W) in [0, 1] -> token ids (h, w)
        return self.quantizer(self.encoder(image))

    def decode(self, ids):  # token ids (h, w) -> (3, H, W)
        return self.decoder(self.quantizer.lookup(ids))

    def __call__(self, image):
        """Training forward: (3, H, W) -> (reconstruction, encoder output z, its codes q, ids (h, w))."""
        z = self.encoder(image)  # (D, h, w)
        ids = self.quantizer(z)
        q = self.quantizer.lookup(ids)  # (D, h, w)
        straight_through = z + jax.lax.stop_gradient(q - z)  # the decoder's gradient flows to the encoder
        return self.decoder(straight_through), z, q, ids


def init_vqgan(cfg, *, seed):
    """A VQGAN to train from scratch. Weights are drawn with numpy because eager JAX compiles one
    random kernel per parameter shape (about a minute on two cores). Conv kernels ~ U(+-1/sqrt(fan_in))
    and conv biases 0 (as PyTorch), GroupNorm scale 1 and bias 0, codebook ~ U(+-sqrt(3/K)) (as MaskGIT)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):  # leaf: the shape and dtype of one parameter
        name = path[-1].name
        if name == "codebook" or leaf.ndim == 4:
            bound = math.sqrt(3 / leaf.shape[0]) if name == "codebook" else 1 / math.sqrt(math.prod(leaf.shape[1:]))
            return jnp.asarray(rng.uniform(-bound, bound, leaf.shape), jnp.float32)
        return jnp.ones(leaf.shape) if name == "weight" and leaf.ndim == 1 else jnp.zeros(leaf.shape)

    return jax.tree_util.tree_map_with_path(draw, eqx.filter_eval_shape(VQGAN, cfg, key=jax.random.key(0)))


def parameter_count(vq):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(vq) if hasattr(x, "shape"))


# ----------------------------------------------------------------------------------------------
# Images in, tokens out, and back.

@eqx.filter_jit
def _encode(vq, images):  # uint8 (B, H, W, 3) -> int32 (B, h*w)
    x = jnp.moveaxis(images.astype(jnp.float32) / 255, -1, 1)
    return jax.vmap(vq.encode)(x).reshape(images.shape[0], -1).astype(jnp.int32)


@eqx.filter_jit
def _decode(vq, ids):  # int32 (B, h*w) -> uint8 (B, H, W, 3)
    side = vq.cfg.tokens_per_side
    x = jax.vmap(vq.decode)(ids.reshape(-1, side, side))
    return jnp.round(jnp.clip(jnp.moveaxis(x, 1, -1), 0, 1) * 255).astype(jnp.uint8)


def encode_images(vq, images, batch=256):
    """uint8 (B, H, W, 3) pictures -> int32 (B, h*w) token ids in raster order, any B."""
    images = np.asarray(images)
    size = vq.cfg.image_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"this tokenizer takes uint8 pictures of shape (B, {size}, {size}, 3), "
                         f"got {images.dtype} {images.shape}; resize them first (e.g. data.load_image)")
    if len(images) == 0:
        return np.zeros((0, vq.cfg.tokens_per_side ** 2), np.int32)
    return data.in_batches(lambda chunk, _: _encode(vq, chunk), images, batch, key=jax.random.key(0))


def decode_tokens(vq, ids, batch=256):
    """int32 (B, h*w) token ids -> uint8 (B, H, W, 3) pictures, any B."""
    ids = np.asarray(ids)
    tokens, codes, size = vq.cfg.tokens_per_side ** 2, vq.cfg.codebook_size, vq.cfg.image_size
    if ids.ndim != 2 or ids.shape[1] != tokens or ids.size and not 0 <= ids.min() <= ids.max() < codes:
        raise ValueError(f"this tokenizer decodes ids in [0, {codes}) of shape (B, {tokens}), got {ids.shape}")
    if len(ids) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return data.in_batches(lambda chunk, _: _decode(vq, chunk), ids.astype(np.int32), batch,
                           key=jax.random.key(0))


# ----------------------------------------------------------------------------------------------
# Checkpoints: a JSON header with the config, then the arrays (checkpoint.save_checkpoint).

def save_vqgan(path, vq):
    checkpoint.save_checkpoint(path, {"vqgan": dataclasses.asdict(vq.cfg)}, vq)


def load_vqgan(path):
    def skeleton(header):
        fields = header["vqgan"]
        cfg = VQGANConfig(**{**fields, "channel_multipliers": tuple(fields["channel_multipliers"])})
        return eqx.filter_eval_shape(VQGAN, cfg, key=jax.random.key(0))
    return checkpoint.load_checkpoint(path, "vqgan", skeleton)[1]
