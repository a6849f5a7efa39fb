"""Sampling from UPGen with MaskGIT's iterative decoding: text->image, image->text, unconditional
pictures and captions, and text-guided inpainting, all from one model.

    python sample.py --prompt "a large red circle in the top left"   # writes samples.png
    python sample.py --image picture.png                              # prints captions
    python sample.py --image picture.png --keep 0,0,32,64 --prompt "a small blue square in the top left"
    python sample.py                                                  # unconditional pictures and their captions
    python sample.py --eval        # shapes-world accuracy of every mode (shapes.evaluate); --bench: decode cost

The decoder (first section) knows nothing about the model: it takes a tokens -> logits function.
Read upgen.py first for the sequence layout [image tokens | text tokens].
"""
import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import data
import upgen
import vqgan

# ---------------------------------------------------------------------------------------------------
# The decoder: start from a sequence with [MASK] where tokens are unknown; at each of T steps predict
# every unknown token at once, keep the most confident predictions and mask the rest again, fewer each
# step along a cosine schedule. Known tokens are never re-masked and never change.


@dataclass(frozen=True)
class DecodeConfig:
    steps: int = 12  # T: forward passes per sample (MaskGIT: 8-12)
    temperature: float = 1.0  # sampling temperature of each token; 0 = argmax
    choice_temperature: float = 4.5  # Gumbel noise on confidences (MaskGIT's ImageNet value), annealed to 0


def mask_ratio(progress):
    """MaskGIT's cosine schedule: the share of unknown tokens still masked after t/T of the steps."""
    return math.cos(math.pi / 2 * progress)


def masked_counts(n_unknown, steps):
    """Tokens still masked after each step: n_unknown int (B,) -> int32 (B, steps), ending at 0.

    floor(n * cos(pi/2 * t/T)) for t = 1..T, but at least one token fewer each step (MaskGIT's
    clamp), so a short sequence (n < T) is never left with a step that decides nothing."""
    n = jnp.asarray(n_unknown, jnp.int32)
    counts, previous = [], n
    for t in range(1, steps + 1):
        target = jnp.floor(n * mask_ratio(t / steps)).astype(jnp.int32)
        previous = jnp.maximum(jnp.minimum(target, previous - 1), 0)
        counts.append(previous)
    return jnp.stack(counts, axis=-1)  # (B, steps)


