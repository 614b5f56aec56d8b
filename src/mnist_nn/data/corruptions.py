"""MNIST-C's 15 corruptions of handwritten digits, each at the severity MNIST-C uses, seeded.

MNIST-C is Norman Mu and Justin Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision",
2019 (arXiv:1906.02337). Its reference code, github.com/google-research/mnist-c (corruptions.py,
Apache 2.0), corrupts one PIL image at a time with NumPy's global random state, Wand (ImageMagick)
and OpenCV. This is our own code for the same corruptions: the parameters are the reference's (each
function's default severity: MNIST-C keeps one severity per corruption), the work is vectorised over a
batch of images, and the randomness comes from a seeded ``numpy.random.Generator``. Where the
reference does something on purpose or by accident that shapes MNIST-C's images (glass blur blurs
down the columns only, lines are measured vertically, the zigzag's last segment), we do the same.

Each corruption maps float images [N, 28, 28] in [0, 1] to the same; ``corrupt`` takes and returns
uint8 pixels. ``CORRUPTIONS_VERSION`` names what they compute: change it when a corruption changes,
so that cached corrupted sets (robustness.py) are built again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage import feature

from mnist_nn.core.errors import UserError
from mnist_nn.core.registry import Registry

CORRUPTIONS_VERSION = 1
SIZE = 28
CENTRE = (SIZE - 1) / 2  # 13.5: the reference's affine maps keep this point fixed

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------- noise


def shot_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise: ink counted as photons, 3 to full ink (severity 5)."""
    photons = 3
    return np.clip(rng.poisson(x * photons) / photons, 0, 1)


