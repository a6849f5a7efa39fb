"""Tests of sample.py: each test is one sentence of MaskGIT's decoding or of the sampling CLI."""
import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import pictures
import sample
import shapes
import upgen
import vocab
import vqgan

MASK_ID = 99  # fake vocabulary of 100 ids for the model-free tests; 99 is [MASK]
decode = jax.jit(sample.decode, static_argnums=0, static_argnames=("mask_id", "dcfg"))  # compile once per shape


def random_logits(seq):
    """A fake model: logits that depend on the input sequence, never choosing [MASK]."""
    key = jax.random.key(0)
    logits = jax.random.normal(key, (*seq.shape, 100)) + jnp.sin(seq[..., None] * jnp.arange(100))
    return logits.at[..., MASK_ID].set(-jnp.inf)


def test_schedule_is_monotone_and_ends_with_nothing_masked():
    for n in (1, 3, 7, 64, 256):
        for steps in (1, 4, 8, 12, 20):
            counts = np.asarray(sample.masked_counts(jnp.array([n]), steps))[0]
            previous = np.concatenate([[n], counts[:-1]])
            assert counts[-1] == 0
            assert np.all((counts < previous) | (previous == 0)), (n, steps, counts)  # one fewer each step
            assert np.all(counts >= 0)


@pytest.mark.parametrize("n", [64, 256])
@pytest.mark.parametrize("steps", [8, 12])
def test_masked_counts_follow_the_cosine_formula_in_the_decoder(n, steps):
    formula = [math.floor(n * math.cos(math.pi / 2 * t / steps)) for t in range(1, steps + 1)]
    assert list(np.asarray(sample.masked_counts(jnp.array([n]), steps))[0]) == formula
    tokens = jnp.full((2, n), MASK_ID)
    states = decode(random_logits, tokens, mask_id=MASK_ID, dcfg=sample.DecodeConfig(steps=steps),
                           key=jax.random.key(1))
    assert states.shape == (steps, 2, n)
    for b in range(2):
        assert list(np.asarray((states[:, b] == MASK_ID).sum(-1))) == formula


def test_sampled_tokens_follow_the_softmax_at_their_temperature_and_never_take_a_forbidden_id():
    logits = jnp.array([2.0, -1e9, 1.0, 0.0, -1e9, 0.5])  # ids 1 and 4 forbidden, as allowed_ids forbids
    n = 20_000
    for temperature in (1.0, 0.5):
        ids = sample.sample_tokens(jnp.broadcast_to(logits, (n, 1, 6)), temperature, key=jax.random.key(0))
        seen = np.bincount(np.asarray(ids).ravel(), minlength=6) / n
        want = np.asarray(jax.nn.softmax(logits / temperature))
        assert seen[1] == seen[4] == 0
        assert np.abs(seen - want).max() < 4 * np.sqrt(want.max() / n)  # four standard errors
    assert (sample.sample_tokens(logits[None, None], 0.0, key=jax.random.key(0)) == 0).all()


def test_known_tokens_are_never_remasked_nor_changed():
    tokens = jnp.tile(jnp.arange(40) % 7, (3, 1))
    unknown = jax.random.bernoulli(jax.random.key(2), 0.6, tokens.shape)
    tokens = jnp.where(unknown, MASK_ID, tokens)
    states = decode(random_logits, tokens, mask_id=MASK_ID, key=jax.random.key(3))
    for state in states:
        assert jnp.all(jnp.where(unknown, True, state == tokens))
    assert not jnp.any(states[-1] == MASK_ID)


def test_a_model_sure_of_one_token_gets_it_everywhere():
    def sure_of_seven(seq):
        return jnp.where(jnp.arange(100) == 7, 50.0, 0.0) * jnp.ones((*seq.shape, 1))

    tokens = jnp.full((2, 64), MASK_ID).at[:, :5].set(3)
    final = decode(sure_of_seven, tokens, mask_id=MASK_ID, key=jax.random.key(4))[-1]
    assert jnp.all(final[:, :5] == 3) and jnp.all(final[:, 5:] == 7)