def sample_tokens(logits, temperature, *, key):
    """logits (B, L, V) -> token ids (B, L), sampled at this temperature (argmax at 0)."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    return jax.random.categorical(key, logits / temperature, axis=-1)


def decode(logits_fn, tokens, *, mask_id, cfg=DecodeConfig(), key):
    """Fills every mask_id of tokens (B, L) -> the sequence after each step (T, B, L); [-1] has no mask.

    logits_fn: (B, L) -> (B, L, V). It must give -inf (or a large negative logit) to ids a slot may not
    take, [MASK] included; the caller restricts image slots to image codes and text slots to words.
    The T steps run inside one lax.scan, so the whole decode is one compiled program."""
    counts = masked_counts((tokens == mask_id).sum(-1), cfg.steps)  # (B, T)

    def step(seq, inputs):
        t, step_key = inputs
        sample_key, choice_key = jax.random.split(step_key)
        logits = logits_fn(seq).astype(jnp.float32)  # (B, L, V)
        unknown = seq == mask_id  # (B, L)
        sampled = jnp.where(unknown, sample_tokens(logits, cfg.temperature, key=sample_key), seq)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        confidence = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]  # (B, L)
        # Gumbel noise makes the choice of what to keep random early on (temperature * (1 - t/T),
        # MaskGIT's annealing), so samples differ in layout, then greedy in confidence at the end.
        noise_scale = cfg.choice_temperature * (1 - (t + 1) / cfg.steps)
        confidence = confidence + noise_scale * jax.random.gumbel(choice_key, confidence.shape)
        confidence = jnp.where(unknown, confidence, jnp.inf)  # known tokens are never re-masked
        rank = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)  # (B, L) 0 = least confident
        # A rank, not a threshold: exactly counts[:, t] tokens stay masked, even when confidences tie.
        seq = jnp.where(rank < counts[:, t, None], mask_id, sampled)
        return seq, seq

    keys = jax.random.split(key, cfg.steps)
    _, states = jax.lax.scan(step, tokens, (jnp.arange(cfg.steps), keys))
    return states  # (T, B, L)


# ---------------------------------------------------------------------------------------------------
# The model as a tokens -> logits function, and the sequences of each mode


def allowed_ids(cfg):
    """bool (L, V): image slots take image codes only, text slots real text tokens only (no PAD/MASK)."""
    ids = jnp.arange(cfg.vocab_size)
    image = ids < cfg.image_codes
    text = ids >= cfg.image_codes + data.MASK + 1  # text ids start with PAD, MASK
    is_image_slot = jnp.arange(cfg.seq_len)[:, None] < cfg.image_tokens
    return jnp.where(is_image_slot, image[None], text[None])


def model_logits(model, tokens, guidance=0.0):
    """tokens (B, L) -> restricted logits (B, L, V). guidance > 0: classifier-free guidance on the text,
    logits + guidance * (logits - logits with every caption token masked)."""
    cfg = model.cfg
    logits = jax.vmap(model)(tokens)  # (B, L, V)
    if guidance:
        is_text = jnp.arange(cfg.seq_len) >= cfg.image_tokens
        no_text = jnp.where(is_text & (tokens != cfg.pad_id), cfg.mask_id, tokens)
        logits = logits + guidance * (logits - jax.vmap(model)(no_text))
    return jnp.where(allowed_ids(cfg), logits, -1e9)


@eqx.filter_jit
def generate(model, tokens, cfg, guidance=0.0, *, key):
    """Decode every [MASK] of tokens (B, L) -> states (T, B, L) in one compiled call."""
    return decode(lambda seq: model_logits(model, seq, guidance), tokens,
                  mask_id=model.cfg.mask_id, cfg=cfg, key=key)


def token_log_probs(model, seqs, targets):
    """log p(targets) at every slot of a forward pass on seqs (N, L) -> (N, L)."""
    log_probs = jax.nn.log_softmax(model_logits(model, seqs), axis=-1)  # (N, L, V)
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def length_prior(tokenizer):
    """log p(k) of a caption of k = 1..Nt tokens, from the training captions' lengths: float32 (Nt,).
    Lengths no training caption had get ~-20, so they are chosen only if nothing else is possible."""
    counts = np.asarray(tokenizer.caption_lengths or np.ones(tokenizer.length), np.float64)
    return jnp.asarray(np.log(np.maximum(counts / counts.sum(), 1e-9)), jnp.float32)


@eqx.filter_jit
def write_text(model, image_ids, prior, cfg, *, key):
    """Captions of pictures image_ids (B, Ni) -> text token ids (B, Nt), PAD-padded.

    [PAD] is never masked in training, so the model never says where a text ends: we choose the length.
    We decode a caption y for every length k = 1..Nt in one batch and keep the one with the best
        log p(k) + mean_i log p(y_i | picture, k, all text masked) + mean_j log p(x_j | y, all image masked):
    the prior (length_prior) rules out lengths no training caption had, where the model is
    confidently wrong (a 4-token "a big red circle" never names its place); the second term rejects
    captions the model finds unlikely for the picture at that length; the third rejects captions that
    say too little to redraw the picture x. Each term costs one more forward pass at most."""
    mcfg = model.cfg
    B, Ni, Nt = image_ids.shape[0], mcfg.image_tokens, mcfg.text_tokens
    lengths = jnp.arange(1, Nt + 1)  # (K,) candidate lengths, K = Nt
    used = jnp.arange(Nt)[None] < lengths[:, None]  # (K, Nt)
    text = jnp.where(used, mcfg.mask_id, mcfg.pad_id)  # (K, Nt)
    seqs = jnp.concatenate([jnp.broadcast_to(image_ids[:, None], (B, Nt, Ni)),
                            jnp.broadcast_to(text[None], (B, Nt, Nt))], axis=-1).reshape(B * Nt, -1)  # (B*K, L)
    decoded = generate(model, seqs, cfg, key=key)[-1]  # (B*K, L)
    text_score = token_log_probs(model, seqs, decoded)[:, Ni:].reshape(B, Nt, Nt)  # (B, K, Nt)
    text_score = jnp.where(used, text_score, 0).sum(-1) / lengths  # (B, K)
    image_score = token_log_probs(model, decoded.at[:, :Ni].set(mcfg.mask_id), decoded)[:, :Ni]
    score = prior[None] + text_score + image_score.mean(-1).reshape(B, Nt)  # (B, K)
    return tokenizer_ids(mcfg, decoded.reshape(B, Nt, -1)[jnp.arange(B), score.argmax(-1), Ni:])


def tokenizer_ids(mcfg, text):
    """Model ids of text slots (..., Nt) -> the text tokenizer's ids, PAD-padded."""
    return jnp.where(text == mcfg.pad_id, data.PAD, text - mcfg.image_codes)


