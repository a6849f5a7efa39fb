"""UPGen: one masked transformer over image tokens and text tokens, and its training objective.

An image (as VQGAN codes) and its caption form one sequence; the model learns to predict masked tokens
of either modality, which makes it both a representation learner (probe.py) and a generator (sample.py).
Read this file top to bottom: config, masking, transformer, loss. `python upgen.py` prints the
parameter counts of the laptop default and of the paper's ViT-L. Read next: sample.py.
"""
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

import checkpoint
import config
import vocab
import vqgan

# What kind of example a sequence is; it decides its mask ratio and its text weight.
PAIRED, IMAGE_ONLY, TEXT_ONLY = 0, 1, 2


@dataclass(frozen=True, kw_only=True)
class UPGenConfig:
    # The four sizes are the shapes world's; model_config sets them from a run's own tokenizers.
    image_codes: int = 512             # VQGAN codebook size; image code c is token id c
    image_tokens: int = 64             # image tokens per example (8x8 for 64x64 shapes pictures)
    text_vocab: int = 287              # vocab.Tokenizer.vocab_size; text token t is id image_codes + t
    text_tokens: int = 16              # text tokens per example (the tokenizer's padded length)
    width: int = 128                   # residual stream width
    depth: int = 2                     # transformer blocks (laptop default: 0.6M params; on 2 cores for
    #                                    10 minutes, more steps of a shallow model beat fewer of a deep one)
    heads: int = 4                     # attention heads (width // heads per head)
    mlp: int = 512                     # hidden units of each block's MLP
    compute_dtype: str = "float32"     # matmul dtype: "bfloat16" on accelerators; params and loss stay float32
    image_weight: float = 1.0          # loss weight of a masked image token
    paired_text_weight: float = 1.0    # ... of a masked caption token (text that comes with an image)
    unpaired_text_weight: float = 0.1  # ... of a masked token of text-only data
    text_mask_ratio: float = 0.15      # fixed mask ratio of text-only examples, as in BERT
    mask_modalities_apart: bool = True # paired examples draw one mask ratio for the picture and another for
    #                                    the caption, so that "whole picture hidden, caption in full view" (the
    #                                    start of text->image) and its mirror are seen far more often
    keep_whole: float = 2 / 3          # share of paired examples that hide nothing of one side: half of them show
    #                                    the whole caption (as text->image reads it), half the whole picture
    #                                    (image->text); the rest hide some of both. Needs the ratios drawn apart
    # The paper's objective is PAPER_OBJECTIVE below; on small data and small models these defaults learn
    # text->image and image->text in minutes where the paper's do not (README, "Why the defaults differ").

    def __post_init__(self):
        sizes = ("image_codes", "image_tokens", "text_vocab", "text_tokens", "width", "depth", "heads", "mlp")
        config.check(self, [(name, getattr(self, name) >= 1, "must be at least 1") for name in sizes] + [
            ("width", self.heads < 1 or self.width % self.heads == 0, f"must be divisible by --heads {self.heads}"),
            ("width", self.width % 2 == 0, "must be even (half sine, half cosine position features)"),
            ("compute_dtype", self.compute_dtype in ("float32", "bfloat16"), "must be float32 or bfloat16")] + [
            (name, getattr(self, name) >= 0, "must be at least 0") for name in
            ("image_weight", "paired_text_weight", "unpaired_text_weight")] + [
            ("text_mask_ratio", 0 < self.text_mask_ratio <= 1, "must be in (0, 1]"),
            ("keep_whole", 0 <= self.keep_whole <= 1, "must be in [0, 1]"),
            ("keep_whole", self.mask_modalities_apart or self.keep_whole == 0, "must be 0 with one mask ratio")])

    @property
    def seq_len(self) -> int:
        return self.image_tokens + self.text_tokens

    @property
    def vocab_size(self) -> int:
        return self.image_codes + self.text_vocab

    @property
    def pad_id(self) -> int:
        return self.image_codes + vocab.PAD

    @property
    def mask_id(self) -> int:
        return self.image_codes + vocab.MASK


# The paper's objective: one mask ratio for the whole sequence, caption tokens weigh 0.1, text-only 0.01.
PAPER_OBJECTIVE = dict(mask_modalities_apart=False, keep_whole=0.0, paired_text_weight=0.1, unpaired_text_weight=0.01)