def test_same_seed_same_tokens_other_seed_other_tokens():
    tokens = jnp.full((2, 64), MASK_ID)
    run = lambda seed: decode(random_logits, tokens, mask_id=MASK_ID, key=jax.random.key(seed))[-1]  # noqa: E731
    assert jnp.array_equal(run(5), run(5))
    assert not jnp.array_equal(run(5), run(6))


# ---------------------------------------------------------------------------------------------------
# With a tiny random model: every mode keeps what it was given and fills the rest with allowed ids.

TOKENIZER = vocab.Tokenizer(("a", "large", "red", "circle", "in", "the", "top", "left"), length=6)
TINY = upgen.UPGenConfig(image_codes=16, image_tokens=16, text_vocab=TOKENIZER.vocab_size, text_tokens=6,
                         width=32, depth=1, heads=2, mlp=64)


@pytest.fixture(scope="module")
def tiny_model():
    return upgen.UPGen(TINY, key=jax.random.key(0))


def test_every_mode_keeps_its_known_tokens(tiny_model):
    mcfg, dcfg = tiny_model.cfg, sample.DecodeConfig(steps=4)
    image = np.arange(mcfg.image_tokens) % mcfg.image_codes
    text = TOKENIZER.encode("a large red circle")
    keep = np.arange(mcfg.image_tokens) < 6
    modes = {"text->image": sample.inputs(mcfg, 3, text=text),
             "inpainting": sample.inputs(mcfg, 3, image, text, keep),
             "inpainting, guided": sample.inputs(mcfg, 3, image, text, keep)}
    for name, tokens in modes.items():
        guidance = 2.0 if "guided" in name else 0.0
        final = sample.generate(tiny_model, tokens, dcfg, guidance, key=jax.random.key(7))[-1]
        known = tokens != mcfg.mask_id
        assert jnp.all(jnp.where(known, final == tokens, True)), name
        assert jnp.all(final[:, :mcfg.image_tokens] < mcfg.image_codes), name  # image slots: image codes only
    lengths = jnp.array([1, 3, 6])
    states = sample.unconditional(tiny_model, lengths, dcfg, key=jax.random.key(9))  # (T, 3, L)
    captions = states[:, :, mcfg.image_tokens:]
    assert jnp.all(captions == captions[0]), "the caption is given while the picture is drawn"
    assert jnp.array_equal((captions[-1] != mcfg.pad_id).sum(-1), lengths)  # each caption has its drawn length
    assert jnp.all(jnp.where(captions[-1] != mcfg.pad_id, captions[-1] > mcfg.mask_id, True))  # real words only
    assert jnp.all(states[-1, :, :mcfg.image_tokens] < mcfg.image_codes)
    guided = sample.unconditional(tiny_model, lengths, dcfg, 3.0, key=jax.random.key(9))[-1]
    assert jnp.array_equal(guided[:, mcfg.image_tokens:], captions[-1])  # guidance leaves the captions alone,
    assert not jnp.array_equal(guided, states[-1])  # and steers the pictures drawn from them
    ids = np.asarray(sample.write_text(tiny_model, jnp.tile(jnp.asarray(image), (3, 1)),
                                       sample.length_prior(TOKENIZER),
                                       dcfg, key=jax.random.key(8)))
    for row in ids:  # image->text: some real text tokens, then PAD only
        length = int((row != vocab.PAD).sum())
        assert length >= 1 and np.all(row[:length] > vocab.MASK) and np.all(row[length:] == vocab.PAD)


class CaptionOracle(eqx.Module):
    """A fake model that knows the caption "a large red circle" and redraws the picture (all code 5)
    only when the text holds all four words; beyond 4 text slots it has no idea what to write."""
    cfg: upgen.UPGenConfig = eqx.field(static=True)

    def __call__(self, tokens):
        cfg = self.cfg
        caption = TOKENIZER.encode("a large red circle")[:4] + cfg.image_codes
        text = tokens[cfg.image_tokens:]
        told = jnp.all(jnp.isin(caption, text))
        image = jnp.where(told, 10.0 * (jnp.arange(cfg.vocab_size) == 5), 0.0)  # (V,)
        words = jnp.where(jnp.arange(cfg.text_tokens)[:, None] < 4,
                          10.0 * (jnp.arange(cfg.vocab_size)
                                  == jnp.pad(caption, (0, cfg.text_tokens - 4))[:, None]), 0.0)
        return jnp.concatenate([jnp.broadcast_to(image, (cfg.image_tokens, cfg.vocab_size)), words])  # (L, V)


