"""Training a small image tokenizer (vqgan.py's VQGAN) from scratch, by default on the shapes world.

The loss is VQ-VAE's (reconstruction, codebook and commitment terms) plus a term on neighbouring-pixel
differences that keeps outlines sharp; codes that go unused are restarted on the encoder's latents.
    python vqgan_train.py               # train a 64x64 -> 8x8 shapes tokenizer, 5000 steps, into runs/shapes
    python vqgan_train.py --out checkpoints/shapes/vqgan.eqx --eval-only    # evaluate the shipped one
The evaluation renders held-out pictures; `pytest -m slow` checks that the default run reaches PSNR >= 30 dB,
at least 25% of the codes used and at most 1% of 2000 held-out pictures misread (tests/test_vqgan_train.py).
Its last part chooses a run's image tokenizer for train.py (image_tokenizer): the one given, the shipped shapes
tokenizer, or one trained here on the run's own pictures. Read next: shards.py.
"""
import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import checkpoint
import config
import data
import shapes
import vqgan

HELD_OUT_SEED = 12345  # pictures no tokenizer trains on (training uses seed 0 by default)


@dataclass(frozen=True)
class VQGANTrainConfig:
    steps: int = 5000  # optimizer steps: the same steps give the same tokenizer on any machine
    batch_size: int = 4  # pictures per step: on a CPU, many small steps beat few large ones
    lr: float = 4e-3  # Adam's peak learning rate (linear warmup, then cosine decay to 0 at the end of the run)
    warmup: int = 20  # steps of learning-rate warmup
    commitment: float = 0.25  # beta: how strongly the encoder is pulled towards its codes
    # weight of the squared error of neighbouring-pixel differences, which puts a shape's outline (a small
    # square's corners, a triangle's tip) far above the flat background
    edge_weight: float = 1.0
    adam_betas: tuple[float, float] = (0.5, 0.9)  # taming-transformers' betas; the usual ones made runs unstable here
    restart_every: int = 50  # every this many steps, codes unused since the last check move onto latents
    train_pictures: int = 20_000  # size of the training pool: shapes rendered once, or of a run's own pictures read
    seed: int = 0  # seed of the weights and the training pictures

    def __post_init__(self):
        config.check(self, [(name, getattr(self, name) >= 1, "must be at least 1") for name in
                            ("steps", "batch_size", "warmup", "restart_every", "train_pictures")] + [
            (name, getattr(self, name) >= 0, "must be at least 0") for name in ("commitment", "edge_weight")]
            + [("lr", self.lr > 0, "must be positive")])


def pixel_differences(x):  # (B, C, H, W) -> (B, C, H, W-1) across, (B, C, H-1, W) down
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def vq_loss(vq, images, tcfg):
    """images float (B, 3, H, W) in [0, 1], tcfg: VQGANTrainConfig -> (loss, (reconstruction MSE, ids (B, h, w),
    latents (B, h, w, D)))."""
    recon, z, q, ids = jax.vmap(vq)(images)
    reconstruction = jnp.mean((recon - images) ** 2)
    edges = sum(jnp.mean((r - x) ** 2) for r, x in zip(pixel_differences(recon), pixel_differences(images)))
    codebook = jnp.mean((q - jax.lax.stop_gradient(z)) ** 2)  # moves codes towards the encoder's outputs
    commit = jnp.mean((jax.lax.stop_gradient(q) - z) ** 2)  # keeps the encoder near its codes
    loss = reconstruction + tcfg.edge_weight * edges + codebook + tcfg.commitment * commit
    return loss, (reconstruction, ids, jnp.moveaxis(z, 1, -1))


@eqx.filter_jit(donate="all-except-first")
def train_step(optimizer, vq, opt_state, images, lr, tcfg):
    x = jnp.moveaxis(images.astype(jnp.float32) / 255, -1, 1)  # uint8 (B, H, W, 3) -> (B, 3, H, W)
    (loss, aux), grads = eqx.filter_value_and_grad(vq_loss, has_aux=True)(vq, x, tcfg)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(vq, eqx.is_inexact_array))
    return eqx.apply_updates(vq, jax.tree.map(lambda u: -lr * u, updates)), opt_state, loss, aux