# The paper's model: ViT-Large over 16x16 MaskGIT VQGAN tokens. The text side is our assumption:
# BERT's 30522-wordpiece vocabulary and 64 text tokens.
VIT_L = UPGenConfig(image_codes=1024, image_tokens=256, text_vocab=30522, text_tokens=64,
                    width=1024, depth=24, heads=16, mlp=4096, compute_dtype="bfloat16", **PAPER_OBJECTIVE)


def model_config(settings: UPGenConfig, vq_cfg: vqgan.VQGANConfig, tokenizer: vocab.Tokenizer):
    """The transformer for this tokenizer pair: settings' shape and objective, with the tokenizers' sizes."""
    return dataclasses.replace(settings, image_codes=vq_cfg.codebook_size, image_tokens=vq_cfg.tokens_per_side ** 2,
                               text_vocab=tokenizer.vocab_size, text_tokens=tokenizer.length)


# ---------------------------------------------------------------------------------------------------
# Sequences and masking


def make_sequence(image_ids, text_ids, cfg: UPGenConfig):
    """Joins image ids (..., Ni) and text ids (..., Nt) into model tokens (..., L), their batch shapes broadcast.

    Image ids are model ids (code c is id c; cfg.mask_id marks a cell to draw), text ids the text tokenizer's
    (vocab.MASK marks a word to write, vocab.PAD no word); None = missing, PAD in every slot of that part."""
    if image_ids is None and text_ids is None:
        raise ValueError("make_sequence needs image ids, text ids, or both")
    no_image = jnp.full(cfg.image_tokens, cfg.pad_id, jnp.int32)
    image = no_image if image_ids is None else jnp.asarray(image_ids, jnp.int32)
    if image.shape[-1] != cfg.image_tokens:
        raise ValueError(f"got {image.shape[-1]} image tokens, the config expects {cfg.image_tokens}")
    text = jnp.full(cfg.text_tokens, vocab.PAD, jnp.int32) if text_ids is None else jnp.asarray(text_ids, jnp.int32)
    if text.shape[-1] != cfg.text_tokens:
        raise ValueError(f"got {text.shape[-1]} text tokens, the config expects {cfg.text_tokens}")
    text = text + cfg.image_codes  # text ids live after the image codes
    batch = jnp.broadcast_shapes(image.shape[:-1], text.shape[:-1])
    return jnp.concatenate([jnp.broadcast_to(image, (*batch, cfg.image_tokens)),
                            jnp.broadcast_to(text, (*batch, cfg.text_tokens))], axis=-1)  # (..., L)


def choose(real, ratio, *, key):
    """Picks ratio * (number of real positions) of the real positions at random: bool (L,).
    Stochastic rounding keeps the expected count at ratio * n (plain rounding would mask 1 of an
    8-word caption, 12.5%, instead of 15%)."""
    round_key, order_key = jax.random.split(key)
    count = jnp.floor(ratio * real.sum() + jax.random.uniform(round_key))
    # Take the `count` real positions with the smallest random scores; PAD scores +inf, so never counts.
    scores = jnp.where(real, jax.random.uniform(order_key, real.shape), jnp.inf)
    rank = jnp.argsort(jnp.argsort(scores))                                  # (L,) 0 = smallest score
    return rank < count


def mask_one(tokens, kind, cfg: UPGenConfig, *, key):
    """Chooses which real tokens of one sequence (L,) to hide; returns (inputs (L,), masked bool (L,))."""
    image_ratio_key, text_ratio_key, image_key, text_key, fallback_key, whole_key = jax.random.split(key, 6)
    real = tokens != cfg.pad_id                                              # (L,)
    is_image = jnp.arange(cfg.seq_len) < cfg.image_tokens                   # (L,)
    # Paired and image-only examples draw their ratio in (0, 1], so the model sees everything from
    # "fill in one token" to "generate from nothing"; text-only data uses BERT's fixed ratio.
    image_ratio = 1.0 - jax.random.uniform(image_ratio_key)                  # (0, 1]
    text_ratio = jnp.where(kind == TEXT_ONLY, cfg.text_mask_ratio, 1.0 - jax.random.uniform(text_ratio_key))
    # cfg.keep_whole of paired examples hide nothing of one side, as text->image and image->text decode from it.
    draw = jax.random.uniform(whole_key)
    caption_whole = (kind == PAIRED) & (draw < cfg.keep_whole / 2)
    picture_whole = (kind == PAIRED) & (draw >= cfg.keep_whole / 2) & (draw < cfg.keep_whole)
    text_ratio = jnp.where(caption_whole, 0.0, text_ratio)
    image_ratio = jnp.where(picture_whole, 0.0, image_ratio)
    if cfg.mask_modalities_apart:  # one ratio for the picture, another for its caption
        masked = (choose(real & is_image, image_ratio, key=image_key)
                  | choose(real & ~is_image, text_ratio, key=text_key))
    else:  # the paper: one ratio for the whole sequence
        masked = choose(real, jnp.where(kind == TEXT_ONLY, text_ratio, image_ratio), key=image_key)
    # At least one real token is always masked, so every example has a loss.
    first = jnp.argmin(jnp.where(real, jax.random.uniform(fallback_key, real.shape), jnp.inf))
    masked = masked | (~masked.any() & (jnp.arange(cfg.seq_len) == first))
    return jnp.where(masked, cfg.mask_id, tokens), masked


