"""A captioned folder for trying train.py on pictures that are not the shapes world: greyscale 'scans' of printed
digits (DejaVu fonts, rotated, on noisy paper, a little blurred), captioned "a scanned digit seven" and so on.

    python docs/make_digits.py DIR 1500     # DIR/scan_0000.png + DIR/scan_0000.txt, ...
    python train.py --images DIR --out runs/mine
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

WORDS = "zero one two three four five six seven eight nine".split()
FONTS = sorted(Path("/usr/share/fonts/truetype/dejavu").glob("*.ttf"))  # Debian's fonts-dejavu-core


def scan(digit, rng):
    """One picture of a digit -> uint8 (side, side), side 56-96 pixels."""
    side, paper = int(rng.integers(56, 97)), int(rng.integers(200, 246))
    page = Image.new("L", (side * 2, side * 2), paper)
    font = ImageFont.truetype(str(FONTS[rng.integers(len(FONTS))]), int(side * rng.uniform(0.9, 1.3)))
    ink = int(rng.integers(10, 90))
    draw = ImageDraw.Draw(page)
    x0, y0, x1, y1 = draw.textbbox((0, 0), str(digit), font=font)
    x, y = side - (x1 - x0) / 2 - x0, side - (y1 - y0) / 2 - y0
    draw.text((x + rng.uniform(-0.15, 0.15) * side, y + rng.uniform(-0.15, 0.15) * side), str(digit), fill=ink,
              font=font)
    page = page.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BICUBIC, fillcolor=paper)
    page = page.resize((side, side), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    pixels = np.asarray(page, np.float32) + rng.normal(0, rng.uniform(2, 8), (side, side))
    pixels += np.linspace(-1, 1, side)[None] * rng.uniform(-10, 10)  # uneven lighting across the page
    return np.clip(pixels, 0, 255).astype(np.uint8)


def main():
    if len(sys.argv) != 3 or not FONTS:
        sys.exit("usage: python docs/make_digits.py DIR N (needs the DejaVu fonts in /usr/share/fonts/truetype)")
    out, n, rng = Path(sys.argv[1]), int(sys.argv[2]), np.random.default_rng(7)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        digit = int(rng.integers(10))
        Image.fromarray(scan(digit, rng)).save(out / f"scan_{i:04d}.png")
        (out / f"scan_{i:04d}.txt").write_text(f"a scanned digit {WORDS[digit]}\n")


if __name__ == "__main__":
    main()
