"""The tokenizer trainer: dead codes restart, the edge term sees outlines, the shapes tokenizer meets its targets."""
import jax
import numpy as np
import pytest
from PIL import Image

import data
import shapes
import vqgan
import vqgan_train

SMALL = vqgan.VQGANConfig(image_size=16, filters=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                          embedding_dim=4, codebook_size=16, norm_groups=4, final_norm=True)


def test_dead_codes_restart_on_the_encoders_latents():
    model = vqgan.init_vqgan(SMALL, seed=1)
    used = np.zeros(16, bool)
    used[:10] = True
    latents = np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 4)
    restarted = vqgan_train.restart_dead_codes(model, used, latents, np.random.default_rng(0))
    codebook = np.asarray(restarted.quantizer.codebook)
    np.testing.assert_array_equal(codebook[:10], model.quantizer.codebook[:10])
    rows = {tuple(r) for r in latents.reshape(-1, 4)}
    assert all(tuple(r) in rows for r in codebook[10:])


def test_edge_term_counts_a_moved_outline_but_not_a_uniform_brightening():
    images = np.zeros((1, 3, 16, 16), np.float32)
    images[..., 4:10, 4:10] = 1.0  # one square

    def loss(reconstruct, edge_weight):  # a stand-in model: reconstruct, with latent == code
        model = lambda image: (reconstruct(image), image[:2, :2, :2], image[:2, :2, :2], np.zeros((2, 2), np.int32))
        return float(vqgan_train.vq_loss(model, images, vqgan_train.VQGANTrainConfig(edge_weight=edge_weight))[0])

    brighter = lambda image: image + 0.1  # every pixel off, no outline moved
    moved = lambda image: jax.numpy.roll(image, 1, axis=-1)  # the square one pixel to the right
    assert loss(brighter, 1.0) == pytest.approx(loss(brighter, 0.0))
    assert loss(moved, 1.0) > 2 * loss(moved, 0.0) > 0


def test_no_tokenizer_trains_on_a_held_out_picture(tmp_path):
    pictures, captions, _ = shapes.examples(64, seed=0)
    for i, (picture, caption) in enumerate(zip(pictures, captions)):
        Image.fromarray(picture).save(tmp_path / f"{i:04d}.png")
        (tmp_path / f"{i:04d}.txt").write_text(caption)
    out = np.array([data.is_held_out(f"{i:04d}") for i in range(64)])
    assert out.any()
    read = vqgan_train.readable_pictures(str(tmp_path), 64, 1000)
    assert np.array_equal(read, pictures[~out])


@pytest.mark.slow  # ~50 s on 2 busy cores, mostly compiling the training step
def test_training_lowers_the_reconstruction_error(tmp_path):
    images = shapes.examples(64, seed=0, cfg=shapes.ShapesConfig(image_size=16, jitter=1))[0]
    before = vqgan.init_vqgan(SMALL, seed=0)
    tcfg = vqgan_train.VQGANTrainConfig(steps=60, batch_size=8, warmup=5, restart_every=20)
    model = vqgan_train.train_vqgan(tmp_path / "v.eqx", SMALL, tcfg, images=images)
    assert (tmp_path / "v.eqx").exists()

    def mse(m):
        return np.mean((vqgan.decode_tokens(m, vqgan.encode_images(m, images)).astype(float) - images) ** 2)
    assert mse(model) < 0.5 * mse(before)


# ~4 min on 2 cores: python vqgan_train.py, the shapes tokenizer's 5000 default steps. A few pictures in a
# thousand come back with an attribute changed (a small square rounded into a circle), so the target is a rate on
# many pictures, not every picture.
@pytest.mark.slow
def test_the_shapes_tokenizer_meets_its_targets(tmp_path):
    model = vqgan_train.train_vqgan(tmp_path / "vqgan.eqx")
    images, _, labels = shapes.examples(2000, seed=vqgan_train.HELD_OUT_SEED)
    psnr, usage, kept, distinct = vqgan_train.evaluate(model, images, labels)
    misread = round((1 - kept) * len(images))  # pictures whose reconstruction shapes.read_picture reads otherwise
    print(f"\n{len(images)} held-out pictures: PSNR {psnr:.2f} dB, {usage:.1%} of codes used, {misread} misread "
          f"({misread / len(images):.2%}), {distinct:.1f} distinct tokens per picture")
    assert psnr >= 30 and usage >= 0.25 and misread <= 0.01 * len(images), (psnr, usage, misread)