def mask_tokens(tokens, kinds, cfg: UPGenConfig, *, key):
    """Masks a batch: tokens (B, L), kinds (B,) -> (inputs (B, L), masked bool (B, L)); pure in key."""
    keys = jax.random.split(key, tokens.shape[0])
    return jax.vmap(lambda t, k, kk: mask_one(t, k, cfg, key=kk))(tokens, kinds, keys)


# ---------------------------------------------------------------------------------------------------
# The transformer


def dense(layer: eqx.nn.Linear, x, dtype):
    """x (L, in) @ W.T + b in the compute dtype, accumulated and returned in float32: (L, out)."""
    y = jnp.dot(x.astype(dtype), layer.weight.T.astype(dtype), preferred_element_type=jnp.float32)
    return y + layer.bias


def sinusoidal_positions(length: int, width: int):
    """Fixed sine/cosine position embeddings of the original Transformer: (length, width)."""
    position = jnp.arange(length)[:, None]                                  # (L, 1)
    frequency = jnp.exp(-math.log(10000.0) * jnp.arange(0, width, 2) / width)  # (width/2,)
    angle = position * frequency                                            # (L, width/2)
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)       # (L, width)


class Block(eqx.Module):
    """One pre-LN transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""
    norm1: eqx.nn.LayerNorm
    qkv: eqx.nn.Linear
    proj: eqx.nn.Linear
    norm2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    heads: int = eqx.field(static=True)

    def __init__(self, cfg: UPGenConfig, *, key):
        qkv_key, proj_key, fc1_key, fc2_key = jax.random.split(key, 4)
        self.norm1 = eqx.nn.LayerNorm(cfg.width)
        self.qkv = eqx.nn.Linear(cfg.width, 3 * cfg.width, key=qkv_key)
        self.proj = eqx.nn.Linear(cfg.width, cfg.width, key=proj_key)
        self.norm2 = eqx.nn.LayerNorm(cfg.width)
        self.fc1 = eqx.nn.Linear(cfg.width, cfg.mlp, key=fc1_key)
        self.fc2 = eqx.nn.Linear(cfg.mlp, cfg.width, key=fc2_key)
        self.heads = cfg.heads

    def __call__(self, x, real, dtype):
        """x (L, D) float32, real bool (L,): keys that are not PAD. Returns (L, D) float32."""
        L, D = x.shape
        h = jax.vmap(self.norm1)(x)
        q, k, v = jnp.split(dense(self.qkv, h, dtype), 3, axis=-1)         # 3 x (L, D)
        q, k, v = (t.reshape(L, self.heads, D // self.heads) for t in (q, k, v))  # (L, H, D/H)
        scores = jnp.einsum("qhd,khd->hqk", q.astype(dtype), k.astype(dtype),
                            preferred_element_type=jnp.float32)             # (H, L, L)
        scores = scores / math.sqrt(D // self.heads)
        # Bidirectional attention that never looks at PAD, so padding cannot change real positions.
        scores = jnp.where(real[None, None, :], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1)                           # (H, L, L) float32
        out = jnp.einsum("hqk,khd->qhd", weights.astype(dtype), v.astype(dtype),
                         preferred_element_type=jnp.float32).reshape(L, D)  # (L, D)
        x = x + dense(self.proj, out, dtype)
        h = jax.vmap(self.norm2)(x)
        return x + dense(self.fc2, jax.nn.gelu(dense(self.fc1, h, dtype)), dtype)  # (L, D)


class UPGen(eqx.Module):
    """Tokens (L,) -> logits over the shared vocabulary (L, V); works on one example (vmap for batches)."""
    embed: eqx.nn.Embedding      # shared by image codes, text tokens, [PAD] and [MASK]
    modality: jax.Array          # (2, D) learnable type embedding: row 0 image slots, row 1 text slots
    blocks: Block                # `depth` blocks stacked along a leading axis, run with lax.scan
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    cfg: UPGenConfig = eqx.field(static=True)

    def __init__(self, cfg: UPGenConfig, *, key, codebook=None):
        """codebook: the image tokenizer's code vectors (image_codes, d), or None. When given, image codes that the
        tokenizer puts close together start close together, as inputs and as outputs: their embedding and head rows
        begin as one random projection of the codebook, so what the model learns of one code carries to its
        neighbours from the first step (train.py passes it; docs/experiments.md, 2026-12-07)."""
        embed_key, modality_key, blocks_key, head_key, projection_key = jax.random.split(key, 5)
        self.embed = eqx.nn.Embedding(cfg.vocab_size, cfg.width, key=embed_key)
        self.modality = jax.random.normal(modality_key, (2, cfg.width))
        # Stacked blocks: one set of arrays with a leading `depth` axis (one entry per kind of array in a checkpoint).
        block_keys = jax.random.split(blocks_key, cfg.depth)
        self.blocks = eqx.filter_vmap(lambda k: Block(cfg, key=k))(block_keys)
        self.norm = eqx.nn.LayerNorm(cfg.width)
        self.head = eqx.nn.Linear(cfg.width, cfg.vocab_size, key=head_key)
        self.cfg = cfg
        if codebook is not None:
            codes = (codebook - codebook.mean(0)) / (codebook.std(0) + 1e-6)  # (K, d), each feature of unit variance
            rows = codes @ jax.random.normal(projection_key, (codes.shape[1], cfg.width)) / math.sqrt(codes.shape[1])
            K = cfg.image_codes  # rows (K, width) of unit variance, like the embedding's own; a little noise kept
            embed = self.embed.weight.at[:K].set(0.9 * rows + 0.44 * self.embed.weight[:K])
            self.embed = eqx.nn.Embedding(weight=embed)
            head = self.head.weight.at[:K].set(rows / math.sqrt(cfg.width))
            self.head = eqx.tree_at(lambda h: h.weight, self.head, head)

    def __call__(self, tokens, *, hidden=False, remat=False):
        """tokens int32 (L,) -> logits float32 (L, V); with hidden=True also the residual stream after
        every block, float32 (depth, L, D), for the linear probe. remat=True: a gradient recomputes each
        block's activations from its input instead of keeping them (same values, less memory, ~1/3 more FLOPs)."""
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.compute_dtype)
        slot_modality = (jnp.arange(cfg.seq_len) >= cfg.image_tokens).astype(jnp.int32)  # (L,) 0 image, 1 text
        x = jax.vmap(self.embed)(tokens)                                    # (L, D)
        x = x + sinusoidal_positions(cfg.seq_len, cfg.width) + self.modality[slot_modality]
        real = tokens != cfg.pad_id                                         # (L,)

        arrays, static = eqx.partition(self.blocks, eqx.is_array)

        def step(x, block_arrays):
            x = eqx.combine(block_arrays, static)(x, real, dtype)
            return x, x

        # Up to 8 blocks are unrolled: a loop's backward pass stacks each block's activations and gradients into loop
        # buffers, which cost a CPU step up to 15% (bench.py --grid). Deeper models run two blocks per loop trip, so
        # that ViT-L's 24 compile (and bench.py --plan costs them) in minutes. remat keeps the loop: it alone makes
        # XLA recompute a block's activations when the backward pass reaches it (unrolled, remat saved no memory).
        unroll = 2 if remat or cfg.depth > 8 else cfg.depth
        if remat:
            step = jax.checkpoint(step, prevent_cse=False)
        x, hiddens = jax.lax.scan(step, x, arrays, unroll=unroll)           # (L, D), (depth, L, D)
        logits = dense(self.head, jax.vmap(self.norm)(x), dtype)            # (L, V) float32
        return (logits, hiddens) if hidden else logits


