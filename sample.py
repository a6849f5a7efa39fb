"""Sampling from UPGen with MaskGIT's iterative decoding: text->image, image->text, unconditional
pictures and captions, and text-guided inpainting, all from one model.

    python sample.py --prompt "a large red circle in the top left"   # writes samples.png
    python sample.py --image picture.png                              # prints captions
    python sample.py --image picture.png --keep 0,0,32,64 --prompt "a small blue square in the top left"
    python sample.py                                                  # unconditional pictures and their captions
    python sample.py --image samples.png                              # a grid it wrote: picture by picture

The decoder (first section) knows nothing about the model: it takes a tokens -> logits function. Read upgen.py
first for the sequence layout [image tokens | text tokens]; evaluate.py measures every mode on the shapes world.
Read next: train.py, the step and the loop.
"""
import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import config
import data
import pictures
import upgen
import vocab
import vqgan

# ---------------------------------------------------------------------------------------------------
# The decoder: start from a sequence with [MASK] where tokens are unknown; at each of T steps predict
# every unknown token at once, keep the most confident predictions and mask the rest again, fewer each
# step along a cosine schedule. Known tokens are never re-masked and never change.


@dataclass(frozen=True)
class DecodeConfig:
    steps: int = 12  # T: forward passes per sample (MaskGIT: 8-12)
    temperature: float = 0.5  # sampling temperature of each token; 0 = argmax (0.5: a small model's pictures are
    #                           valid shapes more often than at 1, a well-trained one's as often)
    choice_temperature: float = 4.5  # Gumbel noise on confidences (MaskGIT's ImageNet value), annealed to 0

    def __post_init__(self):
        config.check(self, [("steps", self.steps >= 1, "must be at least 1 (MaskGIT: 8-12)"),
                            ("temperature", self.temperature >= 0, "must be 0 (argmax) or more (1: the model's own)"),
                            ("choice_temperature", self.choice_temperature >= 0, "must be 0 (greedy) or more")])


def masked_counts(n_unknown, steps):
    """Tokens still masked after each step: n_unknown int (B,) -> int32 (B, steps), ending at 0. MaskGIT's cosine
    schedule, floor(n * cos(pi/2 * t/T)) for t = 1..T, but at least one token fewer each step (MaskGIT's clamp),
    so a short sequence (n < T) is never left with a step that decides nothing."""
    n = jnp.asarray(n_unknown, jnp.int32)
    counts, previous = [], n
    for t in range(1, steps + 1):
        target = jnp.floor(n * math.cos(math.pi / 2 * (t / steps))).astype(jnp.int32)
        previous = jnp.maximum(jnp.minimum(target, previous - 1), 0)
        counts.append(previous)
    return jnp.stack(counts, axis=-1)  # (B, steps)


