"""vinbig.boxes: PNG sizes and the exact mapping of boxes between original and PNG pixels."""

from __future__ import annotations

import numpy as np
import pytest

from vinbig.boxes import clip, png_size, to_original, to_png


@pytest.mark.parametrize(
    "width, height, long_side, expect",
    [
        (1994, 2430, 1024, (840, 1024)),  # the most common real size: portrait, height is the long side
        (3320, 2800, 1024, (1024, 864)),  # landscape
        (1841, 1955, 512, (482, 512)),  # pydicom-data's chest CR
        (300, 200, 1024, (300, 200)),  # never enlarged
        (5000, 3, 1024, (1024, 1)),  # never zero
    ],
)
def test_png_size_keeps_the_aspect_ratio(width, height, long_side, expect):
    assert png_size(width, height, long_side) == expect


def test_round_trip_is_exact_for_random_non_square_sizes():
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = rng.integers(800, 3400, size=2)
        png_w, png_h = png_size(int(width), int(height), int(rng.integers(128, 1536)))
        x1, x2 = np.sort(rng.uniform(0, width, 2))
        y1, y2 = np.sort(rng.uniform(0, height, 2))
        box = np.array([[x1, y1, x2, y2]])
        small = to_png(box, width, height, png_w, png_h)
        assert (small[:, [0, 2]] <= png_w + 1e-9).all() and (small[:, [1, 3]] <= png_h + 1e-9).all()
        np.testing.assert_allclose(to_original(small, width, height, png_w, png_h), box, atol=1e-6)


def test_width_and_height_are_never_swapped():
    box = np.array([[100.0, 200.0, 300.0, 400.0]])
    # a 2000 wide x 1000 high image halved on x only
    np.testing.assert_allclose(to_png(box, 2000, 1000, 1000, 1000), [[50, 200, 150, 400]])


def test_broadcast_over_rows_of_meta_and_clip():
    boxes = np.array([[10.0, 10, 50, 50], [-5, 0, 700, 900]])
    out = to_png(boxes, np.array([100, 1000]), np.array([100, 1000]), np.array([50, 500]), np.array([50, 500]))
    np.testing.assert_allclose(out, [[5, 5, 25, 25], [-2.5, 0, 350, 450]])
    np.testing.assert_allclose(clip(boxes, np.array([40, 600]), np.array([40, 800])),
                               [[10, 10, 40, 40], [0, 0, 600, 800]])