def count_params(model) -> int:
    """Number of float parameters; works on real models and on eqx.filter_eval_shape skeletons."""
    leaves = jax.tree.leaves(eqx.filter(model, lambda x: hasattr(x, "dtype")))
    return sum(math.prod(x.shape) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact))


def save_upgen(path, model: UPGen, tokenizer: vocab.Tokenizer):
    """The model alone (no optimizer state), with its config and text tokenizer in the header."""
    header = {"upgen": dataclasses.asdict(model.cfg), "tokenizer": dataclasses.asdict(tokenizer)}
    checkpoint.save_checkpoint(path, header, model)


def load_upgen(path):
    """A file written by save_upgen -> (model, tokenizer)."""
    def skeleton(header):
        return eqx.filter_eval_shape(UPGen, UPGenConfig(**header["upgen"]), key=jax.random.key(0))

    header, model = checkpoint.load_checkpoint(path, "upgen", skeleton)
    return model, vocab.tokenizer_from_header(header["tokenizer"])


def load_run(ckpt):
    """-> (UPGen, text tokenizer, VQGAN) from a folder holding upgen.eqx and vqgan.eqx."""
    try:
        model, tokenizer = load_upgen(Path(ckpt) / "upgen.eqx")
        vq = vqgan.load_vqgan(Path(ckpt) / "vqgan.eqx")
    except (ValueError, OSError) as e:
        raise ValueError(f"{e}; make a checkpoint with `python train.py --out {ckpt}`") from None
    if (vq.cfg.codebook_size, vq.cfg.tokens_per_side ** 2) != (
            model.cfg.image_codes, model.cfg.image_tokens):
        raise ValueError(f"{ckpt}: vqgan.eqx and upgen.eqx do not belong together (codebook or token count differ)")
    return model, tokenizer, vq


