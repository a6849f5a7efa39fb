"""pictures.py: a grid the commands write is read back picture by picture; any other picture by its centre."""
import numpy as np
from PIL import Image

import pictures
import shapes


def test_a_grid_that_save_grid_wrote_is_read_back_picture_by_picture(tmp_path, capsys):
    images, _, _ = shapes.examples(8, seed=3)  # (8, 64, 64, 3)
    for rows, cols in ((1, 4), (4, 1), (2, 4)):
        path = tmp_path / f"grid_{rows}x{cols}.png"
        pictures.save_grid(images[:rows * cols].reshape(rows, cols, 64, 64, 3), path)
        assert Image.open(path).size == (66 * cols, 66 * rows)
        read, shape = pictures.read_pictures(path, 64)
        assert shape == (rows, cols) and np.array_equal(read, images[:rows * cols])
    assert capsys.readouterr().err == ""
    Image.fromarray(np.concatenate(list(images[:2]), axis=1)).save(tmp_path / "no_gaps.png")  # (64, 128)
    read, shape = pictures.read_pictures(tmp_path / "no_gaps.png", 64)
    assert shape == (1, 1) and np.array_equal(read[0], np.asarray(Image.open(tmp_path / "no_gaps.png"))[:, 32:96])
    assert "128x64" in capsys.readouterr().err
