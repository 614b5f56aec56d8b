"""Whole images -> digits: one digit (``preprocess_image``), or a handwritten number split into its digits.

A number's ink blobs are grouped into digits: pieces that overlap horizontally belong to one digit
(a broken stroke, a 5's detached bar); a tiny piece joins its nearest neighbour if close, else it
is dropped as noise; a group much wider than tall (digits written touching) is split at the column
with the least ink. Each digit then goes through MNIST's normalisation (normalize.to_mnist).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mnist_nn.inference.preprocess.arrays import as_seen
from mnist_nn.inference.preprocess.components import Component, drop_specks, select
from mnist_nn.inference.preprocess.errors import NoDigitFound
from mnist_nn.inference.preprocess.ink import Ink, extract_ink
from mnist_nn.inference.preprocess.normalize import to_mnist
from mnist_nn.inference.preprocess.thresholds import (
    CUT_FROM,
    CUT_TO,
    LEFTOVER_AREA,
    LEFTOVER_DISTANCE,
    MAX_BLOBS,
    MAX_BLOBS_MULTI,
    MIN_GAP,
    OVERLAP_SHARE,
    SPECK_SHARE_MULTI,
    STACKED_HEIGHT,
    TOUCHING_GAP,
    WIDE_MIN_HEIGHT,
    WIDE_RATIO,
)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1, ends exclusive
Group = tuple[Box, list[int], int]  # a digit's box, the labels of its blobs, its area
Piece = tuple[Box, np.ndarray]  # a digit's box and its ink, cropped to that box


@dataclass
class Segment:
    """One digit found in an image: MNIST-style pixels and where it was, in original coordinates."""

    pixels: np.ndarray  # float32 [28, 28], 0-255, light on dark
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in the original image


def preprocess_image(gray: np.ndarray) -> Segment:
    """One digit: the whole image's ink (specks dropped) as a 28x28 MNIST-style image."""
    ink = extract_ink(gray)
    kept = drop_specks(ink.components)
    _check_blobs(ink, kept, MAX_BLOBS)
    keep = select(ink.labels, [c.label for c in kept])
    pixels = np.where(keep, ink.pixels, 0.0)
    box = _union([c.box for c in kept])
    return Segment(pixels=to_mnist(pixels), box=_to_original(box, ink.scale, gray.shape))


def segment_digits(gray: np.ndarray) -> list[Segment]:
    """A handwritten number -> one Segment per digit, left to right.

    Connected components are grouped into digits: pieces that overlap horizontally belong to
    one digit (a broken stroke, a 5's detached bar); a tiny piece joins its nearest neighbour
    if close, else it is dropped as noise; a group much wider than tall (digits written touching)
    is split at the column with the least ink.
    """
    ink = extract_ink(gray)
    # A number's digits differ in size more than one digit's pieces: a smaller share of the largest is a speck.
    components = drop_specks(ink.components, fraction=SPECK_SHARE_MULTI)
    _check_blobs(ink, components, MAX_BLOBS_MULTI)
    pieces = _pieces(ink, _group_components(components))
    segments = []
    for box, crop in sorted(pieces, key=lambda piece: (piece[0][0] + piece[0][2]) / 2):  # by their centres
        try:
            pixels = to_mnist(crop)
        except NoDigitFound:
            continue
        segments.append(Segment(pixels=pixels, box=_to_original(box, ink.scale, gray.shape)))
    if not segments:
        raise NoDigitFound("no ink: no piece of ink is large enough for a digit", as_seen(ink.mask))
    return segments


def _check_blobs(ink: Ink, kept: list[Component], limit: int) -> None:
    """NoDigitFound when no blob is left, or more than ``limit`` (a texture, a page of text, not digits)."""
    if not kept:
        raise NoDigitFound("no ink: only specks of noise", as_seen(ink.mask))
    if len(kept) > limit:
        what = "a number" if limit > MAX_BLOBS else "one digit"
        raise NoDigitFound(f"too many blobs: {len(kept)} separate marks of similar size, not {what}", as_seen(ink.mask))


def _pieces(ink: Ink, groups: list[tuple[Box, list[int]]]) -> list[Piece]:
    """Each group's ink cut to its box, digits written touching split apart."""
    line_height = max(box[3] - box[1] for box, _ in groups)
    pieces: list[Piece] = []
    for box, members in groups:
        x0, y0, x1, y1 = box
        crop = np.where(select(ink.labels[y0:y1, x0:x1], members), ink.pixels[y0:y1, x0:x1], 0.0)
        pieces.extend(_split_wide(crop, box, line_height))
    return pieces