def restart_dead_codes(vq, used, latents, rng):
    """Move every code not used since the last check onto a random latent of the current batch.
    In numpy: the number of dead codes changes every time, and each new shape would compile anew."""
    dead = np.flatnonzero(~used)
    flat = np.asarray(latents).reshape(-1, latents.shape[-1])  # (B*h*w, D)
    codebook = np.array(vq.quantizer.codebook)
    codebook[dead] = flat[rng.choice(len(flat), len(dead), replace=len(dead) > len(flat))]
    return eqx.tree_at(lambda m: m.quantizer.codebook, vq, jnp.asarray(codebook))


def psnr(images, again):
    """Peak signal-to-noise ratio in dB of uint8 pictures `again` against `images`, all pixels pooled."""
    return 10 * np.log10(255 ** 2 / np.mean((again.astype(np.float64) - images) ** 2))


def evaluate(vq, images, labels, batch=100):
    """-> (PSNR in dB over all pictures pooled, fraction of codes used, fraction of pictures whose reconstruction
    shapes.read_picture reads as the same 4 attributes, mean number of distinct tokens in a picture).
    The last is how hard the tokens are for UPGen: a plain background should take few distinct codes."""
    ids = vqgan.encode_images(vq, images, batch)
    recon = vqgan.decode_tokens(vq, ids, batch)
    kept = np.mean([shapes.read_picture(r) == tuple(l) for r, l in zip(recon, labels.tolist())])
    distinct = np.mean([len(np.unique(row)) for row in ids])
    return psnr(images, recon), len(np.unique(ids)) / vq.cfg.codebook_size, kept, distinct


def train_vqgan(out_path, cfg=vqgan.VQGANConfig(), tcfg=VQGANTrainConfig(), images=None):
    """Train a tokenizer on images (uint8 (N, S, S, 3); default: shapes pictures), save it at out_path, return it."""
    if images is None:
        images = shapes.examples(tcfg.train_pictures, seed=tcfg.seed, cfg=shapes.ShapesConfig(cfg.image_size))[0]
    vq = vqgan.init_vqgan(cfg, seed=tcfg.seed)
    optimizer = optax.scale_by_adam(*tcfg.adam_betas)  # Adam's direction; train_step scales it by the learning rate
    opt_state = optimizer.init(eqx.filter(vq, eqx.is_inexact_array))
    rng = np.random.default_rng(tcfg.seed)
    used = np.zeros(cfg.codebook_size, bool)
    bar = tqdm(range(tcfg.steps), desc="vqgan")
    for step in bar:
        done = step / tcfg.steps  # share of the run behind us
        lr = tcfg.lr * min(1, (step + 1) / tcfg.warmup) * (1 + math.cos(math.pi * done)) / 2
        batch = images[rng.integers(len(images), size=tcfg.batch_size)]
        vq, opt_state, loss, (mse, ids, latents) = train_step(optimizer, vq, opt_state, batch, jnp.float32(lr),
                                                              tcfg)
        used[np.asarray(ids).ravel()] = True
        if step % 20 == 0:
            bar.set_postfix(loss=f"{float(loss):.4f}", psnr=f"{-10 * math.log10(float(mse)):.1f}",
                            usage=f"{used.mean():.0%}")  # usage: share of codes used since the last restart
        # step 0 seeds the whole (unused) codebook with real latents; later checks revive dead codes,
        # until the last 20% of training, which lets the codebook settle
        if step % tcfg.restart_every == 0 and done < 0.8:
            vq = restart_dead_codes(vq, used, latents, rng)
            used[:] = False
    vqgan.save_vqgan(out_path, vq)
    return vq


# ----------------------------------------------------------------------------------------------
# A run's image tokenizer (train.py): the one given, the shapes one, or one trained on the run's own pictures

