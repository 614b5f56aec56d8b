"""A real image (photo, scan, drawing) -> MNIST-style 28x28 digits, by MNIST's own procedure.

MNIST's digits were size-normalized to fit a 20x20 box keeping their aspect ratio (anti-aliased,
hence grey levels), then placed in a 28x28 field with their centre of mass at the centre. A
model trained on MNIST expects exactly that, so a real image goes through the same steps:

    load (Pillow; refuse decompression bombs before decoding) -> alpha on white -> grayscale
    -> polarity (dark ink on light paper is inverted to MNIST's light on dark)
    -> light denoising, background removal and contrast stretch -> ink mask
    -> crop to the ink -> longer side to 20 px, anti-aliased -> 28x28, centred by centre of mass.

``segment_digits`` splits a handwritten number into one such image per digit, left to right.
Everything here works on numpy arrays; no model is involved.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from scipy import ndimage

from .errors import UserError

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
# 50 megapixels: a 12 MP phone photo passes; a few KB of compressed zeros claiming
# 100,000 x 100,000 pixels (a decompression bomb) is refused from its header alone.
DEFAULT_MAX_PIXELS = 50_000_000
# Analysis happens at most at this size: a digit needs no more, and it bounds the work per image.
WORK_SIZE = 1024
MNIST_BOX = 20  # MNIST's size-normalization box
MNIST_SIZE = 28
MNIST_CENTRE = 14.0  # where MNIST's centres of mass lie (mean over the test set: 13.99, 14.01)
# Ink must stand out from the background by this much (of 255) to count as a digit at all.
MIN_CONTRAST = 40.0
# Ink thresholds as fractions of the ink's contrast (see extract_ink).
LOW_THRESHOLD = 0.05
HIGH_THRESHOLD = 0.2
FULL_STROKE_PERCENTILE = 90
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # a pixel touches all 8 neighbours, diagonals too


class ImageError(UserError):
    """One input image cannot be used; the message names the file and why."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed: refused from its header, before a pixel is decoded.

    A type of its own so that callers tell it apart without reading the message: a server answers
    it 413, like an oversized body, while every other ImageError is the image's content (422).
    """


class NoDigitFound(Exception):
    """The image is readable but holds no ink: blank, uniform or noise only."""


# --------------------------------------------------------------------------- loading


def load_grayscale(
    source: str | os.PathLike | bytes | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read an image into float32 grayscale [H, W], 0-255; alpha is composited onto white.

    Every failure is an ImageError naming the file: unreadable path, zero bytes, not an image
    (or not PNG/JPEG/BMP/GIF/WebP/TIFF), truncated or corrupt data, or more than ``max_pixels``
    pixels (an ImageTooLarge, found from the header before any pixel is decoded).
    """
    if isinstance(source, Image.Image):
        return _to_grayscale(source)
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{name}: is a folder, not an image") from None
        except OSError as exc:
            raise ImageError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes), not an image")
    try:
        image = _open_header(data)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (or not one of {', '.join(FORMATS)})") from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: image too large: refused before decoding (limit {max_pixels:,} pixels)") from None
    except Exception as exc:  # a damaged header makes the format plug-ins fail in many ways
        reason = _reason(exc)
        kind = "truncated image" if "truncat" in reason.lower() else "not a readable image"
        raise ImageError(f"{name}: {kind} ({reason})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{name}: image too large: {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; refused before decoding"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: image too large: refused before decoding (limit {max_pixels:,} pixels)") from None
    except Exception as exc:  # truncated or corrupt pixel data
        reason = _reason(exc)
        kind = "truncated" if "truncat" in reason.lower() or isinstance(exc, EOFError) else "corrupt"
        raise ImageError(f"{name}: {kind} {image.format} image ({reason})") from None
    return _to_grayscale(image)


def _open_header(data: bytes) -> Image.Image:
    """Open an encoded image, reading its header only (pixels are decoded on ``load()``)."""
    with warnings.catch_warnings():
        # Our own pixel limits replace Pillow's global one (a warning, then an error at 2x).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=FORMATS)


def image_pixels(data: bytes) -> int | None:
    """Width x height from an encoded image's header, without decoding it; None when unreadable."""
    try:
        with _open_header(data) as image:
            width, height = image.size
    except Exception:  # whatever it is, load_grayscale will say so
        return None
    return width * height


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _to_grayscale(image: Image.Image) -> np.ndarray:
    # Phones store the camera's orientation in EXIF instead of rotating the pixels.
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float grayscale: Pillow's convert("L") clips instead of scaling.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(255.0, float(array.max()))
        return (array * (255.0 / top)).clip(0, 255).astype(np.float32)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        # Transparent pixels are paper: composite onto white, as a viewer shows them.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32)


# --------------------------------------------------------------------------- ink


@dataclass
class Ink:
    """An image as MNIST sees ink: float32 [H, W], background 0, full-strength strokes 255."""

    pixels: np.ndarray
    mask: np.ndarray  # bool [H, W]: pixels that are ink, noise removed
    inverted: bool  # True when the original was dark ink on light paper
    scale: float  # working size / original size (coordinates of boxes are in the original)
    labels: np.ndarray  # int32 [H, W]: the connected component of each ink pixel, 0 elsewhere
    components: list[Component]  # the components of the mask


def extract_ink(gray: np.ndarray) -> Ink:
    """Find the ink in a grayscale image: polarity, light denoising, background removal, threshold.

    Raises NoDigitFound when nothing stands out from the background.
    """
    height, width = gray.shape
    scale = min(1.0, WORK_SIZE / max(height, width))
    work = gray.astype(np.float32, copy=False)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        work = np.asarray(Image.fromarray(work).resize(size, Image.Resampling.BOX), dtype=np.float32)
    # A 3x3 median removes sensor noise and JPEG speckle; on small images it would eat MNIST-thin strokes.
    if min(work.shape) >= 48:
        work = median3x3(work)
    ring = _border(work)
    background = _median(ring)
    low, high = float(work.min()), float(work.max())
    # Polarity: the ink is whichever extreme lies further from the paper.
    inverted = (background - low) > (high - background)
    signal = (background - work) if inverted else (work - background)
    contrast = float(signal.max())
    noise = 1.4826 * _median(np.abs(ring - background))  # robust sigma of the paper
    if contrast < max(MIN_CONTRAST, 8.0 * noise):
        raise NoDigitFound
    # Hysteresis: ink is what rises above the low threshold and is connected to something above the
    # high one, so faint stretches of a stroke keep it whole while faint noise blobs go.
    low = max(3.0 * noise, LOW_THRESHOLD * contrast)
    high = max(5.0 * noise, HIGH_THRESHOLD * contrast)
    labels, components = connected_components(signal > low)
    strong = np.zeros(len(components) + 1, dtype=bool)
    strong[labels[signal > high]] = True
    strong[0] = False
    mask = np.take(strong, labels)
    # The mask's components are the kept ones: labelling the mask again would find the same.
    components = [c for c in components if strong[c.label]]
    labels = np.where(mask, labels, 0)
    # Strength of a full stroke: a high percentile of the ink, so a few dark specks do not set it.
    full = max(float(np.percentile(signal[mask], FULL_STROKE_PERCENTILE)), high + 1.0)
    pixels = np.clip(signal / full, 0.0, 1.0) * 255.0
    pixels[~mask] = 0.0
    return Ink(
        pixels=pixels.astype(np.float32),
        mask=mask,
        inverted=inverted,
        scale=scale,
        labels=labels,
        components=components,
    )


def median3x3(image: np.ndarray) -> np.ndarray:
    """3x3 median filter, edges replicated: the same values as Pillow's MedianFilter(3), 3x faster.

    Each column of three is sorted once (low, mid, high) and shared by the three windows that
    hold it; a window's median is then the median of (the largest low, the median mid, the
    smallest high), an exact identity for nine values. Whole-array min/max, no per-pixel sort.
    """
    padded = np.pad(image.astype(np.float32, copy=False), 1, mode="edge")
    top, centre, bottom = padded[:-2], padded[1:-1], padded[2:]
    low, high = np.minimum(top, centre), np.maximum(top, centre)
    mid, high = np.minimum(high, bottom), np.maximum(high, bottom)
    low, mid = np.minimum(low, mid), np.maximum(low, mid)
    lows = np.maximum(np.maximum(low[:, :-2], low[:, 1:-1]), low[:, 2:])
    highs = np.minimum(np.minimum(high[:, :-2], high[:, 1:-1]), high[:, 2:])
    return _median3(lows, _median3(mid[:, :-2], mid[:, 1:-1], mid[:, 2:]), highs)


def _median3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


def _median(values: np.ndarray) -> float:
    """``float(np.median(values))`` of a 1-D array, to the bit, without np.median's overhead (~30 us a call).

    np.median partitions around the middle and averages the middle one or two values in the
    array's dtype; (a + b) / 2 does the same (halving is exact in binary floating point).
    """
    middle = len(values) // 2
    if len(values) % 2:
        return float(np.partition(values, middle)[middle])
    part = np.partition(values, (middle - 1, middle))
    return float((part[middle - 1] + part[middle]) / 2)


def _border(image: np.ndarray) -> np.ndarray:
    width = max(1, min(image.shape) // 20)
    return np.concatenate(
        [
            image[:width].ravel(),
            image[-width:].ravel(),
            image[width:-width, :width].ravel(),
            image[width:-width, -width:].ravel(),
        ]
    )


# --------------------------------------------------------------------------- connected components


@dataclass
class Component:
    """A connected blob of ink: its pixel count and bounding box (x0, y0, x1, y1), ends exclusive."""

    label: int
    area: int
    box: tuple[int, int, int, int]


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, list[Component]]:
    """8-connected components of a boolean mask: (label image, 0 = background; components).

    Components are numbered 1, 2, ... in the raster order of their first pixel.
    """
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    labels = labels.astype(np.int32, copy=False)
    if not count:
        return labels, []
    area = np.bincount(labels[mask.astype(bool, copy=False)], minlength=count + 1)  # over the ink only: 3x faster
    components = [
        Component(label, int(area[label]), (cols.start, rows.start, cols.stop, rows.stop))
        for label, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1)
    ]
    return labels, components


