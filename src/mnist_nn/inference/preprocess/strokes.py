"""Stroke width: measured in MNIST's 20 px box, and brought into MNIST's range (a fine pen, a marker).

MNIST's pens were of ordinary width; a fine pen's hairline or a marker's bold strokes, fitted to the
20 px box, would be far thinner or thicker than any digit a model saw. So before the fit, strokes
outside MNIST's range are grown or peeled towards it, without changing the digit's topology.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import disk, skeletonize

from mnist_nn.inference.preprocess.arrays import bounds, shrink
from mnist_nn.inference.preprocess.thresholds import (
    EIGHT_CONNECTED,
    FULL_STROKE_PERCENTILE,
    HALF_GREY,
    HALF_STRENGTH,
    MIN_HOLE,
    MNIST_BOX,
    SKELETON_KEPT,
    STROKE_HIGH,
    STROKE_LOW,
    STROKE_SIZE,
    STROKE_TARGET,
    STROKE_THINNED,
)


def stroke_width(crop: np.ndarray) -> float:
    """The strokes' width in MNIST's 20 px box: the half-strength ink's area / skeleton length, scaled to the box.

    Measured on a copy whose longer side is at most STROKE_SIZE pixels, where the skeleton is cheap;
    MNIST's own digits, enlarged to 112 px, give 1.88-4.56 (5th-95th percentile), median 2.81.
    """
    small = _stroke_copy(crop)
    mask = small >= HALF_STRENGTH * float(small.max())
    return mean_width(mask) * MNIST_BOX / _core(mask)


def normalize_strokes(crop: np.ndarray) -> np.ndarray:
    """Strokes far thinner or thicker than MNIST's (a fine pen, a marker) brought into its range, before the fit.

    Widths are in the 20 px box (see stroke_width), measured and changed on a copy STROKE_SIZE
    pixels across. Thin strokes (under STROKE_LOW) are grown to STROKE_TARGET by a grey dilation
    with a disk, made smaller while it would close a loop (a small 6's or 9's). Strokes thicker than
    any of MNIST's (over STROKE_HIGH) are peeled towards STROKE_THINNED, less while that would break
    a stroke in two, lose a loop or erase a thinner stroke (SKELETON_KEPT). Digits within range, or
    smaller than MNIST's box, are returned as they are.
    """
    small = _stroke_copy(crop)
    mask = small >= HALF_STRENGTH * float(small.max())
    core = _core(mask)
    # A digit smaller than MNIST's box has too few pixels to measure a stroke by (scikit-learn's 8x8
    # digits: 97.1% read with it, 97.3% without); it is settled before the skeleton, the costly part.
    if core < MNIST_BOX:
        return crop
    skeleton = skeletonize(mask)  # measures the width here, and is what thinning must keep below
    width = mean_width(mask, skeleton) * MNIST_BOX / core
    if STROKE_LOW <= width <= STROKE_HIGH:
        return crop
    per_box_pixel = core / MNIST_BOX  # the copy's pixels per pixel of the 20 px box
    if width > STROKE_HIGH:
        return _thinned(crop, small, mask, skeleton, (width - STROKE_THINNED) * per_box_pixel / 2)
    return _thickened(small, round((STROKE_TARGET - width) * per_box_pixel / 2))


def _thinned(crop: np.ndarray, small: np.ndarray, mask: np.ndarray, skeleton: np.ndarray, radius: float) -> np.ndarray:
    """The strokes of ``small`` peeled ``radius`` pixels deep, or less; ``crop`` itself when no depth will do.

    Peeling the outline keeps what stays at its own grey levels (a grey erosion would spread the
    faintest pixel over every stroke), with a soft edge. Each depth must keep the pieces, the loops
    and SKELETON_KEPT of the skeleton, else a pixel less deep is tried.
    """
    depth = ndimage.distance_transform_edt(mask)
    pieces, holes = _topology(mask)
    while radius >= 1:
        thinned = small * np.clip(depth - radius, 0.0, 1.0).astype(np.float32)
        kept = thinned >= HALF_STRENGTH * float(small.max())
        count, loops = _topology(kept)
        if loops >= holes and 0 < count <= pieces and (skeleton & kept).sum() >= SKELETON_KEPT * skeleton.sum():
            return thinned
        radius -= 1
    return crop


def _thickened(small: np.ndarray, radius: int) -> np.ndarray:
    """The strokes of ``small`` grown ``radius`` pixels by a grey dilation, less while it would close a loop."""
    # A fine line shrunk to the copy's scale is faint: its own strength is full strength.
    ink = small[small > 0]
    full = max(1.0, float(np.percentile(ink, FULL_STROKE_PERCENTILE)))
    small = np.clip(small * (255.0 / full), 0, 255)
    small = np.pad(small, radius + 1)
    _, holes = _topology(small >= HALF_GREY)
    while radius > 0:
        grown = ndimage.grey_dilation(small, footprint=disk(radius)).astype(np.float32)
        if _topology(grown >= HALF_GREY)[1] >= holes:
            return grown
        radius -= 1
    return small


def _stroke_copy(crop: np.ndarray) -> np.ndarray:
    """The crop at most STROKE_SIZE px across, area-averaged."""
    return shrink(crop.astype(np.float32, copy=False), min(1.0, STROKE_SIZE / max(crop.shape)))


def _core(mask: np.ndarray) -> int:
    """The longer side of the mask's box (at least 1): the digit's size, which MNIST fits to its 20 px box."""
    found = bounds(mask)
    if found is None:
        return 1
    y0, x0, y1, x1 = found
    return max(1, y1 - y0, x1 - x0)


def mean_width(mask: np.ndarray, skeleton: np.ndarray | None = None) -> float:
    """A mask's stroke width in its own pixels: area / skeleton length; ``skeleton``: the mask's, when known."""
    skeleton = skeletonize(mask) if skeleton is None else skeleton
    return float(mask.sum()) / max(1, int(skeleton.sum()))


def _topology(mask: np.ndarray) -> tuple[int, int]:
    """(8-connected pieces of ink, holes in them): what thinning or thickening must not change.

    A hole is a 4-connected piece of background that does not touch the border, of at least
    MIN_HOLE pixels: a pinhole in a thick stroke is no loop.
    """
    _, pieces = ndimage.label(mask, structure=EIGHT_CONNECTED)
    regions, count = ndimage.label(np.pad(~mask, 1, constant_values=True))
    areas = np.bincount(regions.ravel(), minlength=count + 1)[2:]  # 0 is ink, 1 the outside (the padding)
    return int(pieces), int((areas >= MIN_HOLE).sum())