@eqx.filter_jit
def unconditional(model, lengths, cfg, guidance=0.0, *, key):
    """Unconditional (picture, caption) pairs: caption lengths (n,) -> states (T, n, L) of the pictures' decode,
    each final state holding a picture and the caption it was drawn from.

    Ancestral sampling of p(x, y) = p(y) p(x | y): a joint decode of an all-[MASK] sequence draws the
    caption y (and a first picture, dropped), then the picture is drawn again from y alone, as text->image
    draws it, with the same classifier-free guidance on that caption. Drawing the picture directly with no
    caption (text slots PAD, as image-only training data) gives fewer valid shapes pictures."""
    mcfg = model.cfg
    text = jnp.where(jnp.arange(mcfg.text_tokens) < lengths[:, None], mcfg.mask_id, mcfg.pad_id)  # (n, Nt)
    seqs = jnp.concatenate([jnp.full((len(lengths), mcfg.image_tokens), mcfg.mask_id), text], axis=-1)  # (n, L)
    caption_key, picture_key = jax.random.split(key)
    captioned = generate(model, seqs, cfg, key=caption_key)[-1]
    return generate(model, captioned.at[:, :mcfg.image_tokens].set(mcfg.mask_id), cfg, guidance, key=picture_key)


def draw_caption_lengths(tokenizer, n, *, key):
    """n caption lengths drawn from the training captions' lengths: int32 (n,) in 1..Nt."""
    return jax.random.categorical(key, length_prior(tokenizer), shape=(n,)) + 1


def text_ids(tokenizer, prompt):
    """A prompt -> tokenizer ids (Nt,), with a note on stderr for what the model will not see."""
    words = set(tokenizer.words)
    unknown = list(dict.fromkeys(w for w in data.WORD.findall(prompt.lower()) if w not in words))
    if unknown:
        print(f"note: words the model never saw, spelled out in bytes: {' '.join(unknown[:10])}", file=sys.stderr)
    full = dataclasses.replace(tokenizer, length=len(prompt.encode("utf-8")) + 1).encode(prompt)
    if (full != data.PAD).sum() > tokenizer.length:
        print(f"note: the prompt is cut to its first {tokenizer.length} tokens", file=sys.stderr)
    return tokenizer.encode(prompt)


def inputs(cfg, n, image=None, text=None, keep=None):
    """Model tokens (n, L) with [MASK] in the slots to generate: image codes (Ni,) or (n, Ni) kept where keep
    ((Ni,) or (n, Ni)) is True (all when keep is None) else masked; text ids (Nt,) or (n, Nt), or PAD if None."""
    image_part = np.full(cfg.image_tokens, cfg.mask_id)
    if image is not None:
        image_part = np.where(True if keep is None else keep, image, cfg.mask_id)
    text_part = np.full(cfg.text_tokens, cfg.pad_id) if text is None else np.asarray(text) + cfg.image_codes
    parts = [np.broadcast_to(part, (n, part.shape[-1])) for part in (image_part, text_part)]
    return jnp.asarray(np.concatenate(parts, axis=-1), jnp.int32)


