"""The shapes world: captioned pictures of one coloured shape, rendered with pillow, small enough that
every part of upgen (tokenizer, masked transformer, every sampling mode, the probe, sharded training)
trains and is checked for real on a laptop CPU in minutes.

The spec. A picture is 64x64 RGB on a plain light background (its grey varies a little) with exactly
one flat-coloured, anti-aliased shape:
    shape     circle, square, triangle (upright, apex at the top)
    colour    red, orange, yellow, green, blue, purple
    size      large (about 40-45% of the picture's width), small (about 20-25%)
    position  its centre near one of five anchors (x, y as fractions): top left (0.3, 0.3), top right
              (0.7, 0.3), bottom left (0.3, 0.7), bottom right (0.7, 0.7), center (0.5, 0.5), with a
              jitter of a few pixels
so 3 x 6 x 2 x 5 = 180 descriptions. Its canonical caption is "a {size} {colour} {shape} in the
{position}" ("a large red circle in the top left"); training captions use more phrasings and synonyms,
so that the model learns the words, not one template. read_picture reads the four attributes back off
any picture, which is how evaluate.py (`python evaluate.py`) scores every sampling mode.

    python shapes.py --show 8     # write shapes.png with 8 examples and print their captions
    python shapes.py --bench      # time rendering 10,000 examples on one core
Read next: maskgit.py.
"""
import argparse
import re
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

import config

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SIZES = ("large", "small")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
LABELS = ("shape", "colour", "size", "position")

RGB = np.array([(220, 30, 30), (245, 140, 20), (235, 210, 20), (40, 170, 60), (30, 80, 220), (140, 40, 200)])
SPAN = ((0.40, 0.45), (0.20, 0.25))  # shape width as a fraction of the picture, per size
ANCHORS = np.array([(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7), (0.5, 0.5)])  # (x, y) fractions
SUPERSAMPLE = 4  # draw at 4x and downscale: pillow's polygons are not anti-aliased by themselves


@dataclass(frozen=True)
class ShapesConfig:
    image_size: int = 64  # pictures are image_size x image_size RGB
    jitter: int = 3  # the shape's centre moves up to this many pixels from its anchor

    def __post_init__(self):
        config.check(self, [("image_size", self.image_size >= 16, "must be at least 16"),
                            ("jitter", self.jitter >= 0, "must be at least 0")])


def _outline(shape, box):
    """The shape inside box = (x0, y0, x1, y1) as (draw method name, its xy argument)."""
    x0, y0, x1, y1 = box
    if shape == 0:
        return "ellipse", box
    if shape == 1:
        return "rectangle", box
    return "polygon", [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]  # upright, apex at the top


def render(labels, rng, cfg=ShapesConfig()):
    """One picture of labels = (shape, colour, size, position) -> uint8 (S, S, 3)."""
    shape, colour, size, position = (int(v) for v in labels)
    big = cfg.image_size * SUPERSAMPLE
    background = int(rng.integers(228, 251))
    grey = tuple(int(np.clip(background + d, 0, 255)) for d in rng.integers(-3, 4, size=3))
    picture = Image.new("RGB", (big, big), grey)
    width = rng.uniform(*SPAN[size]) * big
    centre = ANCHORS[position] * big + rng.integers(-cfg.jitter, cfg.jitter + 1, size=2) * SUPERSAMPLE
    box = (*(centre - width / 2), *(centre + width / 2))
    method, xy = _outline(shape, box)
    getattr(ImageDraw.Draw(picture), method)(xy, fill=tuple(int(c) for c in RGB[colour]))
    return np.asarray(picture.resize((cfg.image_size,) * 2, Image.Resampling.BOX))


def canonical_caption(labels):
    shape, colour, size, position = (int(v) for v in labels)
    return f"a {SIZES[size]} {COLOURS[colour]} {SHAPES[shape]} in the {POSITIONS[position]}"


# Other phrasings, so that the model learns the words rather than one template.
SYNONYMS = {"large": ("large", "big"), "small": ("small", "little"), "center": ("center", "middle"),
            "top": ("top", "upper"), "bottom": ("bottom", "lower")}
TEMPLATES = (
    "a {size} {colour} {shape} in the {position}",
    "a {size} {colour} {shape} at the {position}",
    "there is a {size} {colour} {shape} in the {position}",
    "in the {position} there is a {size} {colour} {shape}",
    "a {colour} {shape} , {size} , in the {position}",
    "the {shape} is {colour} and {size} , {position}",
)


