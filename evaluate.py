"""Evals of every sampling mode of a trained UPGen: draw, then read the pictures and captions back.

On the shapes world, shapes.read_picture and shapes.parse_caption read pictures and captions back exactly, so
text->image, image->text, unconditional sampling and text-guided inpainting each get an accuracy. On any data, the
run's held-out pairs (shards.py keeps them out of training) give the validation loss train.py logs; their pictures
are captioned; their captions are drawn, and each drawing read by a reader that is not the
model, the captions of its nearest training pictures; and when the captions take a few forms only (a class each),
each picture is given the caption the model finds likeliest: zero-shot classification.

    python evaluate.py                      # the shipped model (checkpoints/shapes): a few minutes on 2 cores
    python evaluate.py --ckpt runs/shapes   # yours, from train.py
    python evaluate.py --ckpt runs/mine     # a run on your own pictures: its held-out pairs (below)

Sections: the shapes world, any folder's held-out pairs, the command line.
Read next: probe.py.
"""
import argparse
import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import config
import data
import pictures
import sample
import shapes
import shards
import train
import upgen
import vocab
import vqgan

# ---------------------------------------------------------------------------------------------------
# The shapes world


@dataclass(frozen=True)
class ShapesEvalConfig:
    prompts: int = 180  # canonical prompts drawn (text->image): all 180 descriptions, or that many chosen at random
    captioned: int = 100  # fresh pictures captioned (image->text)
    unconditional: int = 500  # unconditional (picture, caption) pairs drawn
    inpainted: int = 200  # fresh inpainting tasks
    batch: int = 256  # sequences per compiled decode; image->text decodes 3 captions a picture: batch // 8

    def __post_init__(self):
        config.check(self, [(name, getattr(self, name) >= 1, "must be at least 1") for name in
                            ("prompts", "captioned", "unconditional", "inpainted")] + [
            ("prompts", self.prompts <= len(DESCRIPTIONS), f"must be at most the {len(DESCRIPTIONS)} descriptions"),
            ("batch", self.batch >= 8, "must be >= 8")])


CAPTION_SEED, INPAINT_SEED = 20261125, 20261126  # fresh pictures: no training run uses these seeds
KEPT_TOLERANCE = 50  # grey levels: the VQGAN redraws a fresh picture's plain border up to ~35 off, while any
#                     part of a shape is over 100 off the background (read_picture's foreground threshold)
DESCRIPTIONS = list(itertools.product(*(range(len(names)) for names in
                                        (shapes.SHAPES, shapes.COLOURS, shapes.SIZES, shapes.POSITIONS))))  # 180