def test_caption_length_is_the_one_that_is_likely_and_tells_the_whole_picture():
    picture = jnp.full((2, TINY.image_tokens), 5)
    lengths = dataclasses.replace(TOKENIZER, caption_lengths=(0, 6, 0, 3, 1, 2))  # 2 words likelier than 4 or 6
    ids = sample.write_text(CaptionOracle(TINY), picture, sample.length_prior(lengths), sample.DecodeConfig(steps=4),
                            key=jax.random.key(9))
    assert [TOKENIZER.decode(row) for row in ids] == ["a large red circle"] * 2


class Counting(eqx.Module):
    """A model that counts the sequences it runs on (one call per sequence, also inside vmap)."""
    model: upgen.UPGen
    calls: list = eqx.field(static=True)

    @property
    def cfg(self):
        return self.model.cfg

    def __call__(self, tokens):
        jax.debug.callback(lambda _: self.calls.append(1), tokens)
        return self.model(tokens)


def test_captioning_costs_at_most_four_text_to_image_decodes_whatever_the_caption_length(tiny_model):
    dcfg, spread = sample.DecodeConfig(steps=12), dataclasses.replace(TOKENIZER, caption_lengths=(1,) * 6)
    drawing, captioning = Counting(tiny_model, []), Counting(tiny_model, [])
    sample.generate(drawing, sample.inputs(TINY, 2, text=TOKENIZER.encode("a large red")), dcfg,
                    key=jax.random.key(0)).block_until_ready()
    picture = jnp.zeros((2, TINY.image_tokens), jnp.int32)
    prior = sample.length_prior(spread)
    sample.write_text(captioning, picture, prior, dcfg, key=jax.random.key(0)).block_until_ready()
    assert len(drawing.calls) == 2 * dcfg.steps  # one pass per step per picture
    assert len(captioning.calls) <= 4 * len(drawing.calls)  # a decode of every length 1..6 was 7x


def test_captions_only_take_lengths_that_training_captions_had():
    picture = jnp.full((2, TINY.image_tokens), 5)
    three_words = dataclasses.replace(TOKENIZER, caption_lengths=(0, 0, 7, 0, 0, 0))  # every training caption: 3
    ids = sample.write_text(CaptionOracle(TINY), picture, sample.length_prior(three_words),
                            sample.DecodeConfig(steps=4),
                            key=jax.random.key(9))
    assert [TOKENIZER.decode(row) for row in ids] == ["a large red"] * 2


@pytest.fixture(scope="module")
def tiny_vqgan():
    vq = vqgan.VQGAN(vqgan.VQGANConfig(image_size=16, filters=8, channel_multipliers=(1, 1, 1),
                                       num_res_blocks=1, embedding_dim=8, codebook_size=16, norm_groups=4),
                     key=jax.random.key(0))
    assert vq.cfg.tokens_per_side ** 2 == TINY.image_tokens
    return vq


def test_inpainting_keeps_its_kept_tokens_in_every_sample(tiny_model, tiny_vqgan):
    images = np.asarray(jax.random.randint(jax.random.key(10), (6, 16, 16, 3), 0, 256), np.uint8)
    keep = np.asarray(jax.random.bernoulli(jax.random.key(11), 0.5, (6, TINY.image_tokens)))
    text = np.tile(TOKENIZER.encode("a large red circle"), (6, 1))
    tokens, states = sample.inpaint(tiny_model, tiny_vqgan, images, keep, text, sample.DecodeConfig(steps=3),
                                    key=jax.random.key(12))
    final = states[-1]
    assert jnp.all(jnp.where(keep, final[:, :TINY.image_tokens] == tokens[:, :TINY.image_tokens], True))
    assert jnp.all(tokens[:, :TINY.image_tokens] == jnp.where(keep, tokens[:, :TINY.image_tokens], TINY.mask_id))
    assert jnp.all(final[:, TINY.image_tokens:] == text + TINY.image_codes)  # the prompt is never rewritten
    assert jnp.all(final[:, :TINY.image_tokens] < TINY.image_codes)