def varied_caption(labels, rng):
    shape, colour, size, position = (int(v) for v in labels)
    pick = lambda word: str(rng.choice(SYNONYMS.get(word, (word,))))  # noqa: E731
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(size=pick(SIZES[size]), colour=COLOURS[colour], shape=SHAPES[shape],
                           position=" ".join(pick(w) for w in POSITIONS[position].split()))


def examples(n, seed, varied=True, cfg=ShapesConfig()):
    """n examples -> (images uint8 (n, S, S, 3), captions, labels int32 (n, 4)); same seed, same data."""
    rng = np.random.default_rng(seed)
    sizes = (len(SHAPES), len(COLOURS), len(SIZES), len(POSITIONS))
    labels = np.stack([rng.integers(k, size=n) for k in sizes], axis=1).astype(np.int32)
    empty = np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)
    images = np.stack([render(row, rng, cfg) for row in labels]) if n else empty
    captions = [varied_caption(row, rng) if varied else canonical_caption(row) for row in labels]
    return images, captions, labels


def parse_caption(text):
    """The (shape, colour, size, position) a caption names, in any phrasing above; None if unclear."""
    words = re.findall(r"[a-z]+", text.lower())
    canonical = {syn: word for word, syns in SYNONYMS.items() for syn in syns}
    words = [canonical.get(w, w) for w in words]

    def exactly_one(names):
        found = {i for i, name in enumerate(names) if name in words}
        return found.pop() if len(found) == 1 else None

    vertical = exactly_one(("top", "bottom", "center"))
    horizontal = exactly_one(("left", "right"))
    if vertical == 2:
        position = 4 if horizontal is None else None
    else:
        position = None if vertical is None or horizontal is None else 2 * vertical + horizontal
    found = (exactly_one(SHAPES), exactly_one(COLOURS), exactly_one(SIZES), position)
    return None if None in found else found


def read_picture(image):
    """Read (shape, colour, size, position) off a picture, or None if it is no valid shape picture.

    A simple reader, no learning: foreground = pixels far from the border's colour; its bounding box
    gives size and position, the shape whose outline drawn in that box overlaps the foreground best gives
    the shape, its core pixels the colour. The picture is valid when that overlap is close.
    """
    image = np.asarray(image, np.float32)
    side = image.shape[0]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    distance = np.abs(image - np.median(border, axis=0)).max(axis=-1)  # (S, S)
    mask = distance > 100  # halfway between the background and any of the saturated colours
    if mask.sum() < 0.01 * side * side:
        return None
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    width, height = x1 - x0, y1 - y0
    core = image[distance > 150]
    if len(core) == 0:
        return None
    colours = np.argmin(((core[:, None, :] - RGB[None]) ** 2).sum(-1), axis=1)
    colour = int(np.bincount(colours, minlength=len(COLOURS)).argmax())
    size = 0 if max(width, height) > 0.32 * side else 1
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) / side
    position = int(np.argmin(((ANCHORS - centre) ** 2).sum(-1)))
    overlaps = []
    for shape in range(len(SHAPES)):  # the shape whose ideal outline in that box overlaps best
        ideal = Image.new("L", (side * SUPERSAMPLE,) * 2, 0)
        method, xy = _outline(shape, tuple(v * SUPERSAMPLE for v in (x0, y0, x1, y1)))
        getattr(ImageDraw.Draw(ideal), method)(xy, fill=255)
        ideal = np.asarray(ideal.resize((side, side), Image.Resampling.BOX)) > 127
        overlaps.append((ideal & mask).sum() / (ideal | mask).sum())
    shape = int(np.argmax(overlaps))
    valid = overlaps[shape] > 0.7 and 0.75 < width / height < 1.33 and np.mean(colours == colour) > 0.8
    return (shape, colour, size, position) if valid else None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", action="store_true", help="time rendering 10,000 examples")
    parser.add_argument("--show", type=int, default=0, help="write shapes.png with this many examples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples")
    args = parser.parse_args()
    if args.bench:
        start = time.perf_counter()
        images, captions, labels = examples(10_000, args.seed)
        seconds = time.perf_counter() - start
        print(f"rendered 10,000 shapes examples in {seconds:.1f} s ({10_000 / seconds:.0f} per second, one core)")
    if args.show:
        images, captions, labels = examples(args.show, args.seed)
        Image.fromarray(np.concatenate(list(images), axis=1)).save("shapes.png")
        print("\n".join(captions) + "\nwrote shapes.png")