def _group_components(components: list[Component]) -> list[tuple[Box, list[int]]]:
    """The blobs grouped into digits, left to right: (box, labels) of each."""
    groups = [(c.box, [c.label], c.area) for c in sorted(components, key=lambda c: c.box[0])]
    line_height = max(c.box[3] - c.box[1] for c in components)
    while _merge_first(groups, line_height):
        pass
    if len(groups) > 1:
        groups = _absorb_leftovers(groups)
    return [(box, members) for box, members, _area in groups]


def _merge_first(groups: list[Group], line_height: int) -> bool:
    """Merge the first two groups (in order) that are one digit, in place; whether there were any."""
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            if _one_digit(groups[i][0], groups[j][0], line_height):
                a, a_members, a_area = groups[i]
                b, b_members, b_area = groups[j]
                groups[i] = (_union([a, b]), a_members + b_members, a_area + b_area)
                del groups[j]
                return True
    return False


def _one_digit(a: Box, b: Box, line_height: int) -> bool:
    """Whether two pieces are one digit: overlapping by half, stacked, or (nearly) touching within a digit's width."""
    a_x0, a_y0, a_x1, a_y1 = a
    b_x0, b_y0, b_x1, b_y1 = b
    overlap = min(a_x1, b_x1) - max(a_x0, b_x0)
    narrower = min(a_x1 - a_x0, b_x1 - b_x0)
    # Stacked pieces (a 5's bar above its body) overlap little, but are short.
    stacked = overlap > 0 and min(a_y1 - a_y0, b_y1 - b_y0) < STACKED_HEIGHT * line_height
    # Pieces that (nearly) touch and together fit one digit's box: a stroke broken in two.
    near = overlap >= -max(MIN_GAP, TOUCHING_GAP * line_height)
    touching = near and max(a_x1, b_x1) - min(a_x0, b_x0) <= line_height
    return overlap >= OVERLAP_SHARE * narrower or stacked or touching


def _absorb_leftovers(groups: list[Group]) -> list[Group]:
    """Tiny leftovers (a dot, a stroke's broken tip) join the nearest group when close, else go."""
    median_area = float(np.median([g[2] for g in groups]))
    line_height = max(g[0][3] - g[0][1] for g in groups)
    big = [g for g in groups if g[2] >= LEFTOVER_AREA * median_area]
    for box, members, _area in (g for g in groups if g[2] < LEFTOVER_AREA * median_area):
        if not big:
            break
        distances = [_gap(box, b[0]) for b in big]
        nearest = int(np.argmin(distances))
        if distances[nearest] <= LEFTOVER_DISTANCE * line_height:
            b_box, b_members, b_area = big[nearest]
            big[nearest] = (_union([b_box, box]), b_members + members, b_area)
    return big


def _gap(a: Box, b: Box) -> int:
    """The horizontal gap between two boxes; 0 when they overlap."""
    return max(0, max(a[0], b[0]) - min(a[2], b[2]))


def _split_wide(crop: np.ndarray, box: Box, line_height: int) -> list[Piece]:
    """Split touching digits: a piece wider than ~1.25x the line height, at its thinnest column."""
    height, width = crop.shape
    if width <= WIDE_RATIO * max(height, WIDE_MIN_HEIGHT * line_height):
        return [(box, crop)]
    profile = crop.sum(axis=0)
    lo = int(CUT_FROM * width)
    hi = int(CUT_TO * width)
    cut = lo + int(np.argmin(profile[lo:hi])) if hi > lo else width // 2
    x0, y0, _x1, _y1 = box
    parts = []
    for c0, c1 in ((0, cut), (cut, width)):
        part = crop[:, c0:c1]
        rows = np.nonzero(part.any(axis=1))[0]
        if len(rows) == 0:
            continue
        sub = part[rows[0] : rows[-1] + 1]
        parts.extend(_split_wide(sub, (x0 + c0, y0 + int(rows[0]), x0 + c1, y0 + int(rows[-1]) + 1), line_height))
    return parts


def _union(boxes: list[Box]) -> Box:
    """The box around all the ``boxes``."""
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _to_original(box: Box, scale: float, shape: tuple[int, ...]) -> Box:
    """A box in the working image's coordinates -> the original's, clipped to it."""
    x0, y0, x1, y1 = (round(v / scale) for v in box)
    return (max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1))