def test_inpainting_ignores_what_the_redrawn_region_held(tiny_model, tiny_vqgan):
    images = np.full((2, 16, 16, 3), 240, np.uint8)
    images[1, :8] = (220, 30, 30)  # a red top half in the second picture only: the half that is redrawn
    keep = (np.arange(TINY.image_tokens) >= TINY.image_tokens // 2)[None]  # (1, Ni)
    text = TOKENIZER.encode("a large red circle")[None]
    first, second = (sample.inpaint(tiny_model, tiny_vqgan, image[None], keep, text, sample.DecodeConfig(steps=3),
                                    key=jax.random.key(13))[1] for image in images)
    assert jnp.array_equal(first, second)
    plain = sample.inputs(TINY, 2, vqgan.encode_images(tiny_vqgan, images), text, keep)  # tokens of the pictures
    assert not jnp.array_equal(plain[0], plain[1])  # as they are: the red half leaves traces in the kept half


# ---------------------------------------------------------------------------------------------------
# The command line on a tiny checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_model, tiny_vqgan):
    folder = tmp_path_factory.mktemp("ckpt")
    vqgan.save_vqgan(folder / "vqgan.eqx", tiny_vqgan)
    upgen.save_upgen(folder / "upgen.eqx", tiny_model, TOKENIZER)
    images, _, _ = shapes.examples(1, seed=0)
    Image.fromarray(images[0]).save(folder / "shape.png")
    (folder / "not_an_image.png").write_text("hello")
    return folder


def cli(capsys, *argv):
    """Runs sample.py's main in this process -> (exit message or None, stdout, stderr)."""
    try:
        sample.main(list(argv))
        message = None
    except SystemExit as e:
        message = str(e.code)
    printed = capsys.readouterr()
    return message, printed.out, printed.err


def test_cli_draws_captions_and_inpaints(ckpt, tmp_path, capsys):
    out = tmp_path / "grid.png"
    common = ("--ckpt", str(ckpt), "--steps", "3", "--n", "2", "--out", str(out))
    message, printed, _ = cli(capsys, "--prompt", "a large red circle in the top left", "--show-steps", *common)
    assert message is None and f"wrote {out}" in printed
    assert Image.open(out).size == (2 * 18, 18)  # two 16x16 pictures with their gaps
    assert Image.open(tmp_path / "grid_steps.png").size == (3 * 18, 2 * 18)  # a row per sample, a column per step
    message, printed, _ = cli(capsys, "--image", str(ckpt / "shape.png"), *common)
    assert message is None and len(printed.strip().splitlines()) == 2  # one caption per sample
    Image.new("L", (40, 20), 200).save(tmp_path / "wide_grey.png")  # wrong size and mode: cropped, resized
    message, printed, noted = cli(capsys, "--image", str(tmp_path / "wide_grey.png"), *common)
    assert message is None and len(printed.strip().splitlines()) == 2
    assert "40x20" in noted and "centre 20x20 square" in noted and len(noted.strip().splitlines()) == 1
    message, printed, _ = cli(capsys, *common)  # unconditional pictures
    assert message is None and len(printed.strip().splitlines()) == 3  # "wrote ..." and their two captions
    message, printed, _ = cli(capsys, "--image", str(ckpt / "shape.png"), "--keep", "0,0,32,64",
                           "--prompt", "a red circle", *common)
    assert message is None and f"wrote {out}" in printed


def test_cli_same_seed_same_pictures(ckpt, tmp_path, capsys):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path, seed in zip(paths, ("1", "1", "2")):
        cli(capsys, "--ckpt", str(ckpt), "--steps", "3", "--prompt", "a circle", "--seed", seed, "--out", str(path))
    pixels = [np.asarray(Image.open(p)) for p in paths]
    assert np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])


@pytest.mark.parametrize("prompt, note", [("", "empty prompt, so the pictures are unconditional"),
                                          ("zebra giraffe quux", "never saw, spelled out in bytes: zebra giraffe quux"),
                                          ("a red circle " * 800, "the prompt is cut to its first 6 tokens")])
