"""probe.py: a linear classifier on frozen, pooled, concatenated layer features of images alone."""
from pathlib import Path

import jax
import numpy as np
import pytest

import data
import probe
import shapes
import vocab
from upgen import UPGen, UPGenConfig, load_run, make_sequence, save_upgen
from vqgan import VQGAN, VQGANConfig, save_vqgan

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random-init checkpoint folder, as train.py lays it out: 64px pictures -> 8x8 tokens."""
    folder = tmp_path_factory.mktemp("ckpt")
    vq_cfg = VQGANConfig(image_size=64, filters=8, channel_multipliers=(1, 1, 1, 1), embedding_dim=8,
                         codebook_size=32, norm_groups=4)
    tokenizer = vocab.build_tokenizer(["a large red circle in the top left"])
    cfg = UPGenConfig(image_codes=32, image_tokens=vq_cfg.tokens_per_side ** 2, text_vocab=tokenizer.vocab_size,
                      width=32, depth=2, heads=2, mlp=64)
    save_vqgan(folder / "vqgan.eqx", VQGAN(vq_cfg, key=jax.random.key(1)))
    save_upgen(folder / "upgen.eqx", UPGen(cfg, key=jax.random.key(2)), tokenizer)
    return folder


def error_of(argv):
    with pytest.raises(SystemExit) as exit:
        probe.main(argv)
    message = str(exit.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_features_are_each_layers_mean_over_image_positions_of_an_image_only_sequence(ckpt):
    model, _, _ = load_run(ckpt)
    ids = np.random.default_rng(0).integers(0, 32, size=(3, 64)).astype(np.int32)
    features = probe.model_features(model, ids, None, batch_size=2)  # 2 batches, the last one padded
    _, hiddens = model(make_sequence(ids[2], None, model.cfg), hidden=True)  # (depth, L, D)
    expected = hiddens[:, :64].mean(axis=1)  # text slots hold PAD and are left out of the pool
    assert features.shape == (3, 2 * 32)
    np.testing.assert_allclose(features[2], np.asarray(expected).reshape(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probe.model_features(model, ids, -1, 4), features[:, 32:], rtol=1e-4, atol=1e-5)
    assert not np.allclose(features[0], features[1])


def test_linear_probe_reads_a_linear_label_on_held_out_data_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 20)).astype(np.float32) * rng.uniform(0.01, 100, size=20)  # scales differ
    labels = np.stack([(x @ rng.normal(size=(20, 3))).argmax(1), rng.integers(0, 2, 1000)], 1).astype(np.int32)
    linear, noise = probe.linear_probe(x[:800], labels[:800], x[800:], labels[800:], [3, 2],
                                       probe.ProbeConfig(), key=jax.random.key(0))
    assert linear > 0.9
    assert noise < 0.65  # held out: random labels cannot be learned, only memorised


def test_probe_on_a_class_folder_end_to_end(ckpt, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name, label in [("red_circles", (0, 0, 0, 4)), ("blue_squares", (1, 4, 0, 4))]:
        (tmp_path / name).mkdir()
        for i in range(10):
            data.Image.fromarray(shapes.render(label, rng)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "red_circles" / "broken.jpg").write_bytes(b"not a picture")
    scores = probe.main(["--ckpt", str(ckpt), "--folder", str(tmp_path)])
    out = capsys.readouterr().out
    assert "skipped 1 unreadable file" in out and "broken.jpg" in out
    assert "2 classes" in out
    assert set(scores) == {"upgen", "random init", "pixels"}
    assert all(len(s) == 1 and 0 <= s[0] <= 1 for s in scores.values())
    assert scores["pixels"][0] == 1.0  # red vs blue is linearly readable from pixels


def test_probe_on_the_shapes_world_scores_all_four_tasks(ckpt, capsys):
    scores = probe.main(["--ckpt", str(ckpt), "--shapes", "20", "--layer", "0"])
    out = capsys.readouterr().out
    assert all(task in out for task in shapes.LABELS)
    assert all(len(s) == 4 and all(0 <= a <= 1 for a in s) for s in scores.values())


def test_training_taught_the_shipped_model_what_a_random_one_does_not_see():
    scores = probe.main(["--ckpt", str(SHIPPED), "--shapes", "300"])  # 60 held-out pictures
    assert all(len(s) == 4 and all(0 <= a <= 1 for a in s) for s in scores.values())
    shape = shapes.LABELS.index("shape")
    assert scores["upgen"][shape] > 0.9 and scores["upgen"][shape] > scores["random init"][shape] + 0.2


def test_bad_class_folders_get_a_one_line_error(ckpt, tmp_path):
    picture = shapes.render((0, 0, 0, 4), np.random.default_rng(0))
    (tmp_path / "only").mkdir()
    data.Image.fromarray(picture).save(tmp_path / "only" / "a.png")
    assert "needs two or more" in error_of(["--ckpt", str(ckpt), "--folder", str(tmp_path)])
    (tmp_path / "empty").mkdir()
    assert "empty" in error_of(["--ckpt", str(ckpt), "--folder", str(tmp_path)])
    (tmp_path / "empty" / "a.png").write_bytes(b"\x89PNG broken")
    assert "no readable image" in error_of(["--ckpt", str(ckpt), "--folder", str(tmp_path)])
    assert "no folder" in error_of(["--ckpt", str(ckpt), "--folder", str(tmp_path / "missing")])


def test_missing_checkpoint_or_layer_says_what_to_do(ckpt, tmp_path):
    assert "python train.py" in error_of(["--ckpt", str(tmp_path)])
    assert "layers 0..1" in error_of(["--ckpt", str(ckpt), "--shapes", "4", "--layer", "2"])
    assert "too few" in error_of(["--ckpt", str(ckpt), "--shapes", "1"])