def sample_tokens(logits, temperature, *, key):
    """logits (B, L, V) -> token ids (B, L), sampled at this temperature (argmax at 0)."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    # Inverse-CDF sampling: one uniform per slot against the cumulative probabilities. jax.random.categorical
    # draws V Gumbels per slot instead, which on a CPU costs more than the model's forward pass.
    cdf = jnp.cumsum(jax.nn.softmax(logits / temperature, axis=-1), axis=-1)  # (B, L, V)
    u = (1 - jax.random.uniform(key, (*logits.shape[:-1], 1))) * cdf[..., -1:]  # (B, L, 1) in (0, total]
    return jnp.sum(cdf < u, axis=-1)  # the first id whose cdf reaches u; ids of probability 0 never qualify


def decode(logits_fn, tokens, *, mask_id, dcfg=DecodeConfig(), key):
    """Fills every mask_id of tokens (B, L) -> the sequence after each step (T, B, L); [-1] has no mask.
    logits_fn: (B, L) -> (B, L, V) must give -inf (or a large negative logit) to ids a slot may not take, [MASK]
    included. The T steps run inside one lax.scan, so the whole decode is one compiled program."""
    counts = masked_counts((tokens == mask_id).sum(-1), dcfg.steps)  # (B, T)

    def step(seq, inputs):
        t, step_key = inputs
        sample_key, choice_key = jax.random.split(step_key)
        logits = logits_fn(seq).astype(jnp.float32)  # (B, L, V)
        unknown = seq == mask_id  # (B, L)
        sampled = jnp.where(unknown, sample_tokens(logits, dcfg.temperature, key=sample_key), seq)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        confidence = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]  # (B, L)
        # Gumbel noise makes the choice of what to keep random early on (temperature * (1 - t/T),
        # MaskGIT's annealing), so samples differ in layout, then greedy in confidence at the end.
        noise_scale = dcfg.choice_temperature * (1 - (t + 1) / dcfg.steps)
        confidence = confidence + noise_scale * jax.random.gumbel(choice_key, confidence.shape)
        confidence = jnp.where(unknown, confidence, jnp.inf)  # known tokens are never re-masked
        rank = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)  # (B, L) 0 = least confident
        # A rank, not a threshold: exactly counts[:, t] tokens stay masked, even when confidences tie.
        seq = jnp.where(rank < counts[:, t, None], mask_id, sampled)
        return seq, seq

    keys = jax.random.split(key, dcfg.steps)
    _, states = jax.lax.scan(step, tokens, (jnp.arange(dcfg.steps), keys))
    return states  # (T, B, L)


# ---------------------------------------------------------------------------------------------------
# The model as a tokens -> logits function, and the sequences of each mode


def allowed_ids(mcfg):
    """bool (L, V): image slots take image codes only, text slots real text tokens only (no PAD/MASK)."""
    ids = jnp.arange(mcfg.vocab_size)
    image = ids < mcfg.image_codes
    text = ids >= mcfg.image_codes + vocab.MASK + 1  # text ids start with PAD, MASK
    is_image_slot = jnp.arange(mcfg.seq_len)[:, None] < mcfg.image_tokens
    return jnp.where(is_image_slot, image[None], text[None])


def model_logits(model, tokens, guidance=0.0):
    """tokens (B, L) -> restricted logits (B, L, V). guidance > 0: classifier-free guidance on the text,
    logits + guidance * (logits - logits with every caption token masked)."""
    mcfg = model.cfg
    logits = jax.vmap(model)(tokens)  # (B, L, V)
    if guidance:
        is_text = jnp.arange(mcfg.seq_len) >= mcfg.image_tokens
        no_text = jnp.where(is_text & (tokens != mcfg.pad_id), mcfg.mask_id, tokens)
        logits = logits + guidance * (logits - jax.vmap(model)(no_text))
    return jnp.where(allowed_ids(mcfg), logits, -1e9)


@eqx.filter_jit
def generate(model, tokens, dcfg, guidance=0.0, *, key):
    """Decode every [MASK] of tokens (B, L) -> states (T, B, L) in one compiled call."""
    return decode(lambda seq: model_logits(model, seq, guidance), tokens,
                  mask_id=model.cfg.mask_id, dcfg=dcfg, key=key)


def token_log_probs(model, seqs, targets):
    """log p(targets) at every slot of a forward pass on seqs (N, L) -> (N, L)."""
    log_probs = jax.nn.log_softmax(model_logits(model, seqs), axis=-1)  # (N, L, V)
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def length_prior(tokenizer):
    """log p(k) of a caption of k = 1..Nt tokens, from the training captions' lengths: float32 (Nt,).
    Lengths no training caption had get ~-20, so they are chosen only if nothing else is possible."""
    counts = np.asarray(tokenizer.caption_lengths or np.ones(tokenizer.length), np.float64)
    return jnp.asarray(np.log(np.maximum(counts / counts.sum(), 1e-9)), jnp.float32)


# Caption lengths tried per picture, the prior's likeliest: CAPTION_LENGTHS * (T + 2) forward passes (3.5 text->image
# decodes at T = 12) whatever the text length, where every length 1..Nt took Nt times that (81 at 64 text tokens).
# The shapes world's captions have 4 lengths; its likeliest 3 hold 93% of them, and every picture can be said in one.
CAPTION_LENGTHS = 3


@eqx.filter_jit
def write_text(model, image_ids, prior, dcfg, *, key):
    """Captions of pictures image_ids (B, Ni) -> text token ids (B, Nt), PAD-padded.

    [PAD] is never masked in training, so the model never says where a text ends: we choose the length. We decode
    a caption y for each of the prior's CAPTION_LENGTHS likeliest lengths k, in one batch, and keep the best
        log p(k) + mean_i log p(y_i | picture, k, all text masked) + mean_j log p(x_j | y, all image masked):
    the prior picks lengths training captions had, where the model is not confidently wrong (a 4-token "a big red
    circle" never names its place); the second term rejects captions unlikely for the picture at that length; the
    third, captions that say too little to redraw the picture x."""
    mcfg = model.cfg
    B, Ni, Nt = image_ids.shape[0], mcfg.image_tokens, mcfg.text_tokens
    K = min(CAPTION_LENGTHS, Nt)
    length_score, index = jax.lax.top_k(prior, K)  # (K,) log p(k) of the likeliest lengths, and k - 1
    lengths = index + 1  # (K,)
    used = jnp.arange(Nt)[None] < lengths[:, None]  # (K, Nt)
    text = jnp.where(used, vocab.MASK, vocab.PAD)  # (K, Nt)
    seqs = upgen.make_sequence(image_ids[:, None], text, mcfg).reshape(B * K, -1)  # (B*K, L)
    # Only the text slots are decoded: sampling and ranking the known picture's Ni slots would be wasted work.
    text_logits = lambda text: model_logits(model, jnp.concatenate([seqs[:, :Ni], text], -1))[:, Ni:]  # noqa: E731
    written = decode(text_logits, seqs[:, Ni:], mask_id=mcfg.mask_id, dcfg=dcfg, key=key)[-1]  # (B*K, Nt)
    decoded = jnp.concatenate([seqs[:, :Ni], written], -1)  # (B*K, L)
    text_score = token_log_probs(model, seqs, decoded)[:, Ni:].reshape(B, K, Nt)  # (B, K, Nt)
    text_score = jnp.where(used, text_score, 0).sum(-1) / lengths  # (B, K)
    image_score = token_log_probs(model, decoded.at[:, :Ni].set(mcfg.mask_id), decoded)[:, :Ni]
    score = length_score[None] + text_score + image_score.mean(-1).reshape(B, K)  # (B, K)
    return tokenizer_ids(mcfg, decoded.reshape(B, K, -1)[jnp.arange(B), score.argmax(-1), Ni:])


def tokenizer_ids(mcfg, text):
    """Model ids of text slots (..., Nt) -> the text tokenizer's ids, PAD-padded."""
    return jnp.where(text == mcfg.pad_id, vocab.PAD, text - mcfg.image_codes)


@eqx.filter_jit
def unconditional(model, lengths, dcfg, guidance=0.0, *, key):
    """Unconditional (picture, caption) pairs: caption lengths (n,) -> states (T, n, L) of the pictures' decode.

    Ancestral sampling of p(x, y) = p(y) p(x | y): a joint decode of an all-[MASK] sequence draws the caption y
    (and a first picture, dropped), then the picture is drawn again from y alone, as text->image draws it. Drawing
    it directly with no caption (text slots PAD, as image-only training data) gives fewer valid shapes pictures."""
    mcfg = model.cfg
    text = jnp.where(jnp.arange(mcfg.text_tokens) < lengths[:, None], vocab.MASK, vocab.PAD)  # (n, Nt)
    seqs = upgen.make_sequence(jnp.full(mcfg.image_tokens, mcfg.mask_id), text, mcfg)  # (n, L)
    caption_key, picture_key = jax.random.split(key)
    captioned = generate(model, seqs, dcfg, key=caption_key)[-1]
    return generate(model, captioned.at[:, :mcfg.image_tokens].set(mcfg.mask_id), dcfg, guidance, key=picture_key)


def draw_caption_lengths(tokenizer, n, *, key):
    """n caption lengths drawn from the training captions' lengths: int32 (n,) in 1..Nt."""
    return jax.random.categorical(key, length_prior(tokenizer), shape=(n,)) + 1


def inputs(mcfg, n, image=None, text=None, keep=None):
    """Model tokens (n, L): image codes (Ni,) or (n, Ni) kept where keep is True (all if keep is None, none if image
    is None) and [MASK] elsewhere; text ids (Nt,) or (n, Nt), or PAD if None."""
    image_part = np.full(mcfg.image_tokens, mcfg.mask_id)
    if image is not None:
        image_part = np.where(True if keep is None else keep, image, mcfg.mask_id)
    return upgen.make_sequence(np.broadcast_to(image_part, (n, mcfg.image_tokens)), text, mcfg)  # (n, L)


INPAINT_GUIDANCE = 1.0  # on the shapes eval's inpainting, 1 draws the prompt right more often than 0 or 3
TEXT_GUIDANCE = 2.0  # text->image: on the shapes eval, 2 draws the prompt right more often than 0 or 4


def inpaint(model, vq, images, keep, text, dcfg, guidance=INPAINT_GUIDANCE, *, key):
    """Redraws the cells of images uint8 (B, S, S, 3) where keep (B, Ni) is False as text ids (B, Nt) say
    -> (the tokens (B, L) of the last pass, its states (T, B, L)).

    The VQGAN encoder sees the whole picture (its convolutions reach ~6 tokens, its GroupNorm all of them), so the
    kept cells' tokens carry traces of what the region held, and the model follows them over the prompt. So the
    first pass encodes the picture with the region painted in the kept pixels' median colour, and the second the
    kept pixels beside the first pass's drawing, in the company of what the prompt asks for."""
    kept = pictures.cell_pixels(keep, images.shape[1])  # (B, S, S, 1)
    fill = np.stack([np.median(image[cells[..., 0]], axis=0) for image, cells in zip(images, kept)])  # (B, 3)
    redrawn = np.where(kept, images, fill[:, None, None].astype(np.uint8))
    for pass_key in jax.random.split(key, 2):
        tokens = inputs(model.cfg, len(images), vqgan.encode_images(vq, redrawn), text, keep)
        states = generate(model, tokens, dcfg, guidance, key=pass_key)
        redrawn = np.where(kept, images, from_tokens(vq, states[-1], model.cfg))
    return tokens, states


def from_tokens(vq, states, mcfg):
    """States (..., L) -> uint8 pictures (..., H, W, 3); still-masked cells painted grey."""
    image = np.asarray(states)[..., :mcfg.image_tokens]
    masked = image == mcfg.mask_id
    flat = np.where(masked, 0, image).reshape(-1, mcfg.image_tokens)
    out = vqgan.decode_tokens(vq, flat)  # (N, H, W, 3)
    out = np.where(pictures.cell_pixels(masked.reshape(-1, mcfg.image_tokens), out.shape[1]), 128, out).astype(np.uint8)
    return out.reshape(*image.shape[:-1], *out.shape[1:])



def write_pictures(vq, states, mcfg, out, show_steps):
    """Saves the final pictures of states (T, n, L) at out, and every step of each at <out>_steps.png."""
    pictures.save_grid(from_tokens(vq, states[-1:], mcfg), out)
    if show_steps:
        steps_path = Path(out).with_name(Path(out).stem + "_steps.png")
        pictures.save_grid(from_tokens(vq, jnp.swapaxes(states, 0, 1), mcfg), steps_path)


def draw_captions(model, vq, tokenizer, rows, n, path, *, key):
    """Draws n different captions of rows (k, Ni + Nt), spread over them, into one PNG at path -> the captions."""
    captions = list(dict.fromkeys(tokenizer.decode(row[model.cfg.image_tokens:]) for row in rows))  # distinct
    prompts = [captions[i] for i in np.unique(np.linspace(0, len(captions) - 1, n).astype(int))]
    tokens = inputs(model.cfg, len(prompts), text=np.stack([tokenizer.encode(p) for p in prompts]))
    states = generate(model, tokens, DecodeConfig(), TEXT_GUIDANCE, key=key)  # (T, n, L)
    pictures.save_grid(from_tokens(vq, states[-1], model.cfg)[None], path)
    return prompts


# ---------------------------------------------------------------------------------------------------
# Command line


def decode_flags(parser):
    """Adds the DecodeConfig flags (evaluate.py's command line shares them)."""
    for name, help in [("steps", "decoding steps T"), ("temperature", "token sampling temperature (0: argmax)"),
                       ("choice_temperature", "Gumbel noise on the confidences of the tokens to keep, annealed to 0")]:
        config.flag(parser, DecodeConfig(), name, help)


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", help="text -> image: the caption to draw (with --image and --keep: inpaint)")
    p.add_argument("--image", help="image -> text: a picture, or a grid of them from save_grid, to caption "
                   "(with --keep: inpaint it)")
    p.add_argument("--keep", help="inpainting: x0,y0,x1,y1 box in pixels of --image to keep "
                   "(the token cells whose centres it holds); the rest is redrawn")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale on the prompt, or on an "
                   f"unconditional picture's own caption (0: off; default: {INPAINT_GUIDANCE} when inpainting, "
                   f"{TEXT_GUIDANCE} for a prompt, else 0)")
    p.add_argument("--n", type=int, default=4, help="how many samples")
    decode_flags(p)
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same samples")
    p.add_argument("--ckpt", default="checkpoints/shapes", help="folder with upgen.eqx and vqgan.eqx")
    p.add_argument("--out", default="samples.png", help="where to write the grid of pictures")
    p.add_argument("--show-steps", action="store_true", help="also write <out>_steps.png: every step of each sample")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError("--n must be at least 1")
        if args.keep is not None and args.image is None:
            raise ValueError("--keep needs --image: it says which part of that image to keep")
        if args.image and args.prompt is not None and args.keep is None:
            raise ValueError("--image with --prompt is inpainting: add --keep x0,y0,x1,y1, "
                             "the part of the image to keep")
        dcfg = DecodeConfig(**config.fields_of(DecodeConfig, args))
        model, tokenizer, vq = upgen.load_run(args.ckpt)
        mcfg, size, n = model.cfg, vq.cfg.image_size, args.n
        length_key, key = jax.random.split(jax.random.key(args.seed))
        if args.image and args.keep is None:  # image -> text: n captions of a picture, or of each one of a grid
            images, (_, cols) = pictures.read_pictures(args.image, size)
            codes = np.repeat(vqgan.encode_images(vq, images), n, axis=0)  # (P * n, Ni), each picture n times
            ids = write_text(model, jnp.asarray(codes), length_prior(tokenizer), dcfg, key=key)
            for i, picture in enumerate(ids.reshape(len(images), n, -1)):
                if len(images) > 1:
                    print(f"picture {i + 1} of {len(images)} (row {i // cols + 1}, column {i % cols + 1}):")
                print("\n".join("  " * (len(images) > 1) + tokenizer.decode(row) for row in picture))
            return
        prompt = vocab.prompt_ids(tokenizer, args.prompt)
        guidance = args.guidance
        if guidance is None:  # each mode's default
            guidance = INPAINT_GUIDANCE if args.keep is not None else TEXT_GUIDANCE if prompt is not None else 0.0
        if args.keep is not None:
            image = np.repeat(data.load_image(args.image, size)[None], n, axis=0)  # (n, S, S, 3)
            keep = np.tile(pictures.keep_mask(args.keep, args.image, mcfg.image_tokens, size), (n, 1))
            _, states = inpaint(model, vq, image, keep, prompt, dcfg, guidance, key=key)
        elif prompt is None:  # unconditional: pictures drawn with captions of their own
            states = unconditional(model, draw_caption_lengths(tokenizer, n, key=length_key), dcfg, guidance, key=key)
        else:  # text -> image
            states = generate(model, inputs(mcfg, n, text=prompt), dcfg, guidance, key=key)
        write_pictures(vq, states, mcfg, args.out, args.show_steps)
        if args.image is None and prompt is None:
            for ids in tokenizer_ids(mcfg, states[-1, :, mcfg.image_tokens:]):
                print(tokenizer.decode(ids))
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