def _select(labels: np.ndarray, chosen: list[int]) -> np.ndarray:
    """Where ``labels`` is one of ``chosen`` (labels > 0): a lookup table, several times faster than np.isin."""
    table = np.zeros(int(labels.max(initial=0)) + 1, dtype=bool)
    table[[label for label in chosen if label < len(table)]] = True
    return np.take(table, labels)


def _drop_specks(components: list[Component], fraction: float = 0.05, minimum: int = 4) -> list[Component]:
    """Keep blobs that are not noise: at least ``fraction`` of the largest blob's area."""
    if not components:
        return []
    largest = max(c.area for c in components)
    return [c for c in components if c.area >= max(minimum, fraction * largest)]


# --------------------------------------------------------------------------- MNIST normalization


def to_mnist(pixels: np.ndarray) -> np.ndarray:
    """Ink (float [H, W], 0 background) cropped to its box -> float32 [28, 28], MNIST's way."""
    bounds = _bounds(pixels > 0)
    if bounds is None:
        raise NoDigitFound
    y0, x0, y1, x1 = bounds
    crop = _thicken_thin_strokes(pixels[y0:y1, x0:x1])
    height, width = crop.shape
    # MNIST fitted the box of the *binary* NIST digit to 20 px; anti-aliasing then added grey edges
    # around it. A binary edge lies where the grey level crosses half strength, so the scale comes
    # from the half-strength box, while the faint edges outside it are kept (measured: +1.5 points
    # for the tutorial MLP on the synthetic photos, against fitting the faint box).
    y0, x0, y1, x1 = _bounds(crop >= 0.5 * float(crop.max()))
    core = max(y1 - y0, x1 - x0)
    factor = MNIST_BOX / core
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    # Lanczos widens its kernel by the scale factor when shrinking: anti-aliased, like MNIST's grey levels.
    box = np.asarray(
        Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS), dtype=np.float32
    ).clip(0, 255)
    out = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    total = float(box.sum())
    if total <= 0:
        raise NoDigitFound
    rows, cols = np.indices(box.shape)
    com_y, com_x = float((rows * box).sum() / total), float((cols * box).sum() / total)
    # MNIST shifted by whole pixels (its centres of mass spread +-0.5 px around 14).
    top, left = round(MNIST_CENTRE - com_y), round(MNIST_CENTRE - com_x)
    _paste(out, box, top, left)
    return out


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1), ends exclusive, of the True pixels; None when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _paste(out: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Copy ``patch`` into ``out`` at (top, left), clipping what falls outside."""
    h, w = patch.shape
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(out.shape[0], top + h), min(out.shape[1], left + w)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]


def _thicken_thin_strokes(crop: np.ndarray) -> np.ndarray:
    """A fine pen on a large drawing would shrink to faint hairlines at 20 px; widen such strokes first.

    Stroke width is estimated as ink area / half the ink's outline length. MNIST's strokes are
    about 2-3 px wide in its 20 px box; below ~1.5 px the digit is dilated to bring it back.
    """
    mask = crop > 0
    area = int(mask.sum())
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    outline = max(1, area - int(inner.sum()))
    stroke = 2.0 * area / outline
    factor = MNIST_BOX / max(crop.shape)
    if stroke * factor >= 1.5:
        return crop
    grow = int(np.ceil((2.0 / factor - stroke) / 2.0))
    if grow < 1:
        return crop
    size = 2 * min(grow, 10) + 1
    padded = np.pad(crop, size // 2)
    return np.asarray(Image.fromarray(padded.astype(np.float32)).filter(ImageFilter.MaxFilter(size)))


# --------------------------------------------------------------------------- whole images


@dataclass
class Segment:
    """One digit found in an image: MNIST-style pixels and where it was, in original coordinates."""

    pixels: np.ndarray  # float32 [28, 28], 0-255, light on dark
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in the original image


def preprocess_image(gray: np.ndarray) -> Segment:
    """One digit: the whole image's ink (specks dropped) as a 28x28 MNIST-style image."""
    ink = extract_ink(gray)
    labels, kept = ink.labels, _drop_specks(ink.components)
    if not kept:
        raise NoDigitFound
    keep = _select(labels, [c.label for c in kept])
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
    labels, components = ink.labels, _drop_specks(ink.components, fraction=0.02)
    if not components:
        raise NoDigitFound
    groups = _group_components(components)
    line_height = max(box[3] - box[1] for box, _ in groups)
    pieces: list[tuple[tuple[int, int, int, int], np.ndarray]] = []
    for box, members in groups:
        x0, y0, x1, y1 = box
        crop = np.where(_select(labels[y0:y1, x0:x1], members), ink.pixels[y0:y1, x0:x1], 0.0)
        pieces.extend(_split_wide(crop, box, line_height))
    segments = []
    for (x0, y0, x1, y1), crop in sorted(pieces, key=lambda piece: (piece[0][0] + piece[0][2]) / 2):
        try:
            pixels = to_mnist(crop)
        except NoDigitFound:
            continue
        segments.append(Segment(pixels=pixels, box=_to_original((x0, y0, x1, y1), ink.scale, gray.shape)))
    if not segments:
        raise NoDigitFound
    return segments


def _group_components(components: list[Component]) -> list[tuple[tuple[int, int, int, int], list[int]]]:
    groups = [(c.box, [c.label], c.area) for c in sorted(components, key=lambda c: c.box[0])]
    line_height = max(c.box[3] - c.box[1] for c in components)
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                (a, la, na), (b, lb, nb) = groups[i], groups[j]
                overlap = min(a[2], b[2]) - max(a[0], b[0])
                narrower = min(a[2] - a[0], b[2] - b[0])
                # Stacked pieces (a 5's bar above its body) overlap little, but are short.
                stacked = overlap > 0 and min(a[3] - a[1], b[3] - b[1]) < 0.6 * line_height
                # Pieces that (nearly) touch and together fit one digit's box: a stroke broken in two.
                touching = overlap >= -max(1.0, 0.03 * line_height) and max(a[2], b[2]) - min(a[0], b[0]) <= line_height
                if overlap >= 0.5 * narrower or stacked or touching:
                    groups[i] = (_union([a, b]), la + lb, na + nb)
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    if len(groups) > 1:
        # Tiny leftovers (a dot, a stroke's broken tip) join the nearest group when close, else go.
        median_area = float(np.median([g[2] for g in groups]))
        line_height = max(g[0][3] - g[0][1] for g in groups)
        big = [g for g in groups if g[2] >= 0.15 * median_area]
        for box, members, _area in (g for g in groups if g[2] < 0.15 * median_area):
            if not big:
                break
            distances = [max(0, max(box[0], b[0][0]) - min(box[2], b[0][2])) for b in big]
            nearest = int(np.argmin(distances))
            if distances[nearest] <= 0.3 * line_height:
                b_box, b_members, b_area = big[nearest]
                big[nearest] = (_union([b_box, box]), b_members + members, b_area)
        groups = big
    return [(box, members) for box, members, _area in groups]


def _split_wide(
    crop: np.ndarray, box: tuple[int, int, int, int], line_height: int
) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Split touching digits: a piece wider than ~1.25x the line height, at its thinnest column."""
    height, width = crop.shape
    if width <= 1.25 * max(height, 0.8 * line_height):
        return [(box, crop)]
    profile = crop.sum(axis=0)
    lo, hi = int(0.3 * width), int(0.7 * width)
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


def _union(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _to_original(box: tuple[int, int, int, int], scale: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (round(v / scale) for v in box)
    return (max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1))


def mnist_form(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """An image already in MNIST form (28x28, light digit on dark): used as it is."""
    if gray.shape != (MNIST_SIZE, MNIST_SIZE):
        height, width = gray.shape
        raise ImageError(
            f"{name}: image is {width}x{height}; without preprocessing it must be 28x28 in MNIST form "
            "(drop --no-preprocess to have it prepared)"
        )
    if float(gray.max()) - float(gray.min()) < MIN_CONTRAST:
        raise NoDigitFound
    return gray.astype(np.float32)