def inpainting_cases(n, seed, cfg=shapes.ShapesConfig(), grid=8):
    """n fresh inpainting tasks -> (pictures uint8 (n, S, S, 3), keep bool (n, grid * grid), prompt labels (n, 4)).

    Each picture has its shape at a corner. A band of token rows or columns on that shape's side is redrawn,
    deep enough that a large shape at a corner fits inside it (so the kept rest holds no shape), and the
    prompt asks for another shape, colour and size at the band's other corner."""
    rng = np.random.default_rng(seed)
    reach = (shapes.ANCHORS[0, 0] + max(shapes.SPAN[0]) / 2) * cfg.image_size + cfg.jitter  # 36.6 pixels
    band = math.ceil(reach * grid / cfg.image_size)  # 5 of 8 token rows or columns
    y, x = np.mgrid[:grid, :grid]
    images, keeps, prompts = [], [], []
    for _ in range(n):
        shape, colour, size, corner = (int(rng.integers(k)) for k in (3, 6, 2, 4))  # corners are positions 0-3
        rows = bool(rng.integers(2))  # redraw the top or bottom rows, else the left or right columns
        along, far = (y, corner // 2) if rows else (x, corner % 2)  # far: the shape is on the bottom or right
        keeps.append(((along < grid - band) if far else (along >= band)).reshape(-1))
        other = corner ^ 1 if rows else corner ^ 2  # the band's other corner: flip left-right or top-bottom
        prompts.append(((shape + rng.integers(1, 3)) % 3, (colour + rng.integers(1, 6)) % 6, 1 - size, other))
        images.append(shapes.render((shape, colour, size, corner), rng, cfg))
    return np.stack(images), np.stack(keeps), np.array(prompts, np.int32)


def draw(vq, mcfg, f, x, batch, *, key):
    """f(chunk of x, key) -> states, in batches -> (final states (n, L), what read_picture sees in each)."""
    finals = data.in_batches(lambda chunk, k: f(chunk, k)[-1], x, batch, key=key)
    return finals, [shapes.read_picture(p) for p in sample.from_tokens(vq, finals, mcfg)]


def text_to_image(model, tokenizer, vq, dcfg, n, batch, *, key):
    """-> share of n of the 180 canonical prompts (all of them, or n chosen by a fixed seed) drawn with all four
    attributes right."""
    chosen = [DESCRIPTIONS[i] for i in sorted(np.random.default_rng(0).permutation(len(DESCRIPTIONS))[:n])]
    texts = np.stack([tokenizer.encode(shapes.canonical_caption(labels)) for labels in chosen])
    prompts = sample.inputs(model.cfg, n, text=texts)  # (n, L)
    drawn = lambda seqs, k: sample.generate(model, seqs, dcfg, sample.TEXT_GUIDANCE, key=k)  # noqa: E731
    _, read = draw(vq, model.cfg, drawn, prompts, batch, key=key)
    return float(np.mean([r == labels for r, labels in zip(read, chosen)]))


def image_to_text(model, tokenizer, vq, dcfg, n, batch, *, key):
    """-> (share of n fresh pictures captioned with all four attributes right, the first caption)."""
    images, _, labels = shapes.examples(n, seed=CAPTION_SEED, varied=False)
    prior = sample.length_prior(tokenizer)
    texts = data.in_batches(lambda c, k: sample.write_text(model, c, prior, dcfg, key=k),
                            vqgan.encode_images(vq, images), batch, key=key)
    captions = [tokenizer.decode(t) for t in texts]
    return float(np.mean([shapes.parse_caption(c) == tuple(lab) for c, lab in zip(captions, labels)])), captions[0]


def unconditional(model, tokenizer, vq, dcfg, n, batch, *, key):
    """-> (share of n unconditional pictures that are valid shapes pictures, how many of the 180 descriptions
    they show, share of the valid ones whose caption, drawn with them, names what they show)."""
    mcfg = model.cfg
    length_key, key = jax.random.split(key)
    finals, read = draw(vq, mcfg, lambda lengths, k: sample.unconditional(model, lengths, dcfg, key=k),
                        sample.draw_caption_lengths(tokenizer, n, key=length_key), batch, key=key)
    valid = [r for r in read if r is not None]
    said = [shapes.parse_caption(tokenizer.decode(t))
            for t in sample.tokenizer_ids(mcfg, finals[:, mcfg.image_tokens:])]
    matches = [s == r for s, r in zip(said, read) if r is not None]
    return len(valid) / n, len(set(valid)), float(np.mean(matches)) if matches else 0.0  # no valid one: none match


def inpainting(model, tokenizer, vq, dcfg, n, *, key):
    """-> shares of n fresh inpainting tasks (all right, the prompt drawn right, kept tokens identical, kept
    pixels within KEPT_TOLERANCE of the picture); all right is the prompt right and the kept part unchanged."""
    mcfg = model.cfg
    images, keep, labels = inpainting_cases(n, seed=INPAINT_SEED)
    texts = np.stack([tokenizer.encode(shapes.canonical_caption(lab)) for lab in labels])
    tokens, states = sample.inpaint(model, vq, images, keep, texts, dcfg, key=key)
    drawn = sample.from_tokens(vq, states[-1], mcfg)
    right = np.array([shapes.read_picture(p) == tuple(lab) for p, lab in zip(drawn, labels)])
    kept = pictures.cell_pixels(keep, images.shape[1])[..., 0]  # (n, S, S)
    same_tokens = np.all((states[-1] == tokens)[:, :mcfg.image_tokens] | ~keep, axis=1)
    same_pixels = np.all((np.abs(drawn.astype(int) - images).max(-1) <= KEPT_TOLERANCE) | ~kept, axis=(1, 2))
    return tuple(float(x.mean()) for x in (right & same_tokens & same_pixels, right, same_tokens, same_pixels))


def shapes_eval(model, tokenizer, vq, dcfg, *, key, ecfg=ShapesEvalConfig()):
    """Every sampling mode on the shapes world -> its figures: shares in [0, 1], counts, an example, seconds."""
    start = time.perf_counter()
    t2i_key, i2t_key, uncond_key = jax.random.split(key, 3)
    figures = {"text->image": text_to_image(model, tokenizer, vq, dcfg, ecfg.prompts, ecfg.batch, key=t2i_key)}
    # write_text decodes a caption at each of 3 lengths per picture: the pictures go in smaller batches
    figures["image->text"], figures["example caption"] = image_to_text(
        model, tokenizer, vq, dcfg, ecfg.captioned, ecfg.batch // 8, key=i2t_key)
    uncond = unconditional(model, tokenizer, vq, dcfg, ecfg.unconditional, ecfg.batch, key=uncond_key)
    figures.update(zip(("unconditional valid", "unconditional descriptions", "unconditional match"), uncond))
    inpainted = inpainting(model, tokenizer, vq, dcfg, ecfg.inpainted, key=jax.random.fold_in(key, 3))
    figures.update(zip(("inpainting", "inpainting right", "kept tokens", "kept pixels"), inpainted))
    figures["seconds"] = time.perf_counter() - start
    return figures


def print_shapes_eval(f, ecfg=ShapesEvalConfig()):
    """Prints shapes_eval's figures f, one line per mode."""
    print(f"text->image: {f['text->image']:.1%} of {ecfg.prompts} canonical prompts drawn with all four attributes "
          "right")
    print(f"image->text: {f['image->text']:.1%} of captions of {ecfg.captioned} fresh pictures name all four "
          f"attributes (e.g. {f['example caption']!r})")
    print(f"unconditional: {f['unconditional valid']:.1%} of {ecfg.unconditional} pictures valid, "
          f"{f['unconditional descriptions']} of the {len(DESCRIPTIONS)} descriptions appear, "
          f"{f['unconditional match']:.1%} of the valid ones match the caption drawn with them")
    print(f"inpainting: {f['inpainting']:.1%} of {ecfg.inpainted} fresh pictures redrawn with all four attributes "
          f"of the prompt right and the kept part unchanged ({f['inpainting right']:.1%} right; kept tokens "
          f"identical in {f['kept tokens']:.0%}, kept pixels within {KEPT_TOLERANCE} grey levels of the picture "
          f"in {f['kept pixels']:.0%}) ({f['seconds']:.0f} s for the whole eval)")


# ---------------------------------------------------------------------------------------------------
# Any folder: the run's held-out pairs (shards.held_out_rows), which no tokenizer and no step trained on

EVAL_PAIRS = 500  # held-out pairs an eval reads at most (a run's own report at its end reads fewer)


def caption_scores(written, wanted):
    """Tokenizer ids (n, Nt) written and wanted -> (share of captions exactly right, share of the wanted tokens
    written in their place)."""
    real = wanted != vocab.PAD
    return float(np.all(written == wanted, axis=1).mean()), float(((written == wanted) & real).sum() / real.sum())


READER_PICTURES = 5000  # training pairs the nearest-picture reader compares a picture with, spread over the shards
READER_NEIGHBOURS = 5  # the nearest training pictures whose captions vote on what a picture shows


def nearest_captions(vq, codes, references, k=READER_NEIGHBOURS):
    """A reader that is not the model: what pictures codes (n, Ni) show, read as the commonest caption of their k
    nearest training pairs references (m, Ni + Nt), by Euclidean distance between the pictures' codebook vectors
    (ties go to the nearest) -> tokenizer ids (n, Nt)."""
    Ni, book = codes.shape[1], np.asarray(vq.quantizer.codebook)  # (K, D)
    square = (book ** 2).sum(1)
    table = square[:, None] - 2 * book @ book.T + square[None]  # (K, K) squared distances between codes
    x, y = np.asarray(codes, int), np.asarray(references[:, :Ni], int)
    distances = sum(table[x[:, i, None], y[None, :, i]] for i in range(Ni))  # (n, m), memory (n, m) whatever Ni
    votes = [[tuple(c) for c in references[row, Ni:]] for row in np.argsort(distances, axis=1)[:, :k]]
    return np.array([max(v, key=v.count) for v in votes])  # max keeps the first, nearest, of equal counts


def read_by_nearest(vq, drawn, rows, references, seed=0):
    """Shares of pictures whose nearest_captions are the held-out pairs rows' captions: pictures drawn (n, Ni) from
    those captions; the held-out pictures themselves (the reader's ceiling); random training pictures (chance)."""
    Ni, captions = drawn.shape[1], rows[:, drawn.shape[1]:]
    random = references[np.random.default_rng(seed).integers(len(references), size=len(rows)), :Ni]
    return {name: caption_scores(nearest_captions(vq, codes, references), captions)[0] for name, codes in
            (("text->image read by nearest pictures", drawn), ("nearest pictures: held-out pictures", rows[:, :Ni]),
             ("nearest pictures: random pictures", random))}


ZERO_SHOT_CAPTIONS = 100  # a run whose captions take at most this many forms gets zero-shot classification


@eqx.filter_jit
def caption_log_likelihoods(model, codes, candidates, prior):
    """log p(caption | picture) of every candidate caption (C, Nt) for each picture codes (B, Ni): the log-prior of
    its length (sample.length_prior) plus its words' log-probabilities, all hidden at once as image->text begins
    -> float32 (B, C)."""
    mcfg, (B, C) = model.cfg, (len(codes), len(candidates))
    real = candidates != vocab.PAD  # (C, Nt)
    hidden = upgen.make_sequence(codes[:, None], jnp.where(real, vocab.MASK, vocab.PAD), mcfg)  # (B, C, L)
    wanted = upgen.make_sequence(codes[:, None], candidates, mcfg)  # (B, C, L)
    log_p = sample.token_log_probs(model, hidden.reshape(B * C, -1), wanted.reshape(B * C, -1))  # (B * C, L)
    words = jnp.where(real, log_p[:, mcfg.image_tokens:].reshape(B, C, -1), 0).sum(-1)  # (B, C)
    return prior[jnp.maximum(real.sum(1), 1) - 1] + words


def caption_classes(rows, references, Ni):
    """Held-out pairs rows (n, Ni + Nt) and training pairs references (m, Ni + Nt) -> (their distinct captions
    (C, Nt), the class of each row of rows then references (n + m,))."""
    candidates, classes = np.unique(np.concatenate([rows, references])[:, Ni:], axis=0, return_inverse=True)
    return candidates, classes.reshape(-1)


def zero_shot(model, tokenizer, rows, references, batch=8):
    """Zero-shot classification of the held-out pairs rows (n, Ni + Nt) when the captions of rows and of the
    training pairs references take at most ZERO_SHOT_CAPTIONS forms: each picture gets the one of highest
    caption_log_likelihoods -> {share right, share of the commonest training caption: chance, candidates}, or {}."""
    Ni = model.cfg.image_tokens
    candidates, classes = caption_classes(rows, references, Ni)
    if len(candidates) > ZERO_SHOT_CAPTIONS:
        return {}
    truth, commonest = classes[:len(rows)], np.bincount(classes[len(rows):]).argmax()
    prior, candidates = sample.length_prior(tokenizer), jnp.asarray(candidates, jnp.int32)
    scores = data.in_batches(lambda c, _: caption_log_likelihoods(model, c, candidates, prior),
                             np.asarray(rows[:, :Ni], np.int32), batch, key=jax.random.key(0))  # (n, C)
    return {"zero-shot": float(np.mean(scores.argmax(1) == truth)), "zero-shot chance": float(np.mean(
        truth == commonest)), "candidates": len(candidates)}


def held_out_eval(model, tokenizer, vq, rows, references, dcfg, *, key, batch=32):
    """Held-out pairs rows (n, Ni + Nt), training pairs references (m, Ni + Nt) -> the validation loss;
    image->text: the held-out pictures captioned, exactly right and word by word; text->image: pictures drawn from
    their captions (guidance sample.TEXT_GUIDANCE), decoded to pixels and encoded again, then read by the nearest
    training pictures (read_by_nearest) and captioned back by the model, exactly right; zero-shot classification."""
    start, mcfg = time.perf_counter(), model.cfg
    codes, captions = np.asarray(rows[:, :mcfg.image_tokens], np.int32), np.asarray(rows[:, mcfg.image_tokens:], int)
    prior = sample.length_prior(tokenizer)
    caption = lambda c, k: sample.write_text(model, c, prior, dcfg, key=k)  # noqa: E731
    i2t_key, t2i_key, back_key = jax.random.split(key, 3)
    exact, words = caption_scores(data.in_batches(caption, codes, batch, key=i2t_key), captions)
    drawn = data.in_batches(lambda s, k: sample.generate(model, s, dcfg, sample.TEXT_GUIDANCE, key=k)[-1],
                            sample.inputs(mcfg, len(rows), text=captions), 8 * batch, key=t2i_key)  # (n, L)
    again = vqgan.encode_images(vq, sample.from_tokens(vq, drawn, mcfg))  # (n, Ni)
    back, _ = caption_scores(data.in_batches(caption, again, batch, key=back_key), captions)
    validation = {k: float(v) for k, v in train.validation_loss(model, rows).items()}
    return {"pairs": len(rows), **validation, "image->text exact": exact, "image->text words": words,
            **read_by_nearest(vq, again, rows, references), "text->image captioned back": back,
            **zero_shot(model, tokenizer, rows, references), "seconds": time.perf_counter() - start}


def held_out_lines(f):
    """held_out_eval's figures f -> one line per question, the first naming the pairs."""
    lines = [f"held-out pairs ({f['pairs']}, {f['seconds']:.0f} s): validation loss {f['val_image_loss']:.3f} nats "
             f"per masked image token, {f['val_text_loss']:.3f} per masked caption token",
             f"image->text: {f['image->text exact']:.1%} of the held-out pictures captioned exactly right, "
             f"{f['image->text words']:.1%} of words",
             f"text->image: {f['text->image read by nearest pictures']:.1%} of the pictures drawn from held-out "
             f"captions read as their prompt by the captions of their {READER_NEIGHBOURS} nearest training pictures "
             f"(the held-out pictures themselves: {f['nearest pictures: held-out pictures']:.1%}, random training "
             f"pictures: {f['nearest pictures: random pictures']:.1%}); {f['text->image captioned back']:.1%} "
             "captioned back exactly with their prompt by the model that drew them"]
    if "zero-shot" in f:
        lines.append(f"zero-shot: {f['zero-shot']:.1%} of the held-out pictures given their own caption of the "
                     f"{f['candidates']} the run's captions take, by the model's likelihood of each (the commonest "
                     f"caption for all: {f['zero-shot chance']:.1%})")
    return lines


# ---------------------------------------------------------------------------------------------------
# Command line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="checkpoints/shapes", help="folder with upgen.eqx and vqgan.eqx")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same figures")
    sample.decode_flags(p)
    for name, help in [("prompts", f"canonical prompts to draw (text->image), at most the {len(DESCRIPTIONS)}"),
                       ("captioned", "fresh pictures to caption (image->text)"),
                       ("unconditional", "unconditional (picture, caption) pairs to draw"),
                       ("inpainted", "fresh inpainting tasks")]:
        config.flag(p, ShapesEvalConfig(), name, help)
    p.add_argument("--shards", help="the run's token shards, whose held-out pairs are read (default: CKPT/shards)")
    args = p.parse_args(argv)
    folder = Path(args.shards or Path(args.ckpt) / "shards")
    shapes_world = not folder.exists() or (Path(args.ckpt) / "shapes").exists()  # train.py renders shapes there
    figures, key = {}, jax.random.key(args.seed)
    try:
        dcfg = sample.DecodeConfig(**config.fields_of(sample.DecodeConfig, args))
        ecfg = ShapesEvalConfig(**config.fields_of(ShapesEvalConfig, args))
        model, tokenizer, vq = upgen.load_run(args.ckpt)
        rows = shards.held_out_rows(folder, EVAL_PAIRS) if not shapes_world else []
        if len(rows):  # the shapes world's captions vary in wording: its own eval below reads what they say
            references = shards.held_out_rows(folder, READER_PICTURES, training=True)
            figures["held out"] = held_out_eval(model, tokenizer, vq, rows, references, dcfg, key=key)
            print("\n".join(held_out_lines(figures["held out"])), flush=True)
        if shapes_world and vq.cfg.image_size != shapes.ShapesConfig().image_size:
            raise ValueError(f"{args.ckpt} takes {vq.cfg.image_size}px images, not the shapes world's "
                             f"{shapes.ShapesConfig().image_size}px pictures")
        if shapes_world:
            figures.update(shapes_eval(model, tokenizer, vq, dcfg, key=key, ecfg=ecfg))
            print_shapes_eval(figures, ecfg)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    return figures


if __name__ == "__main__":
    main()