def keep_mask(box, image_path, cfg, size):
    """--keep x0,y0,x1,y1 in pixels of the image file -> bool (Ni,): tokens whose cell centre is in it."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box.split(","))
    except ValueError:
        raise ValueError(f"--keep wants x0,y0,x1,y1 in pixels, got {box!r}") from None
    with Image.open(image_path) as opened:
        w, h = opened.size
    side = min(w, h)  # data.load_image takes the centre square, then resizes it to size x size
    scale, dx, dy = size / side, (w - side) // 2, (h - side) // 2
    grid = int(math.isqrt(cfg.image_tokens))
    centre = (np.arange(grid) + 0.5) * size / grid  # cell centres, model pixels
    inside_x = (centre >= (x0 - dx) * scale) & (centre <= (x1 - dx) * scale)
    inside_y = (centre >= (y0 - dy) * scale) & (centre <= (y1 - dy) * scale)
    keep = (inside_y[:, None] & inside_x[None, :]).reshape(-1)  # raster order, as the VQGAN's tokens
    if not keep.any():
        raise ValueError(f"--keep {box} holds no token centre; the image is {w}x{h} pixels")
    return keep


# ---------------------------------------------------------------------------------------------------
# Pictures out


def pictures(vq, states, cfg):
    """States (..., L) -> uint8 pictures (..., H, W, 3); still-masked cells painted grey."""
    image = np.asarray(states)[..., :cfg.image_tokens]
    masked = image == cfg.mask_id
    flat = np.where(masked, 0, image).reshape(-1, cfg.image_tokens)
    out = vqgan.decode_tokens(vq, flat)  # (N, H, W, 3)
    out = np.where(cell_pixels(masked.reshape(-1, cfg.image_tokens), out.shape[1]), 128, out).astype(np.uint8)
    return out.reshape(*image.shape[:-1], *out.shape[1:])


def cell_pixels(cells, size):
    """bool (B, Ni) per token cell, raster order -> bool (B, size, size, 1) per pixel of a size x size picture."""
    grid = int(math.isqrt(cells.shape[-1]))
    return np.repeat(np.repeat(cells.reshape(-1, grid, grid), size // grid, 1), size // grid, 2)[..., None]


def save_grid(images, path):
    """uint8 (rows, cols, H, W, 3) -> one PNG with a 2-pixel white gap between pictures."""
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=255)
    rows = [np.concatenate(list(row), axis=1) for row in padded]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------
# Text-guided inpainting

INPAINT_GUIDANCE = 1.0  # on the shapes eval's inpainting, 1 draws the prompt right more often than 0 or 3


def inpaint(model, vq, images, keep, text, cfg, guidance=INPAINT_GUIDANCE, *, key):
    """Redraws the cells of images uint8 (B, S, S, 3) where keep (B, Ni) is False as text ids (B, Nt) say
    -> (the tokens (B, L) of the last pass, its states (T, B, L)); the last state holds those kept tokens.

    The VQGAN encoder sees the whole picture (its convolutions reach ~6 tokens, its GroupNorm all of them),
    so the tokens of the cells to keep carry traces of what the region held, and the model follows them
    over the prompt. So the first pass encodes the picture with the region painted over in the kept
    pixels' median colour, and the second encodes the kept pixels beside the first pass's drawing: its
    kept tokens describe the kept pixels in the company of what the prompt asks for."""
    size = images.shape[1]
    kept = cell_pixels(keep, size)  # (B, S, S, 1)
    fill = np.stack([np.median(image[cells[..., 0]], axis=0) for image, cells in zip(images, kept)])  # (B, 3)
    redrawn = np.where(kept, images, fill[:, None, None].astype(np.uint8))
    for pass_key in jax.random.split(key, 2):
        tokens = inputs(model.cfg, len(images), vqgan.encode_images(vq, redrawn), text, keep)
        states = generate(model, tokens, cfg, guidance, key=pass_key)
        redrawn = np.where(kept, images, pictures(vq, states[-1], model.cfg))
    return tokens, states


# ---------------------------------------------------------------------------------------------------
# The benchmark


def bench(model, cfg, n, *, key, repeats=3):
    """Times the compiled T-step decode against T separate forward passes of the same batch (best of 3)."""
    seqs = inputs(model.cfg, n)
    forward = eqx.filter_jit(lambda m, s: model_logits(m, s))

    def best_time(f):
        jax.block_until_ready(f())  # compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(f())
            times.append(time.perf_counter() - start)
        return min(times)

    loop = best_time(lambda: generate(model, seqs, cfg, key=key))
    passes = best_time(lambda: [forward(model, seqs) for _ in range(cfg.steps)])
    print(f"batch {n}, {cfg.steps} steps on {jax.devices()[0].platform}: compiled decode {loop * 1e3:.0f} ms, "
          f"{cfg.steps} single forward passes {passes * 1e3:.0f} ms, ratio {loop / passes:.2f}")


# ---------------------------------------------------------------------------------------------------
# Command line


def load(ckpt):
    """-> (UPGen, text tokenizer, VQGAN) from a folder holding upgen.eqx and vqgan.eqx."""
    try:
        model, tokenizer = upgen.load_upgen(Path(ckpt) / "upgen.eqx")
        vq = vqgan.load_vqgan(Path(ckpt) / "vqgan.eqx")
    except (ValueError, OSError) as e:
        raise ValueError(f"{e}; make a checkpoint with `python train.py --out {ckpt}`") from None
    if (vq.cfg.codebook_size, vq.cfg.tokens_per_side ** 2) != (
            model.cfg.image_codes, model.cfg.image_tokens):
        raise ValueError(f"{ckpt}: vqgan.eqx and upgen.eqx do not belong together (codebook or token count differ)")
    return model, tokenizer, vq


def run(args):
    if args.n < 1 or args.steps < 1:
        raise ValueError("--n and --steps must be at least 1")
    if args.keep is not None and args.image is None:
        raise ValueError("--keep needs --image: it says which part of that image to keep")
    if args.image and args.prompt is not None and args.keep is None:
        raise ValueError("--image with --prompt is inpainting: add --keep x0,y0,x1,y1, the part of the image to keep")
    model, tokenizer, vq = load(args.ckpt)
    cfg = DecodeConfig(args.steps, args.temperature, args.choice_temperature)
    mcfg, size = model.cfg, vq.cfg.image_size
    key = jax.random.key(args.seed)
    if args.eval:
        import shapes  # the shapes eval builds on this file
        return shapes.evaluate(model, tokenizer, vq, cfg, key=key)
    if args.bench:
        return bench(model, cfg, args.n, key=key)
    prompt = None
    if args.prompt is not None:
        if args.prompt.strip():
            prompt = text_ids(tokenizer, args.prompt)
        else:
            print("note: empty prompt, so the pictures are unconditional", file=sys.stderr)
    length_key, key = jax.random.split(key)
    if args.image and args.keep is None:  # image -> text
        codes = vqgan.encode_images(vq, data.load_image(args.image, size)[None])
        for ids in write_text(model, jnp.tile(jnp.asarray(codes), (args.n, 1)), length_prior(tokenizer), cfg, key=key):
            print(tokenizer.decode(ids))
        return
    guidance = args.guidance
    if guidance is None:  # each mode's default
        guidance = INPAINT_GUIDANCE if args.keep is not None else 0.0
    unconditional_pairs = args.image is None and prompt is None  # pictures drawn with captions of their own
    if unconditional_pairs:
        states = unconditional(model, draw_caption_lengths(tokenizer, args.n, key=length_key), cfg, guidance, key=key)
    elif args.keep is not None:
        image = np.repeat(data.load_image(args.image, size)[None], args.n, axis=0)  # (n, S, S, 3)
        keep = np.tile(keep_mask(args.keep, args.image, mcfg, size), (args.n, 1))
        _, states = inpaint(model, vq, image, keep, prompt, cfg, guidance, key=key)
    else:  # text -> image
        states = generate(model, inputs(mcfg, args.n, text=prompt), cfg, guidance, key=key)
    save_grid(pictures(vq, states[-1:], mcfg), args.out)
    if args.show_steps:
        steps_path = Path(args.out).with_name(Path(args.out).stem + "_steps.png")
        save_grid(pictures(vq, jnp.swapaxes(states, 0, 1), mcfg), steps_path)
    if unconditional_pairs:
        for ids in tokenizer_ids(mcfg, states[-1, :, mcfg.image_tokens:]):
            print(tokenizer.decode(ids))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", help="text -> image: the caption to draw (with --image and --keep: inpaint)")
    parser.add_argument("--image", help="image -> text: a picture to caption (with --keep: inpaint it)")
    parser.add_argument("--keep", help="inpainting: x0,y0,x1,y1 box in pixels of --image to keep "
                        "(the token cells whose centres it holds); the rest is redrawn")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale on the prompt, or on an "
                        "unconditional picture's own caption (0: off; default: "
                        f"{INPAINT_GUIDANCE} when inpainting, else 0)")
    parser.add_argument("--n", type=int, default=4, help="how many samples")
    parser.add_argument("--steps", type=int, default=DecodeConfig.steps, help="decoding steps T")
    parser.add_argument("--temperature", type=float, default=1.0, help="token sampling temperature (0: argmax)")
    parser.add_argument("--choice-temperature", type=float, default=DecodeConfig.choice_temperature,
                        help="Gumbel noise on the confidences that pick which tokens to keep, annealed to 0")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same samples")
    parser.add_argument("--ckpt", default="checkpoints/shapes", help="folder with upgen.eqx and vqgan.eqx")
    parser.add_argument("--out", default="samples.png", help="where to write the grid of pictures")
    parser.add_argument("--show-steps", action="store_true",
                        help="also write <out>_steps.png: every step of each sample")
    parser.add_argument("--eval", action="store_true",
                        help="shapes-world accuracy of text->image, image->text, unconditional, inpainting")
    parser.add_argument("--bench", action="store_true",
                        help="time the compiled decode against --steps single forward passes")
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
