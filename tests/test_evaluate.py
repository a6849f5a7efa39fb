"""evaluate.py: every sampling mode, scored by reading its pictures and captions back on the shapes world."""
from pathlib import Path

import jax
import numpy as np
import pytest

import data
import evaluate
import pictures
import sample
import shapes
import upgen
import vqgan

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes"
SMALL = evaluate.ShapesEvalConfig(prompts=45, captioned=4, unconditional=8, inpainted=4, batch=64)
SHARES = ("text->image", "image->text", "unconditional valid", "unconditional match", "inpainting",
          "inpainting right", "kept tokens", "kept pixels")


def test_inpainting_cases_keep_no_shape_and_ask_for_one_that_fits():
    images, keep, labels = evaluate.inpainting_cases(40, seed=1)
    cells = pictures.cell_pixels(keep, 64)[..., 0]
    for image, kept, prompt, cell_keep in zip(images, cells, labels, keep):
        background = np.median(image[kept], axis=0)
        assert np.abs(image[kept].astype(int) - background).max() < 8  # the kept part is plain background
        redrawn = ~cell_keep.reshape(8, 8)
        assert redrawn.sum() == 40  # a band of 5 of the 8 token rows or columns
        drawn = shapes.render(prompt, np.random.default_rng(0))  # the prompt's shape, drawn alone
        assert np.all(np.abs(drawn.astype(int) - np.median(drawn[kept], axis=0))[kept].max(-1) < 8)
        assert np.all(np.array(shapes.read_picture(image)) != prompt)  # another shape, colour, size and position


@pytest.fixture(scope="module")
def shipped():
    return upgen.load_run(SHIPPED)


def test_the_shipped_model_draws_and_captions_the_shapes_world(shipped):
    figures = evaluate.shapes_eval(*shipped, sample.DecodeConfig(), key=jax.random.key(0), ecfg=SMALL)
    assert all(0 <= figures[name] <= 1 for name in SHARES)
    assert figures["text->image"] > 0.9  # of 45 of the 180 canonical prompts
    assert figures["image->text"] >= 0.75 and shapes.parse_caption(figures["example caption"]) is not None
    assert figures["unconditional valid"] >= 0.75 and 1 <= figures["unconditional descriptions"] <= 8
    assert figures["kept tokens"] == 1.0  # inpainting never changes a kept token
    assert figures["seconds"] > 0


def test_a_random_model_scores_nothing_and_the_command_line_prints_every_mode(shipped, tmp_path, capsys):
    model, tokenizer, vq = shipped
    cfg = upgen.UPGenConfig(image_codes=model.cfg.image_codes, text_vocab=model.cfg.text_vocab,
                            width=32, depth=1, heads=2, mlp=64)
    upgen.save_upgen(tmp_path / "upgen.eqx", upgen.UPGen(cfg, key=jax.random.key(1)), tokenizer)
    vqgan.save_vqgan(tmp_path / "vqgan.eqx", vq)
    figures = evaluate.main(["--ckpt", str(tmp_path), "--steps", "4", "--prompts", "10", "--captioned", "2",
                             "--unconditional", "4", "--inpainted", "2"])
    assert figures["text->image"] < 0.05 and figures["image->text"] == 0 and figures["inpainting"] == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["text->image", "image->text", "unconditional", "inpainting"]
    assert "of 10 canonical prompts" in lines[0] and "of 2 fresh pictures" in lines[1]
    assert "of 4 pictures valid" in lines[2] and "of 2 fresh" in lines[3]


def test_bad_settings_are_one_line_errors(shipped, tmp_path):
    for argv, says in ((["--captioned", "0"], "at least 1"), (["--prompts", "181"], "at most the 180"),
                       (["--temperature", "-1"], "temperature"),
                       (["--ckpt", str(tmp_path)], "python train.py")):
        with pytest.raises(SystemExit) as exit:
            evaluate.main(argv)
        message = str(exit.value.code)
        assert message.startswith("error: ") and says in message and "\n" not in message


def test_the_nearest_pictures_reader_reads_held_out_pictures_above_chance(shipped, tmp_path):
    import shards
    from PIL import Image
    _, _, vq = shipped
    images, _, labels = shapes.examples(160, seed=5)
    (tmp_path / "pairs").mkdir()
    for i, (image, label) in enumerate(zip(images, labels)):  # a small folder captioned with the place alone
        Image.fromarray(image).save(tmp_path / "pairs" / f"{i:03d}.png")
        (tmp_path / "pairs" / f"{i:03d}.txt").write_text(f"a shape in the {shapes.POSITIONS[label[3]]}")
    shards.tokenise(str(tmp_path / "pairs"), SHIPPED / "vqgan.eqx", tmp_path / "shards",
                    shards.ShardsConfig(held_out=0.25, chunk=32), log=lambda line: None)
    rows, references = (shards.held_out_rows(tmp_path / "shards", 1000, training) for training in (False, True))
    assert len(rows) > 20 and len(rows) + len(references) == 160
    held = [i for i in range(160) if data.is_held_out(f"{i:03d}.png", 0.25)]
    wrong = labels[held] + [0, 0, 0, 1]  # drawings in the next place: a drawer that gets the place wrong
    wrong[:, 3] %= 5
    drawn = vqgan.encode_images(vq, np.stack([shapes.render(label, np.random.default_rng(0)) for label in wrong]))
    figures = evaluate.read_by_nearest(vq, drawn, rows, references)
    assert figures["nearest pictures: held-out pictures"] >= 0.8 > 0.4 >= figures["nearest pictures: random pictures"]
    assert figures["text->image read by nearest pictures"] < 0.2


def test_zero_shot_gives_each_picture_the_one_caption_that_fits_it(shipped):
    model, tokenizer, vq = shipped
    descriptions = [(shape, colour, size, 0) for shape in range(3) for colour in (0, 4) for size in range(2)]  # 12
    pictures = [shapes.render(d, np.random.default_rng(i)) for i, d in enumerate(descriptions * 2)]
    captions = np.stack([tokenizer.encode(shapes.canonical_caption(d)) for d in descriptions * 2])
    rows = np.concatenate([vqgan.encode_images(vq, np.stack(pictures)), captions], axis=1)
    figures = evaluate.zero_shot(model, tokenizer, rows[:12], rows[12:])
    assert figures == {"zero-shot": 1.0, "zero-shot chance": 1 / 12, "candidates": 12}
    many = np.concatenate([rows[12:]] * 9)
    many[:, -1] = np.arange(len(many))  # 108 different captions: no small set to choose from
    assert evaluate.zero_shot(model, tokenizer, rows[:12], many) == {}
