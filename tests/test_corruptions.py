"""MNIST-C's corruptions (corruptions.py) on small synthetic digits: shape, range, seeding, effect, and
the places where our vectorised code must match the reference's way of doing it."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import color, transform

from mnist_nn.core.errors import UserError
from mnist_nn.data.corruptions import CORRUPTIONS, NAMES, NOT_RANDOM, corrupt, local_shuffle, plasma_fractal


def tiny_digits(count: int = 6, seed: int = 0) -> np.ndarray:
    """Digit-like uint8 images [N, 28, 28]: a ring or a slanted stroke, anti-aliased, on black."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:28, 0:28].astype(np.float64)
    images = []
    for i in range(count):
        cy, cx = 14 + rng.uniform(-2, 2), 14 + rng.uniform(-2, 2)
        if i % 2:  # a zero
            distance = np.abs(np.hypot(rows - cy, cols - cx) - rng.uniform(5, 8))
        else:  # a one, slanted
            slope = rng.uniform(-0.4, 0.4)
            distance = np.abs(cols - (cx + slope * (rows - cy))) + np.where(np.abs(rows - cy) > 9, 28, 0)
        images.append(np.clip(255 * (2.0 - distance), 0, 255))
    return np.stack(images).astype(np.uint8)


DIGITS = tiny_digits()


@pytest.mark.parametrize("name", NAMES)
def test_each_corruption_keeps_shape_and_range_and_changes_every_image(name):
    before = DIGITS.copy()
    out = corrupt(name, DIGITS, seed=1)
    assert out.shape == DIGITS.shape and out.dtype == np.uint8
    assert out.max() > 0
    raw = CORRUPTIONS[name](DIGITS / 255, np.random.default_rng(1))  # before corrupt() rounds and clips
    assert raw.shape == DIGITS.shape and raw.min() >= 0 and raw.max() <= 1
    assert (out != DIGITS).any(axis=(1, 2)).all(), "some image came out unchanged"
    assert np.array_equal(DIGITS, before), "the input was modified"


@pytest.mark.parametrize("name", NAMES)
def test_each_corruption_is_deterministic_for_a_seed(name):
    digits = tiny_digits(24)  # enough that two seeds cannot draw the same signs (shear, rotate) by chance
    first = corrupt(name, digits, seed=7)
    assert np.array_equal(first, corrupt(name, digits, seed=7))
    other = corrupt(name, digits, seed=8)
    if name in NOT_RANDOM:
        assert np.array_equal(first, other)
    else:
        assert not np.array_equal(first, other)


def test_the_fifteen_in_mnist_c_order():
    assert NAMES == (
        "shot_noise",
        "impulse_noise",
        "glass_blur",
        "motion_blur",
        "shear",
        "scale",
        "rotate",
        "brightness",
        "translate",
        "stripe",
        "fog",
        "spatter",
        "dotted_line",
        "zigzag",
        "canny_edges",
    )


def test_bad_names_and_arrays_are_user_errors():
    with pytest.raises(UserError, match="unknown corruption 'snow'; known corruptions: brightness"):
        corrupt("snow", DIGITS)
    for bad in (DIGITS.astype(np.float32), DIGITS[0], DIGITS[:, :27]):
        with pytest.raises(UserError, match=r"corruptions take uint8 images \[N, 28, 28\]"):
            corrupt("stripe", bad)


def test_empty_batch():
    assert corrupt("fog", DIGITS[:0]).shape == (0, 28, 28)


def test_glass_blur_waves_are_the_reference_scan():
    """local_shuffle does the reference's sequential swaps (rows and columns 27 down to 2) a wave at a time."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    swap = rng.random(pixels.shape) < 0.5
    dy, dx = rng.integers(-1, 1, size=(2, *pixels.shape))
    expected = pixels.copy()
    for n in range(len(expected)):
        for h in range(27, 1, -1):
            for w in range(27, 1, -1):
                if swap[n, h, w]:
                    h2, w2 = h + dy[n, h, w], w + dx[n, h, w]
                    expected[n, h, w], expected[n, h2, w2] = expected[n, h2, w2], expected[n, h, w]
    local_shuffle(pixels, swap, dy, dx)
    assert np.array_equal(pixels, expected)


def _skimage_warp(image: np.ndarray, **params) -> np.ndarray:
    """The reference's affine corruption with skimage: the map about (13.5, 13.5), as inverse_map."""
    linear = transform.AffineTransform(**params).params[:2, :2]
    offset = 13.5 * (1 - linear.sum(axis=1))
    matrix = np.eye(3)
    matrix[:2, :2], matrix[:2, 2] = linear, offset
    warped = transform.warp(image / 255, inverse_map=transform.AffineTransform(matrix=matrix))
    return np.rint(np.clip(warped, 0, 1) * 255)


def test_scale_and_rotate_are_skimages_warps_about_the_centre():
    scaled = corrupt("scale", DIGITS)
    rotated = corrupt("rotate", DIGITS, seed=2).astype(np.float64)
    for i, image in enumerate(DIGITS):
        assert np.abs(scaled[i] - _skimage_warp(image, scale=(1 / 0.7, 1 / 0.7))).max() <= 1
        either = [_skimage_warp(image, rotation=angle) for angle in (0.4, -0.4)]
        assert min(np.abs(rotated[i] - e).max() for e in either) <= 1


def test_shear_is_the_reference_skimage_shear():
    """skimage's AffineTransform(shear=a) of 2019 (and MNIST-C): [[1, -sin a], [0, cos a]] on (col, row)."""
    sheared = corrupt("shear", DIGITS, seed=4).astype(np.float64)
    for i, image in enumerate(DIGITS):
        either = []
        for angle in (0.4, -0.4):
            matrix = np.array([[1, -np.sin(angle)], [0, np.cos(angle)]])
            either.append(_skimage_warp(image, matrix=np.block([[matrix, np.zeros((2, 1))], [0, 0, 1]])))
        assert min(np.abs(sheared[i] - e).max() for e in either) <= 1


def test_translate_moves_by_three_pixels_each_way():
    moved = corrupt("translate", DIGITS, seed=5)
    for i, image in enumerate(DIGITS):
        shifts = [(dy, dx) for dy in (-3, 3) for dx in (-3, 3)]
        padded = np.pad(image, 3)
        candidates = [padded[3 + dy : 31 + dy, 3 + dx : 31 + dx] for dy, dx in shifts]
        assert any(np.array_equal(moved[i], c) for c in candidates)


def test_brightness_is_the_hsv_round_trip():
    x = DIGITS / 255
    hsv = color.rgb2hsv(color.gray2rgb(x))
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.5, 0, 1)
    expected = color.rgb2gray(color.hsv2rgb(hsv))
    assert np.abs(corrupt("brightness", DIGITS) - expected * 255).max() <= 0.5 + 1e-6


def test_stripe_inverts_the_side_columns_only():
    out = corrupt("stripe", DIGITS)
    assert np.array_equal(out[:, :, 7:21], DIGITS[:, :, 7:21])
    assert np.array_equal(out[:, :, :7], 255 - DIGITS[:, :, :7])
    assert np.array_equal(out[:, :, 21:], 255 - DIGITS[:, :, 21:])


def test_plasma_fractal_spans_zero_to_one():
    maps = plasma_fractal(3, np.random.default_rng(0), mapsize=32)
    assert maps.shape == (3, 32, 32)
    assert np.allclose(maps.min(axis=(1, 2)), 0) and np.allclose(maps.max(axis=(1, 2)), 1)
    assert not np.allclose(maps[0], maps[1])
