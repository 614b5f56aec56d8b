"""Finding the ink: light denoising, polarity, uneven light flattened, a hysteresis threshold.

The result is the image as MNIST sees ink (background 0, full-strength strokes 255), with the mask
of what is ink and its connected blobs. When nothing stands out from the paper, NoDigitFound says
why ("no ink" or "too faint") and carries the mask that was seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage.filters import gaussian

from mnist_nn.inference.preprocess.arrays import as_seen, border, median, percentile
from mnist_nn.inference.preprocess.components import Component, connected_components
from mnist_nn.inference.preprocess.errors import NoDigitFound
from mnist_nn.inference.preprocess.light import clean_paper, flatten_light
from mnist_nn.inference.preprocess.thresholds import (
    BLANK_CONTRAST,
    BLANK_NOISE,
    CRISP_NOISE,
    DENOISE_SIGMA,
    FULL_STROKE_MARGIN,
    FULL_STROKE_PERCENTILE,
    HIGH_NOISE,
    HIGH_THRESHOLD,
    LOW_NOISE,
    LOW_THRESHOLD,
    MAD_TO_SIGMA,
    MIN_INK_CONTRAST,
    PAPER_SAMPLE_STEP,
    SMALL_IMAGE,
    VISIBLE_NOISE,
    WORK_SIZE,
)

NO_INK = "no ink: nothing stands out from the paper (blank, uniform or noise only)"


@dataclass
class Ink:
    """An image as MNIST sees ink: float32 [H, W], background 0, full-strength strokes 255."""

    pixels: np.ndarray
    mask: np.ndarray  # bool [H, W]: pixels that are ink, noise removed
    inverted: bool  # True when the original was dark ink on light paper
    scale: float  # working size / original size (coordinates of boxes are in the original)
    labels: np.ndarray  # int32 [H, W]: the connected component of each ink pixel, 0 elsewhere
    components: list[Component]  # the components of the mask


@dataclass
class _Found:
    """The ink a threshold found: its signal over the paper, mask, blobs and which blobs are ink."""

    signal: np.ndarray  # float [H, W]: how far each pixel stands out from the paper, towards the ink
    mask: np.ndarray  # bool [H, W]: ink
    labels: np.ndarray  # int32 [H, W]: the blobs over the low threshold
    components: list[Component]  # those blobs
    strong: np.ndarray  # bool per label: the blob is ink (label 0, the background, never is)
    high: float  # the high threshold


def extract_ink(gray: np.ndarray) -> Ink:
    """Find the ink in a grayscale image: light denoising, polarity, uneven light flattened, threshold.

    Raises NoDigitFound (with its reason and the mask seen) when nothing stands out from the paper.
    """
    raw, scale = _working_copy(gray)
    # A drawing on flat paper (a pad's, an app's export) has neither noise to blur nor light to flatten.
    clean = min(raw.shape) >= SMALL_IMAGE and clean_paper(raw)
    work = raw if clean else _denoised(raw)
    inverted, paper = flatten_light(work, clean)
    # Light scales what a light page reflects: ink in a shadow is as much darker than its paper as in
    # full light, so dark ink's strength is its paper's brightness lost, relative to that paper (the
    # paper at least a grey level bright, so black paper divides by no zero).
    # Light ink on a dark page is not scaled, and skips the median.
    gain = _gain(paper) if inverted else 1.0
    signal = _against_paper(work, paper, gain, inverted)
    # The paper's level and noise from the pixels below it only: ink lies on the other side.
    level = median(border(signal))
    noise = _sigma(level - signal[signal < level])
    signal = signal - level
    contrast = float(signal.max())
    found = _hysteresis(signal, noise, contrast)
    if raw is not work:
        # The blur spreads every edge by a pixel at a quarter strength: enough to join digits written 2 px
        # apart (3 more of 500 numbers misread). So the ink's outline is where the unblurred image is ink
        # too, and its grey levels are the unblurred ones, unless that image is so noisy that its noise
        # would punch holes in the strokes.
        crisp = _against_paper(raw, paper, gain, inverted) - level
        if _sigma(-crisp[crisp < 0]) < CRISP_NOISE * contrast:
            found = _crisp_outline(found, crisp, contrast)
    _check_contrast(found.mask, contrast, noise)
    return _ink(found, inverted, scale)


def _working_copy(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """(float32 image at most WORK_SIZE pixels across, area-averaged; its size / the original's)."""
    height, width = gray.shape
    scale = min(1.0, WORK_SIZE / max(height, width))
    work = gray.astype(np.float32, copy=False)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        work = np.asarray(Image.fromarray(work).resize(size, Image.Resampling.BOX), dtype=np.float32)
    return work, scale


def _denoised(work: np.ndarray) -> np.ndarray:
    """A light blur, except on small images (returned as they are): every pixel of their strokes counts.

    It tames sensor noise and JPEG speckle (to about a third) and keeps a 1 px pen line at half
    strength, where a 3x3 median erased it (fine-pen photos: 92% read before, 99% after).
    """
    if min(work.shape) < SMALL_IMAGE:
        return work
    return gaussian(work, sigma=DENOISE_SIGMA, preserve_range=True).astype(np.float32)


def _gain(paper: np.ndarray) -> np.ndarray:
    """Per pixel, how much light its paper lost against the page's typical paper (sampled every few pixels)."""
    return float(np.median(paper[::PAPER_SAMPLE_STEP, ::PAPER_SAMPLE_STEP])) / np.maximum(paper, 1.0)


def _against_paper(image: np.ndarray, paper: np.ndarray, gain: np.ndarray | float, inverted: bool) -> np.ndarray:
    """How far each pixel stands out from the paper towards the ink (dark ink scaled by the light's ``gain``)."""
    return (paper - image) * gain if inverted else image - paper


def _sigma(below: np.ndarray) -> float:
    """The noise's standard deviation from the deviations on the paper's side (MAD, scaled); 0 when none."""
    return MAD_TO_SIGMA * median(below) if below.size else 0.0


def _hysteresis(signal: np.ndarray, noise: float, contrast: float) -> _Found:
    """Ink is what rises above the low threshold and is connected to something above the high one.

    So faint stretches of a stroke keep it whole while faint noise blobs go.
    """
    low = max(LOW_NOISE * noise, LOW_THRESHOLD * contrast)
    high = max(HIGH_NOISE * noise, HIGH_THRESHOLD * contrast)
    labels, components = connected_components(signal > low)
    strong = np.zeros(len(components) + 1, dtype=bool)
    strong[labels[signal > high]] = True
    strong[0] = False
    mask = np.take(strong, labels)
    return _Found(signal, mask, labels, components, strong, high)


def _crisp_outline(found: _Found, crisp: np.ndarray, contrast: float) -> _Found:
    """The blurred image's ink, cut to where the unblurred ``crisp`` is ink too, with its grey levels."""
    mask = found.mask
    mask &= crisp > LOW_THRESHOLD * contrast
    labels, components = connected_components(mask)
    strong = np.ones(len(components) + 1, dtype=bool)
    strong[0] = False
    return _Found(crisp, mask, labels, components, strong, found.high)


def _check_contrast(mask: np.ndarray, contrast: float, noise: float) -> None:
    """NoDigitFound when the ink does not stand out from the paper enough (or there is none)."""
    needed = max(MIN_INK_CONTRAST, VISIBLE_NOISE * noise)
    if contrast < needed:
        seen = as_seen(mask)
        if contrast < BLANK_NOISE * noise or contrast < BLANK_CONTRAST:
            raise NoDigitFound(NO_INK, seen)
        raise NoDigitFound(
            f"too faint: the ink differs from the paper by {contrast:.0f} grey levels, {needed:.0f} needed", seen
        )
    if not mask.any():
        raise NoDigitFound(NO_INK, seen=as_seen(mask))


def _ink(found: _Found, inverted: bool, scale: float) -> Ink:
    """The ink found, scaled so that a full stroke is 255 and the paper 0."""
    mask = found.mask
    # The mask's components are the kept ones: labelling the mask again would find the same.
    components = [c for c in found.components if found.strong[c.label]]
    labels = np.where(mask, found.labels, 0)
    # Strength of a full stroke: a high percentile of the ink, so a few dark specks do not set it.
    full = max(percentile(found.signal[mask], FULL_STROKE_PERCENTILE), found.high + FULL_STROKE_MARGIN)
    pixels = np.clip(found.signal / full, 0.0, 1.0) * 255.0
    pixels[~mask] = 0.0
    return Ink(
        pixels=pixels.astype(np.float32),
        mask=mask,
        inverted=inverted,
        scale=scale,
        labels=labels,
        components=components,
    )