def test_cli_odd_prompts_still_give_pictures_and_a_note(ckpt, tmp_path, capsys, prompt, note):
    out = tmp_path / "grid.png"
    message, printed, noted = cli(capsys, "--ckpt", str(ckpt), "--steps", "2", "--prompt", prompt, "--out", str(out))
    assert message is None and note in noted
    grid = np.asarray(Image.open(out))
    assert grid.shape == (18, 4 * 18, 3)  # one row of --n 4 pictures of 16x16, each in a 1-pixel white frame
    model, tokenizer, vq = upgen.load_run(ckpt)  # the same draw through the library: the same pictures
    length_key, key = jax.random.split(jax.random.key(0))
    dcfg = sample.DecodeConfig(steps=2)
    if prompt:
        tokens = sample.inputs(model.cfg, 4, text=vocab.prompt_ids(tokenizer, prompt))
        states = sample.generate(model, tokens, dcfg, sample.TEXT_GUIDANCE, key=key)  # the CLI's guidance
    else:  # unconditional, with the captions it prints
        states = sample.unconditional(model, sample.draw_caption_lengths(tokenizer, 4, key=length_key), dcfg, 0.0,
                                      key=key)
        drawn_text = sample.tokenizer_ids(model.cfg, states[-1, :, TINY.image_tokens:])
        captions = [tokenizer.decode(ids) for ids in drawn_text]
        assert printed.strip().splitlines()[1:] == captions
    drawn = sample.from_tokens(vq, states[-1], model.cfg)  # (4, 16, 16, 3)
    for i, picture in enumerate(drawn):
        assert np.array_equal(grid[1:17, 18 * i + 1:18 * i + 17], picture)


@pytest.mark.parametrize("argv, says", [
    (("--image", "not_an_image.png"), "cannot read image"),
    (("--image", "missing.png"), "cannot read image"),
    (("--image", "shape.png", "--keep", "1,2"), "--keep"),
    (("--image", "shape.png", "--keep", "0,0,64,64"), "keeps the whole picture"),
    (("--prompt", "a circle", "--temperature", "-1"), "--temperature -1 must be 0 (argmax) or more"),
    (("--prompt", "a circle", "--choice-temperature", "-1"), "--choice-temperature -1 must be 0"),
    (("--prompt", "a circle", "--steps", "0"), "--steps 0 must be at least 1"),
    (("--n", "0"), "--n must be at least 1"),
    (("--keep", "0,0,8,8"), "--keep needs --image"),
    (("--image", "shape.png", "--prompt", "a circle"), "add --keep"),
    (("--prompt", "a circle", "--ckpt", "nowhere"), "python train.py"),
    (("--prompt", "a circle", "--ckpt", "broken"), "python train.py"),
])
def test_cli_bad_input_is_one_clear_line(ckpt, capsys, argv, says):
    broken = ckpt / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "upgen.eqx").write_bytes((ckpt / "upgen.eqx").read_bytes()[:500])
    (broken / "vqgan.eqx").write_bytes((ckpt / "vqgan.eqx").read_bytes())
    argv = [str(ckpt / a) if a.endswith(".png") or a in ("nowhere", "broken") else a for a in argv]
    message, _, _ = cli(capsys, "--ckpt", str(ckpt), *argv)
    assert message.startswith("error: ") and says in message and "\n" not in message


def test_cli_captions_a_grid_picture_by_picture(ckpt, tmp_path, capsys):
    images, _, _ = shapes.examples(4, seed=4)
    pictures.save_grid(images[None], tmp_path / "samples.png")  # (66, 264): 1 row of 4 pictures
    capsys.readouterr()  # save_grid's "wrote"
    message, printed, noted = cli(capsys, "--ckpt", str(ckpt), "--steps", "2", "--n", "2",
                                  "--image", str(tmp_path / "samples.png"))
    lines = printed.strip().splitlines()
    assert message is None and noted == ""
    assert [line for line in lines if not line.startswith("  ")] == [
        f"picture {i} of 4 (row 1, column {i}):" for i in range(1, 5)]
    assert len(lines) == 4 * 3  # each heading and its 2 captions


def test_decode_config_checks_its_settings():
    for bad in (dict(steps=0), dict(temperature=-0.5), dict(choice_temperature=-1.0)):
        with pytest.raises(ValueError, match="--" + next(iter(bad)).replace("_", "-")):
            sample.DecodeConfig(**bad)
    assert sample.DecodeConfig(temperature=0, choice_temperature=0).steps == 12  # argmax and greedy are fine
