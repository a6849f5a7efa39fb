"""shapes.py: the shapes world draws what its captions say, and its reader reads it back."""
import numpy as np
import pytest

import shapes


@pytest.fixture(scope="module")
def world():
    return shapes.examples(300, seed=0)


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = shapes.examples(5, seed=3), shapes.examples(5, seed=3), shapes.examples(5, seed=4)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])


def test_every_description_occurs_and_labels_are_in_range(world):
    _, _, labels = shapes.examples(3000, seed=1)
    assert len({tuple(row) for row in labels}) == 180
    assert labels.min() == 0 and list(labels.max(0)) == [2, 5, 1, 4]


def test_the_picture_has_the_captioned_colour_at_its_anchor(world):
    images, _, labels = world
    for image, (shape, colour, size, position) in zip(images, labels):
        if shape == 2 and size == 1:  # a small triangle is thinner at its centre than the jitter
            continue
        x, y = (shapes.ANCHORS[position] * 64).astype(int)
        assert np.abs(image[y, x].astype(int) - shapes.RGB[colour]).max() < 30


def test_large_shapes_cover_more_pixels_than_small_ones(world):
    images, _, labels = world
    area = (np.abs(images.astype(int) - images[:, :1, :1].astype(int)).max(-1) > 100).sum((1, 2)) / 64**2
    for shape in range(3):
        large = area[(labels[:, 0] == shape) & (labels[:, 2] == 0)]
        small = area[(labels[:, 0] == shape) & (labels[:, 2] == 1)]
        assert large.min() > 2.5 * small.max() * 0.9  # spans of 40-45% vs 20-25%: ~3x the area
    squares = area[(labels[:, 0] == 1) & (labels[:, 2] == 0)]
    assert 0.40**2 * 0.9 < squares.mean() < 0.45**2 * 1.1


def test_the_background_is_light(world):
    corners = world[0][:, 0, 0].astype(int)
    assert corners.min() >= 220


def test_the_picture_reader_reads_every_rendered_picture(world):
    images, _, labels = world
    assert all(shapes.read_picture(i) == tuple(l) for i, l in zip(images, labels))


def test_the_picture_reader_refuses_what_is_not_one_shape(world):
    images, _, _ = world
    blank = np.full((64, 64, 3), 240, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    rng = np.random.default_rng(0)
    left, right = shapes.render((0, 0, 1, 0), rng), shapes.render((1, 4, 1, 3), rng)
    two = np.where(np.abs(right.astype(int) - right[0, 0]).max(-1, keepdims=True) > 50, right, left)
    assert shapes.read_picture(blank) is None
    assert shapes.read_picture(noise) is None
    assert shapes.read_picture(two) is None


def test_captions_name_all_four_attributes_in_every_phrasing(world):
    _, captions, labels = world
    assert len(set(" ".join(c.split()[1:3]) for c in captions)) > 1  # phrasings vary
    assert all(shapes.parse_caption(c) == tuple(l) for c, l in zip(captions, labels))
    _, canonical, labels = shapes.examples(50, seed=2, varied=False)
    assert all(c == shapes.canonical_caption(l) for c, l in zip(canonical, labels))
    assert shapes.parse_caption("a large red circle in the top left") == (0, 0, 0, 0)
    assert shapes.parse_caption("a red circle") is None  # no size, no position