SHAPES_VQGAN = Path(__file__).parent / "checkpoints/shapes/vqgan.eqx"  # knows the shapes world's colours only


def readable_pictures(source, size, n):
    """The first n pictures of source that decode, with a caption -> uint8 (k, size, size, 3), 1 <= k <= n."""
    pictures, skipped = [], []
    for file in data.input_files(source, n):
        for pair in (p for p in data.pairs(file) if not data.is_held_out(p[0])):  # no tokenizer learns those
            picture, _, why = data.decode_pair(*pair, size)
            skipped += [why] if why else []
            pictures += [] if why else [picture]
            if len(pictures) == n:
                return np.stack(pictures)
    if not pictures:
        raise data.no_pairs_error(source, skipped)
    return np.stack(pictures)


def image_tokenizer(out: Path, given: str, images: str, cfg: vqgan.VQGANConfig, tcfg: VQGANTrainConfig, log):
    """The frozen VQGAN, kept as out/vqgan.eqx: the one there, else a copy of `given`, else for the shapes world the
    shipped shapes tokenizer, else a cfg one trained as tcfg says on the first tcfg.train_pictures readable pictures
    of images, a tenth held out: the shapes tokenizer would turn them into blobs of six colours."""
    path = out / "vqgan.eqx"
    source = Path(given) if given else None if images else SHAPES_VQGAN
    if path.exists():
        log(f"image tokenizer: {path}, already in the run folder")
    elif source:
        log(f"image tokenizer: copying {source} to {path}")
        checkpoint.write_atomically(path, lambda f: f.write(source.read_bytes()))
    else:
        if jax.process_count() > 1:
            raise ValueError(f"no image tokenizer at {path}: give --vqgan, or train one on one host first "
                             f"(python train.py --images {images} --out {out})")
        pictures = readable_pictures(images, cfg.image_size, tcfg.train_pictures)  # (n, S, S, 3)
        held_out = pictures[:max(1, len(pictures) // 10)]  # (k, S, S, 3), never trained on
        log(f"image tokenizer: none given (--vqgan), training one on {len(pictures) - len(held_out)} of your "
            f"pictures into {path}")
        train_pictures = pictures[len(held_out):] if len(pictures) > 1 else pictures
        vq = train_vqgan(path, cfg, tcfg, images=train_pictures)
        again = vqgan.decode_tokens(vq, vqgan.encode_images(vq, held_out))
        log(f"image tokenizer: {path} reconstructs {len(held_out)} held-out pictures of yours at PSNR "
            f"{psnr(held_out, again):.1f} dB")
    return vqgan.load_vqgan(path), path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/shapes/vqgan.eqx",
                        help="where to write the tokenizer (train.py --out runs/shapes then uses it); the shipped "
                             "one pairs with checkpoints/shapes/upgen.eqx, so do not overwrite it")
    for name in ("steps", "seed"):
        config.flag(parser, VQGANTrainConfig(), name)
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the tokenizer at --out")
    parser.add_argument("--held-out", type=int, default=500, help="held-out pictures to evaluate on")
    args = parser.parse_args()
    if args.held_out < 1:
        sys.exit("error: --held-out must be at least 1")
    try:
        if args.eval_only:
            vq = vqgan.load_vqgan(args.out)
        else:
            start = time.perf_counter()
            vq = train_vqgan(args.out, tcfg=VQGANTrainConfig(**config.fields_of(VQGANTrainConfig, args)))
            print(f"trained in {time.perf_counter() - start:.0f} s; wrote {args.out}")
        n = args.held_out
        images, _, labels = shapes.examples(n, seed=HELD_OUT_SEED, cfg=shapes.ShapesConfig(vq.cfg.image_size))
        db, usage, kept, distinct = evaluate(vq, images, labels)
        print(f"{n} held-out pictures: PSNR {db:.2f} dB, {usage:.0%} of {vq.cfg.codebook_size} codes used, "
              f"{kept:.2%} ({round(kept * n)}) of reconstructions keep shape, colour, size and position, "
              f"{distinct:.1f} distinct tokens per picture")
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
