"""MNIST normalisation: ink cropped to its box -> the digit's longer side fitted to 20 px -> 28x28 by centre of mass.

MNIST's digits were size-normalized to fit a 20x20 box keeping their aspect ratio (anti-aliased,
hence grey levels), then placed in a 28x28 field with their centre of mass at the centre. A model
trained on MNIST expects exactly that, so every digit found goes through the same steps here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mnist_nn.inference.preprocess.arrays import bounds
from mnist_nn.inference.preprocess.errors import ImageError, NoDigitFound
from mnist_nn.inference.preprocess.strokes import normalize_strokes
from mnist_nn.inference.preprocess.thresholds import HALF_STRENGTH, MIN_CONTRAST, MNIST_BOX, MNIST_CENTRE, MNIST_SIZE

NOTHING_TO_FIT = "no ink: nothing left to fit in the 20x20 box"


def to_mnist(pixels: np.ndarray) -> np.ndarray:
    """Ink (float [H, W], 0 background) cropped to its box -> float32 [28, 28], MNIST's way."""
    found = bounds(pixels > 0)
    if found is None:
        raise NoDigitFound(NOTHING_TO_FIT)
    y0, x0, y1, x1 = found
    crop = normalize_strokes(pixels[y0:y1, x0:x1])
    return _centred(_fitted(crop))


def _fitted(crop: np.ndarray) -> np.ndarray:
    """The crop scaled so that its half-strength box's longer side is MNIST_BOX pixels, anti-aliased.

    MNIST fitted the box of the *binary* NIST digit to 20 px; anti-aliasing then added grey edges
    around it. A binary edge lies where the grey level crosses half strength, so the scale comes
    from the half-strength box, while the faint edges outside it are kept (measured: +1.5 points
    for the tutorial MLP on the synthetic photos, against fitting the faint box).
    """
    height, width = crop.shape
    y0, x0, y1, x1 = bounds(crop >= HALF_STRENGTH * float(crop.max()))
    core = max(y1 - y0, x1 - x0)
    factor = MNIST_BOX / core
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    # Lanczos widens its kernel by the scale factor when shrinking: anti-aliased, like MNIST's grey levels.
    image = Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32).clip(0, 255)


def _centred(box: np.ndarray) -> np.ndarray:
    """The fitted digit in a 28x28 field, its centre of mass on MNIST_CENTRE (to the nearest whole pixel)."""
    out = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    total = float(box.sum())
    if total <= 0:
        raise NoDigitFound(NOTHING_TO_FIT)
    # Index columns broadcast against the box: the same products and sums as full index grids, unallocated.
    rows = np.arange(box.shape[0])[:, None]
    cols = np.arange(box.shape[1])[None, :]
    com_y = float((rows * box).sum() / total)
    com_x = float((cols * box).sum() / total)
    # MNIST shifted by whole pixels (its centres of mass spread +-0.5 px around 14).
    top = round(MNIST_CENTRE - com_y)
    left = round(MNIST_CENTRE - com_x)
    _paste(out, box, top, left)
    return out


def _paste(out: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Copy ``patch`` into ``out`` at (top, left), clipping what falls outside."""
    h, w = patch.shape
    y0 = max(0, top)
    x0 = max(0, left)
    y1 = min(out.shape[0], top + h)
    x1 = min(out.shape[1], left + w)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]


def mnist_form(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """An image already in MNIST form (28x28, light digit on dark): used as it is."""
    if gray.shape != (MNIST_SIZE, MNIST_SIZE):
        height, width = gray.shape
        raise ImageError(
            f"{name}: image is {width}x{height}; without preprocessing it must be 28x28 in MNIST form "
            "(drop --no-preprocess to have it prepared)"
        )
    spread = float(gray.max()) - float(gray.min())
    if spread < MIN_CONTRAST:
        seen = np.clip(gray, 0, 255).astype(np.uint8)
        if spread == 0:
            raise NoDigitFound("no ink: the image is uniform", seen)
        raise NoDigitFound(f"too faint: the image spans {spread:.0f} grey levels, {MIN_CONTRAST:.0f} needed", seen)
    return gray.astype(np.float32)