def impulse_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on 17% of the pixels, half each (severity 4; skimage's random_noise 's&p')."""
    flipped = rng.random(x.shape) < 0.17
    salt = rng.random(x.shape) < 0.5
    return np.where(flipped, salt.astype(x.dtype), x)


# --------------------------------------------------------------------------- blur


def _blur_down_columns(x: np.ndarray, sigma: float) -> np.ndarray:
    # The reference calls skimage's gaussian(..., multichannel=True) on a 2-D image, so the skimage of
    # its day took the 28 columns for colour channels and blurred along axis 0 only: MNIST-C's glass
    # blur is vertical. skimage's gaussian: edge pixels repeated ('nearest'), truncated at 4 sigma.
    return ndimage.gaussian_filter1d(x, sigma, axis=1, mode="nearest", truncate=4.0)


def _scan_wavefronts() -> list[tuple[np.ndarray, np.ndarray]]:
    """The reference's glass-blur scan (rows 27 down to 2, each row's columns 27 down to 2), in waves.

    Step (h, w) swaps (h, w) with (h + dy, w + dx), dx and dy each -1 or 0: it touches the 2x2
    block ending at (h, w). Steps one apart (in any direction) can touch the same pixel, so they
    must keep the scan's order; steps further apart cannot. t = 2 (27 - h) + (27 - w) puts every
    step after each neighbour the scan does before it ((h, w + 1): t - 1; (h + 1, w - 1): t - 1;
    (h + 1, w): t - 2; (h + 1, w + 1): t - 3), and steps of equal t are at least two columns apart;
    so doing each wave at once, in order of t, is the sequential scan, in 76 steps instead of 676.
    """
    rows, cols = np.mgrid[SIZE - 1 : 1 : -1, SIZE - 1 : 1 : -1]
    wave = 2 * (SIZE - 1 - rows) + (SIZE - 1 - cols)
    return [(rows[wave == t], cols[wave == t]) for t in range(int(wave.max()) + 1)]


_WAVEFRONTS = _scan_wavefronts()


def local_shuffle(pixels: np.ndarray, swap: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """One pass of glass blur's pixel shuffle over uint8 [N, 28, 28] ``pixels``, in place.

    ``swap`` [N, 28, 28] says which scan steps swap; ``dy``/``dx`` [N, 28, 28] (-1 or 0) where
    to. The same as the reference's loop over h and w, done one wave of independent steps at a time.
    """
    for rows, cols in _WAVEFRONTS:
        image, step = np.nonzero(swap[:, rows, cols])
        h, w = rows[step], cols[step]
        h2, w2 = h + dy[image, h, w], w + dx[image, h, w]
        here, there = pixels[image, h, w], pixels[image, h2, w2]
        pixels[image, h, w] = there
        pixels[image, h2, w2] = here


def glass_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, shuffle pixels with their neighbours up and to the left, blur again (severity 1)."""
    sigma = 0.7  # of both Gaussian blurs, in pixels
    max_delta = 1  # the exclusive upper bound of a pixel's move (see randint below)
    iterations = 2  # shuffling passes
    # The reference truncates the first blur to uint8 (np.uint8) before shuffling.
    pixels = (_blur_down_columns(x, sigma) * 255).astype(np.uint8)
    for _ in range(iterations):
        swap = rng.random(pixels.shape) < 0.5
        # randint(-1, 1): -1 or 0, never +1; so pixels only move up and left.
        dy, dx = rng.integers(-max_delta, max_delta, size=(2, *pixels.shape))
        local_shuffle(pixels, swap, dy, dx)
    return np.clip(_blur_down_columns(pixels / 255, sigma), 0, 1)


def motion_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ImageMagick's motion blur, radius 10 and sigma 3, at an angle from -45 to 45 degrees (severity 1).

    As MagickMotionBlurImage: a one-sided Gaussian of 2 ceil(radius) + 1 taps, sampled at whole-pixel
    offsets (rounded) along the angle from each pixel, with the image's edge pixels repeated beyond it.
    """
    radius, sigma = 10, 3
    taps = np.arange(2 * int(np.ceil(radius)) + 1)
    kernel = np.exp(-(taps**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    angle = np.deg2rad(rng.uniform(-45, 45, len(x)))
    # ceil(v - 0.5): ImageMagick's rounding of the offsets.
    dx = np.ceil(taps * np.cos(angle)[:, None] - 0.5).astype(int)
    dy = np.ceil(taps * np.sin(angle)[:, None] - 0.5).astype(int)
    grid = np.arange(SIZE)
    image = np.arange(len(x))[:, None, None]
    out = np.zeros_like(x)
    for i, weight in enumerate(kernel):
        rows = np.clip(grid[None, :, None] + dy[:, i, None, None], 0, SIZE - 1)
        cols = np.clip(grid[None, None, :] + dx[:, i, None, None], 0, SIZE - 1)
        out += weight * x[image, rows, cols]
    return out


# --------------------------------------------------------------------------- affine maps


def _warp(x: np.ndarray, matrices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """skimage's warp(x, inverse_map=affine) for a batch: output (col, row) samples the input at
    matrix @ (col, row) + offset, bilinearly, with black beyond the edges (its 'constant' mode).

    ``matrices`` [N, 2, 2] and ``offsets`` [N, 2] act on (col, row), as skimage's transforms do.
    """
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    m, t = matrices[:, :, :, None, None], offsets[:, :, None, None]
    source_col = m[:, 0, 0] * cols + m[:, 0, 1] * rows + t[:, 0]
    source_row = m[:, 1, 0] * cols + m[:, 1, 1] * rows + t[:, 1]
    image = np.broadcast_to(np.arange(len(x), dtype=np.float64)[:, None, None], source_col.shape)
    # grid-constant interpolates with the black beyond the edge, as skimage's bilinear warp does.
    return ndimage.map_coordinates(x, [image, source_row, source_col], order=1, mode="grid-constant", cval=0.0)


def _centred(x: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Warp with the linear maps ``matrices`` about the image's centre (13.5, 13.5), as the reference does."""
    offsets = CENTRE * (1 - matrices.sum(axis=2))
    return _warp(x, matrices, offsets)


def _random_sign(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), count)


def shear(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shear by 0.4 radians, one way or the other (severity 2)."""
    angle = 0.4 * _random_sign(rng, len(x))
    # skimage's AffineTransform(shear=a) of the time: [[1, -sin a], [0, cos a]] on (col, row).
    matrices = np.zeros((len(x), 2, 2))
    matrices[:, 0, 0] = 1
    matrices[:, 0, 1] = -np.sin(angle)
    matrices[:, 1, 1] = np.cos(angle)
    return _centred(x, matrices)


def scale(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shrink to 70% about the centre (severity 3); not random."""
    factor = 1 / 0.7  # the inverse map: output pixels sample the input 1/0.7 as far from the centre
    return _centred(x, np.broadcast_to(np.eye(2) * factor, (len(x), 2, 2)).copy())


def rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate by 0.4 radians (23 degrees), one way or the other (severity 2)."""
    angle = 0.4 * _random_sign(rng, len(x))
    cos, sin = np.cos(angle), np.sin(angle)
    matrices = np.stack([np.stack([cos, -sin], axis=1), np.stack([sin, cos], axis=1)], axis=1)
    return _centred(x, matrices)


def translate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift by 3 pixels along each axis, each way at random (severity 3)."""
    offsets = 3 * rng.choice(np.array([-1.0, 1.0]), size=(len(x), 2))
    return _warp(x, np.broadcast_to(np.eye(2), (len(x), 2, 2)), offsets)


# --------------------------------------------------------------------------- light and weather


def brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Value +0.5 in HSV (severity 5); not random.

    The reference goes grey -> RGB -> HSV, adds to V, and back; for a grey image that is V itself
    (saturation 0, and rgb2gray's weights sum to 1), so it is this.
    """
    return np.clip(x + 0.5, 0, 1)


def stripe(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Invert the 7 columns at each side; not random."""
    out = x.copy()
    out[:, :, :7] = 1 - x[:, :, :7]
    out[:, :, 21:] = 1 - x[:, :, 21:]
    return out


def _diamond_sum(centres: np.ndarray, corners: np.ndarray, axis: int) -> np.ndarray:
    """The four neighbours of each diamond point: two centres across ``axis``, two corners along the other."""
    total = centres + np.roll(centres, 1, axis=axis)
    total += corners
    total += np.roll(corners, -1, axis=3 - axis)
    return total


def plasma_fractal(count: int, rng: np.random.Generator, mapsize: int = 256, decay: float = 1.4) -> np.ndarray:
    """``count`` diamond-square height maps [count, mapsize, mapsize], each scaled to [0, 1] (the reference's).

    As in the reference, each new point is the mean of its four neighbours (wrapping around)
    plus wibble times a uniform draw from [-wibble, wibble], and wibble shrinks by ``decay`` per level.
    In float32, in place where it can be: the 65,535 random draws per map are most of fog's time.
    """
    maps = np.empty((count, mapsize, mapsize), dtype=np.float32)
    maps[:, 0, 0] = 0
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        noise = rng.random(total.shape, dtype=np.float32)
        noise *= np.float32(2 * wibble * wibble)
        noise -= np.float32(wibble * wibble)
        total *= np.float32(0.25)
        total += noise
        return total

    while step >= 2:
        half = step // 2
        corners = maps[:, ::step, ::step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares += np.roll(squares, -1, axis=2)
        maps[:, half::step, half::step] = wibbled_mean(squares)
        centres = maps[:, half::step, half::step]
        # The diamonds: the points between two corners along a row, then those down a column.
        maps[:, ::step, half::step] = wibbled_mean(_diamond_sum(centres, corners, 1))
        maps[:, half::step, ::step] = wibbled_mean(_diamond_sum(centres, corners, 2))
        step //= 2
        wibble /= decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    maps /= maps.max(axis=(1, 2), keepdims=True)
    return maps


FOG_CHUNK = 128  # height maps made at once: 128 of 256x256 float32 is 32 MB


def fog(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plasma fractal's 28x28 corner, 3 times full ink, added, then the result scaled back (severity 5)."""
    strength = 3.0
    out = np.empty_like(x)
    for start in range(0, len(x), FOG_CHUNK):
        part = x[start : start + FOG_CHUNK]
        haze = plasma_fractal(len(part), rng, decay=1.4)[:, :SIZE, :SIZE]
        peak = part.max(axis=(1, 2), keepdims=True)
        out[start : start + FOG_CHUNK] = (part + strength * haze) * peak / (peak + strength)
    return np.clip(out, 0, 1)


def spatter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mud: blobs of grey 63 where smoothed noise runs high (severity 4)."""
    loc = 0.65  # mean of the Gaussian noise the mud grows from
    spread = 0.3  # its standard deviation
    sigma = 1.0  # the noise's smoothing, in pixels
    threshold = 0.65  # smoothed noise above this becomes mud
    mud_sigma = 1.5  # the blur that softens the mud's edges, in pixels
    # skimage's gaussian on each 2-D image: edges repeated, truncated at 4 sigma.
    liquid = ndimage.gaussian_filter(rng.normal(loc, spread, x.shape), (0, sigma, sigma), mode="nearest")
    mud = ndimage.gaussian_filter((liquid > threshold).astype(np.float64), (0, mud_sigma, mud_sigma), mode="nearest")
    mud[mud < 0.8] = 0
    return np.clip(x * (1 - mud) + 63 / 255 * mud, 0, 1)


# --------------------------------------------------------------------------- lines and edges


_GRID = np.arange(SIZE, dtype=np.float64)


def line_from_points(c0: np.ndarray, r0: np.ndarray, c1: np.ndarray, r1: np.ndarray) -> np.ndarray:
    """One antialiased line per image [N, 28, 28] from (c0, r0) to (c1, r1), as the reference draws it.

    Ink falls off as log(1 - d / 2.3) + 1 with d the vertical (not perpendicular) distance to the
    line, and only the columns from floor(c0) up to, not including, ceil(c1) are drawn. Needs c1 > c0.
    """
    slope = (r1 - r0) / (c1 - c0)
    line_rows = slope[:, None] * (_GRID[None, :] - c0[:, None]) + r0[:, None]  # [N, column]
    distance = np.clip(np.abs(_GRID[None, :, None] - line_rows[:, None, :]), 0, 2.3 - 1e-10)
    ink = np.clip(np.log(1 - distance / 2.3) + 1, 0, 1)
    drawn = (_GRID[None, :] >= np.floor(c0)[:, None]) & (_GRID[None, :] < np.ceil(c1)[:, None])
    return ink * drawn[:, None, :]


def dotted_line(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A line across the image, from a random row at the left to one at the right, drawn 2 columns on, 2 off."""
    r0, r1 = rng.integers(0, SIZE - 1, size=(2, len(x))).astype(np.float64)
    line = line_from_points(np.zeros(len(x)), r0, np.full(len(x), SIZE - 1.0), r1)
    dashes = (np.arange(SIZE) // 2) % 2 == 1  # the reference blanks columns 0-1, 4-5, ..., 24-25
    return np.clip(x + line * dashes, 0, 1)


def zigzag(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A zigzag from column 2 to about 25, teeth 2 long and 2 high, at a random row and slight slope."""
    a = b = 2.0
    c0, c1 = 2, 25
    r0 = rng.integers(0, SIZE - 1, len(x))
    r1 = r0 + rng.integers(-5, 5, len(x))
    theta = np.arctan((r1 - r0) / (c1 - c0))
    length = (c1 - c0) / np.cos(theta)
    # The reference's int((length - a) // (2a)) + 1 teeth: 6 for every length here (23 to 23.6).
    teeth = np.arange(6)
    last_row = (-1.0) ** teeth[-1] * b
    end = 2 * a * (length // (2 * a))
    # Its closing point, at the full length, sits at this odd height (kept: it shapes MNIST-C's zigzags).
    cs = np.column_stack([np.zeros(len(x)), np.broadcast_to((2 * teeth + 1) * a, (len(x), 6)), length])
    rs = np.column_stack(
        [np.zeros(len(x)), np.broadcast_to((-1.0) ** teeth * b, (len(x), 6)), last_row / (2 * (length - end))]
    )
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    cs, rs = cos * cs - sin * rs + c0, sin * cs + cos * rs + r0[:, None]
    out = x
    for i in range(1, cs.shape[1]):
        out = np.clip(out + line_from_points(cs[:, i - 1], rs[:, i - 1], cs[:, i], rs[:, i]), 0, 1)
    return out


def canny_edges(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The Canny edges (skimage's defaults: sigma 1, thresholds 0.1 and 0.2) in full ink; not random."""
    # skimage's canny takes one 2-D image; each call is vectorised within the image.
    return np.stack([feature.canny(image) for image in x]).astype(np.float64)


# --------------------------------------------------------------------------- the registry


CORRUPTIONS: Registry[Corruption] = Registry("corruption")
# MNIST-C's order (its CORRUPTIONS list, without 'identity').
for _function in (
    shot_noise,
    impulse_noise,
    glass_blur,
    motion_blur,
    shear,
    scale,
    rotate,
    brightness,
    translate,
    stripe,
    fog,
    spatter,
    dotted_line,
    zigzag,
    canny_edges,
):
    CORRUPTIONS.add(_function.__name__, _function)
NAMES = tuple(CORRUPTIONS)
# The corruptions that draw no random numbers: the same images whatever the seed.
NOT_RANDOM = ("scale", "brightness", "stripe", "canny_edges")


def corrupt(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """MNIST-C's corruption ``name`` applied to uint8 ``images`` [N, 28, 28]; a new uint8 array, rounded.

    The same ``seed`` gives the same images; each corruption draws from its own stream
    (seed, its place in ``NAMES``), so one set does not depend on which others were made.
    """
    function = CORRUPTIONS.lookup(name)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIZE, SIZE):
        raise UserError(f"corruptions take uint8 images [N, 28, 28], got {images.dtype} {list(images.shape)}")
    rng = np.random.default_rng([seed, NAMES.index(name)])
    out = function(images.astype(np.float64) / 255, rng)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
