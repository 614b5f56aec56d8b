"""Uneven light and polarity: which way the ink goes, and the paper's brightness under every pixel.

Uneven light (a page brighter on one side, a soft shadow) varies slowly, while ink comes in strokes,
narrow however large the digit. Morphology tells them apart: a closing wider than the strokes
fills them in from the paper around them, and leaves the light.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage.filters import gaussian, sobel, threshold_otsu
from skimage.morphology import closing, footprint_rectangle

from mnist_nn.inference.preprocess.arrays import border, median, resized, shrink
from mnist_nn.inference.preprocess.strokes import mean_width
from mnist_nn.inference.preprocess.thresholds import (
    CLEAN_PAPER_NOISE,
    CLEAN_PAPER_SHARE,
    DEEP_SHARE,
    EIGHT_CONNECTED,
    FILLED_DEPTH,
    FLAT_SIZE,
    FOOTPRINT_GROWTH,
    FOOTPRINT_PAD,
    FOOTPRINT_STROKES,
    INK_PERCENTILE,
    MAD_TO_SIGMA,
    MIN_FOOTPRINT,
    MIN_INK_RANGE,
    NOISE_FLOOR,
    POLARITY_MARGIN,
    POLARITY_NOISE,
    POLARITY_SIZE,
    POLARITY_WINDOW_PARTS,
    POLARITY_WINDOW_TAKEN,
    ROUGH_INK_SHARE,
    SHARP_EDGE_PARTS,
    SMALL_IMAGE,
    SMOOTH_PARTS,
    TIGHT_UNFILLED,
    UNFILLED_SHARE,
    WIDEST_PARTS,
)

# A closing of the copy with a square footprint of the given side, as dark ink sees it.
Fill = Callable[[int], np.ndarray]


def flatten_light(work: np.ndarray, clean: bool = False) -> tuple[bool, np.ndarray]:
    """The ink's polarity (True: dark ink on light paper) and the paper's brightness at every pixel.

    The paper is what a morphological closing (dark ink; an opening for light ink) leaves, with a
    footprint wider than the strokes: every stroke is filled in from the paper around it, while a
    gradient or a shadow wider than the footprint stays. The footprint starts at 1.5 strokes, grows
    while it leaves sharp-edged ink unfilled, and a footprint half as wide is taken away from the
    ink, where it follows a shadow closer. It is all done on a copy of at most FLAT_SIZE pixels,
    smoothed and scaled back up. ``clean``: the caller found the paper flat already (clean_paper).
    """
    height, width = work.shape
    factor = min(1.0, FLAT_SIZE / max(height, width))
    small = shrink(work, factor)
    if min(height, width) < SMALL_IMAGE or clean or clean_paper(work):
        # A digit a few dozen pixels across fills its image: the morphology would find no paper around
        # the strokes at the edges, and the light has no room to vary (scikit-learn's 8x8 digits enlarged
        # 4x: 90.5% read flattened, 91.9% not). A drawing (the page's pad, an app's export) has no light to
        # flatten at all. The paper is the border's median, as it was everywhere. Only the polarity is
        # needed then, and such an image settles it from its extremes alone: the fast path, with no
        # morphology, no median background and no stroke measured.
        return _polarity(small)[0], np.full_like(work, median(border(work)))
    inverted, stroke = _polarity(small, with_stroke=True)
    sign = 1.0 if inverted else -1.0  # work on dark ink either way: light ink is dark in -small
    fill = _closing(small, sign)
    paper, side = _paper(small, sign, stroke, fill)
    paper = _follow_shadows(small, sign, paper, side, fill)
    # The footprint's square steps, smoothed away: the light has no edges.
    paper = gaussian(paper, sigma=side / SMOOTH_PARTS, mode="nearest", preserve_range=True).astype(np.float32)
    if factor < 1.0:
        paper = resized(paper, width, height)
    return inverted, paper


def clean_paper(work: np.ndarray) -> bool:
    """Whether the paper is one flat tone, as in a drawing: nothing to flatten.

    The whole border lies within CLEAN_PAPER_NOISE grey levels of its median, and so does at least
    CLEAN_PAPER_SHARE of the image (ink covers far less of a digit's picture). A photo's sensor noise
    alone (2-12 grey levels in the photo-like sets) keeps it on the full path, and so does any light
    that varies along the border.
    """
    edge = border(work)
    level = median(edge)
    if float(np.abs(edge - level).max()) > CLEAN_PAPER_NOISE:
        return False
    return float((np.abs(work - level) <= CLEAN_PAPER_NOISE).mean()) >= CLEAN_PAPER_SHARE


def _closing(small: np.ndarray, sign: float) -> Fill:
    """The paper under ``small`` by a closing of a given side: dark ink (sign 1) or light ink (sign -1) filled in."""

    def fill(size: int) -> np.ndarray:
        return sign * closing(
            sign * small, footprint_rectangle((size, size), decomposition="separable"), mode="nearest"
        )

    return fill


def _paper(small: np.ndarray, sign: float, stroke: float, fill: Fill) -> tuple[np.ndarray, int]:
    """(the paper, its footprint's side): the narrowest footprint that fills nearly all the sharp-edged ink.

    The footprint must be wider than the strokes, their crossings too, to fill them; any wider and it
    could not follow a shadow. A marker's strokes in a tight crop can fool the stroke estimate, so the
    footprint grows until it fills nearly all the ink the widest footprint fills (else the strokes
    would be read hollow).
    """
    widest = max(MIN_FOOTPRINT, min(small.shape) // WIDEST_PARTS)
    side = int(np.clip(round(FOOTPRINT_STROKES * stroke + FOOTPRINT_PAD), MIN_FOOTPRINT, widest))
    filled = fill(widest)
    depth = sign * (filled - small)
    ink = _sharp(small, depth)
    paper = fill(side)
    while side < widest and _unfilled(ink, sign * (filled - paper) >= FILLED_DEPTH * depth):
        side = min(widest, round(FOOTPRINT_GROWTH * side))
        paper = fill(side)
    return paper, side


def _unfilled(ink: np.ndarray, short: np.ndarray) -> bool:
    """Whether more than UNFILLED_SHARE of the ink is where a footprint fell ``short`` of the widest one's filling."""
    return (ink & short).sum() > UNFILLED_SHARE * ink.sum()


def _follow_shadows(small: np.ndarray, sign: float, paper: np.ndarray, side: int, fill: Fill) -> np.ndarray:
    """The paper, taken from a footprint half as wide wherever that one still fills the strokes.

    A closing overshoots in a shadow's dip, the more the wider its footprint (a shadow of 70 grey levels
    next to the digit left 20 as "ink"). A footprint half as wide follows the light closely; it is
    taken wherever it still filled the strokes, that is away from where it differs by ink's strength.
    """
    half = max(MIN_FOOTPRINT, side // 2)
    tight = fill(half)
    strength = float(np.percentile(sign * (paper - small), INK_PERCENTILE))
    differs = sign * (paper - tight) >= TIGHT_UNFILLED * strength
    unfilled = ndimage.binary_dilation(differs, structure=np.ones((half, half)))
    return np.where(unfilled, paper, tight)


def _sharp(small: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Where ``depth`` (darker than the paper) is ink: at least half the deepest, in blobs with sharp edges.

    A pen's stroke ends within a pixel or two; a shadow fades over a tenth of the page. A blob counts
    as ink when the brightness changes across its outline by at least an eighth of its depth per pixel.
    """
    deep = depth >= DEEP_SHARE * float(np.percentile(depth, INK_PERCENTILE))
    labels, count = ndimage.label(deep, structure=EIGHT_CONNECTED)
    if count == 0:
        return deep
    slope = sobel(small)
    outline = deep & ~ndimage.binary_erosion(deep, structure=EIGHT_CONNECTED)
    index = np.arange(1, count + 1)
    edge = ndimage.median(slope, labels * outline, index)
    level = ndimage.median(depth, labels, index)
    sharp = np.zeros(count + 1, dtype=bool)
    sharp[1:] = np.asarray(edge) >= np.asarray(level) / SHARP_EDGE_PARTS
    return sharp[labels]


def _polarity(small: np.ndarray, with_stroke: bool = False) -> tuple[bool, float]:
    """(dark ink?, the ink's stroke width in ``small``'s pixels, or 1 unless ``with_stroke``).

    The ink is the extreme further from the paper, the border's median, when it is clearly further
    (twice). Else uneven light blurs that picture: a median over a window two thirds of the image
    wide is the paper for either polarity (ink covers less than half of such a window) and follows
    the light; what stands out from it beyond the noise, summed, is far larger on the ink's side.
    On that side, Otsu's threshold (and at least half the ink's strength) gives a rough ink mask
    whose area / skeleton length is its stroke width. The median background (the costly part on a
    small image) is computed only when the extremes do not settle the polarity or a width is asked for.
    """
    tiny = functools.cache(lambda: shrink(small, min(1.0, POLARITY_SIZE / max(small.shape))))
    rough = functools.cache(lambda: _rough_background(tiny()))
    inverted = _dark_ink(small, lambda: tiny() - rough())
    if not with_stroke:
        return inverted, 1.0
    background = rough()
    if background.shape != small.shape:
        background = resized(background, small.shape[1], small.shape[0])
    ink = background - small if inverted else small - background
    if float(np.ptp(ink)) < MIN_INK_RANGE:
        return inverted, 1.0
    # At least half the ink's strength: a shadow the rough background missed is not taken for a stroke.
    mask = ink > max(threshold_otsu(ink), ROUGH_INK_SHARE * float(np.percentile(ink, INK_PERCENTILE)))
    return inverted, mean_width(mask)


def _rough_background(tiny: np.ndarray) -> np.ndarray:
    """The paper under ``tiny`` for either polarity: a median over a window two thirds of the image wide."""
    window = max(MIN_FOOTPRINT, min(tiny.shape) // POLARITY_WINDOW_PARTS * POLARITY_WINDOW_TAKEN + 1)
    return ndimage.median_filter(tiny, size=window, mode="nearest")


def _dark_ink(small: np.ndarray, residual_of: Callable[[], np.ndarray]) -> bool:
    """Whether the ink is darker than the paper: the clearly further extreme, else the side standing out more.

    ``residual_of()`` is the tiny copy less its rough median background, computed only when needed.
    """
    background = median(border(small))
    darker = background - float(small.min())
    lighter = float(small.max()) - background
    if max(darker, lighter) >= POLARITY_MARGIN * min(darker, lighter):
        return darker > lighter
    residual = residual_of()
    spread = MAD_TO_SIGMA * median(np.abs(residual).ravel()) + NOISE_FLOOR
    dark = float(np.clip(-residual - POLARITY_NOISE * spread, 0, None).sum())
    light = float(np.clip(residual - POLARITY_NOISE * spread, 0, None).sum())
    return dark > light if dark != light else darker >= lighter