# ---------------------------------------------------------------------------------------------------
# The objective


def masked_loss(logits, tokens, masked, kinds, cfg: UPGenConfig):
    """Weighted cross-entropy at the masked positions of a batch: logits (B, L, V), tokens, masked (B, L), kinds (B,)
    -> (loss f32, metrics: image_acc, text_acc, and image_loss, text_loss, the plain cross-entropy of each part).

    The loss is normalised by the NUMBER of masked tokens, not by the sum of weights: then a weight is a fixed
    per-token importance, as in the paper (a caption token counts 0.1 of an image token, text-only data 0.01,
    whatever the batch holds); dividing by the weight sum would cancel the weights in a batch of one kind.
    With all weights 1 this is plain masked cross-entropy."""
    target_logit = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]  # (B, L)
    ce = jax.nn.logsumexp(logits, axis=-1) - target_logit                  # (B, L)
    is_image = jnp.arange(cfg.seq_len) < cfg.image_tokens                 # (L,)
    text_weight = jnp.where(kinds == TEXT_ONLY, cfg.unpaired_text_weight, cfg.paired_text_weight)  # (B,)
    weight = jnp.where(is_image[None, :], cfg.image_weight, text_weight[:, None]) * masked  # (B, L)
    # Right when the target's logit is the largest: argmax's index is not needed, and on a CPU it costs a pass.
    correct = (target_logit >= logits.max(-1)) & masked                     # (B, L)
    image, text = masked & is_image, masked & ~is_image                     # (B, L) each
    mean = lambda x, where: jnp.sum(x * where) / jnp.maximum(where.sum(), 1)  # noqa: E731
    return mean(weight * ce, masked > 0), {"image_acc": mean(correct, image), "text_acc": mean(correct, text),
                                           "image_loss": mean(ce, image), "text_loss": mean(ce, text)}


def loss_fn(model: UPGen, tokens, kinds, *, key, remat=False):
    """Masked token prediction, the objective train.py differentiates: tokens (B, L), kinds (B,) -> (loss f32,
    metrics). remat: see UPGen.__call__."""
    inputs, masked = mask_tokens(tokens, kinds, model.cfg, key=key)        # (B, L), (B, L)
    logits = jax.vmap(lambda seq: model(seq, remat=remat))(inputs)          # (B, L, V) float32
    return masked_loss(logits, tokens, masked, kinds, model.cfg)


if __name__ == "__main__":
    for name, cfg in [("laptop default (shapes)", UPGenConfig(image_codes=512, text_vocab=320)),
                      ("paper ViT-L", VIT_L)]:
        model = eqx.filter_eval_shape(UPGen, cfg, key=jax.random.key(0))
        print(f"{name}: {count_params(model) / 1e6:.2f}M parameters, "
              f"{count_params(model.blocks) / 1e6:.2f}M in the transformer blocks")
