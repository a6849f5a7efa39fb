"""Picture files: the grids the commands write, the files they read (a picture, or a grid of them), the token
cells of a box to keep. Pixels only: sample.py turns tokens into pictures.
"""
import math
import sys

import numpy as np
from PIL import Image

import data


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


def read_pictures(path, size):
    """An image file -> (uint8 pictures (P, size, size, 3), (rows, columns) of the grid they came from):
    every picture of a grid that save_grid wrote, else the centre square, with a note when that crops."""
    centre = data.load_image(path, size)  # a one-line error for a file that is no image
    with Image.open(path) as opened:
        pixels = np.asarray(opened.convert("RGB"))  # (h, w, 3)
    h, w = pixels.shape[:2]
    cell = grid_cell(pixels)
    if cell is None:
        if h != w:
            print(f"note: {path} is {w}x{h} pixels and no grid of square pictures: only its centre "
                  f"{min(w, h)}x{min(w, h)} square is read", file=sys.stderr)
        return centre[None], (1, 1)
    rows, cols = h // cell, w // cell
    crops = [pixels[r * cell + 1:(r + 1) * cell - 1, c * cell + 1:(c + 1) * cell - 1]  # inside the white frame
             for r in range(rows) for c in range(cols)]
    resized = [np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC)) for crop in crops]
    return np.stack(resized), (rows, cols)


def grid_cell(pixels):
    """uint8 (h, w, 3) -> the side of a save_grid cell (a square picture in a 1-pixel white frame), or None.
    Only a non-square image whose long side is a multiple of its short side is taken for a grid."""
    h, w = pixels.shape[:2]
    white = np.all(pixels == 255, axis=-1)  # (h, w)
    if h == w or max(h, w) % min(h, w) or white.all():
        return None
    for cell in range(data.MIN_SIDE + 2, min(h, w) + 1):  # the smallest: k x k cells also sit on the frames
        y, x = np.arange(h) % cell, np.arange(w) % cell  # place of each row and column in its cell
        framed = white[(y == 0) | (y == cell - 1)].all() and white[:, (x == 0) | (x == cell - 1)].all()
        if min(h, w) % cell == 0 and framed:
            return cell
    return None


def keep_mask(box, image_path, image_tokens, size):
    """--keep x0,y0,x1,y1 in pixels of the image file -> bool (Ni,): tokens whose cell centre is in it."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box.split(","))
    except ValueError:
        raise ValueError(f"--keep wants x0,y0,x1,y1 in pixels, got {box!r}") from None
    with Image.open(image_path) as opened:
        w, h = opened.size
    side = min(w, h)  # data.load_image takes the centre square, then resizes it to size x size
    scale, dx, dy = size / side, (w - side) // 2, (h - side) // 2
    grid = int(math.isqrt(image_tokens))
    centre = (np.arange(grid) + 0.5) * size / grid  # cell centres, model pixels
    inside_x = (centre >= (x0 - dx) * scale) & (centre <= (x1 - dx) * scale)
    inside_y = (centre >= (y0 - dy) * scale) & (centre <= (y1 - dy) * scale)
    keep = (inside_y[:, None] & inside_x[None, :]).reshape(-1)  # raster order, as the VQGAN's tokens
    if not keep.any():
        raise ValueError(f"--keep {box} holds no token centre; the image is {w}x{h} pixels")
    if keep.all():
        raise ValueError(f"--keep {box} keeps the whole picture: nothing to redraw; give a smaller box")
    return keep
