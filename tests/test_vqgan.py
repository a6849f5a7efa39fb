"""The image tokenizer: tokens round-trip through pictures and through our checkpoint; bad input is refused."""
import numpy as np
import pytest

import shapes
import vqgan

SMALL = vqgan.VQGANConfig(image_size=16, filters=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                          embedding_dim=4, codebook_size=16, norm_groups=4,
                          final_norm=True)


def test_tokens_round_trip_through_our_checkpoint(tmp_path):
    model = vqgan.init_vqgan(SMALL, seed=1)
    images = shapes.examples(4, seed=0, cfg=shapes.ShapesConfig(image_size=16))[0]
    ids = vqgan.encode_images(model, images)
    assert ids.shape == (4, 16) and ids.dtype == np.int32
    pictures = vqgan.decode_tokens(model, ids)
    assert pictures.shape == (4, 16, 16, 3) and pictures.dtype == np.uint8
    # in chunks of 3, the last one padded: another batch size compiles another kernel, whose rounding may move
    # a pixel by one grey level
    np.testing.assert_allclose(vqgan.decode_tokens(model, ids, batch=3), pictures, atol=1)
    assert vqgan.decode_tokens(model, ids[:0]).shape == (0, 16, 16, 3)
    path = tmp_path / "vqgan.eqx"
    vqgan.save_vqgan(path, model)
    loaded = vqgan.load_vqgan(path)
    assert loaded.cfg == SMALL
    np.testing.assert_array_equal(vqgan.encode_images(loaded, images), ids)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError) as e:
        vqgan.load_vqgan(path)
    assert "\n" not in str(e.value)


def test_wrong_inputs_are_refused_with_a_clear_message():
    model = vqgan.init_vqgan(SMALL, seed=1)
    with pytest.raises(ValueError) as e:
        vqgan.encode_images(model, np.zeros((2, 32, 32, 3), np.uint8))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError) as e:
        vqgan.decode_tokens(model, np.full((2, 16), 16))
    assert "\n" not in str(e.value)
