"""A real image (photo, scan, drawing) -> MNIST-style 28x28 digits, by MNIST's own procedure.

MNIST's digits were size-normalized to fit a 20x20 box keeping their aspect ratio (anti-aliased,
hence grey levels), then placed in a 28x28 field with their centre of mass at the centre. A
model trained on MNIST expects exactly that, so a real image goes through the same steps:

    load (Pillow; refuse decompression bombs before decoding) -> alpha on white, or alpha as the
    ink when the image is ink on transparency -> grayscale
    -> light denoising -> polarity (dark ink on light paper is inverted to MNIST's light on dark)
    -> uneven light flattened (the paper's own brightness estimated by morphology, and removed)
    -> contrast stretch -> ink mask -> crop to the ink -> strokes thinned or thickened to MNIST's
    width -> longer side to 20 px, anti-aliased -> 28x28, centred by centre of mass.

When no digit is found, NoDigitFound says why (no ink, too faint, too many blobs) and carries
the ink mask that was seen.

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
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage
from skimage.filters import gaussian, sobel, threshold_otsu
from skimage.morphology import closing, disk, footprint_rectangle, skeletonize

from mnist_nn.core.errors import UserError

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
# 50 megapixels: a 12 MP phone photo passes; a few KB of compressed zeros claiming
# 100,000 x 100,000 pixels (a decompression bomb) is refused from its header alone.
DEFAULT_MAX_PIXELS = 50_000_000
# Analysis happens at most at this size: a digit needs no more, and it bounds the work per image.
WORK_SIZE = 1024
MNIST_BOX = 20  # MNIST's size-normalization box
MNIST_SIZE = 28
MNIST_CENTRE = 14.0  # where MNIST's centres of mass lie (mean over the test set: 13.99, 14.01)
# Ink must stand out from the background by this much (of 255) to count as a digit at all: in an image
# already in MNIST form, and in a photo once its light is flattened (pencil, a pen running dry).
MIN_CONTRAST = 40.0
MIN_INK_CONTRAST = 20.0
# Ink thresholds as fractions of the ink's contrast (see extract_ink).
LOW_THRESHOLD = 0.05
HIGH_THRESHOLD = 0.2
FULL_STROKE_PERCENTILE = 90
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # a pixel touches all 8 neighbours, diagonals too
DENOISE_SIGMA = 0.8  # pixels of the working image
SMALL_IMAGE = 48  # images narrower than this are neither blurred nor flattened: every pixel of a stroke counts
# The unblurred image must show ink too (over the low threshold) where its noise is under this fraction of the contrast.
CRISP_NOISE = 0.05
# Uneven light is estimated at most at this size: it varies slowly, and the morphology stays cheap.
FLAT_SIZE = 128
# Polarity is decided on an even smaller copy, against a median background (either polarity's ink is a minority).
POLARITY_SIZE = 32
# Stroke width in MNIST's 20 px box (stroke_width): over the test set 1.55 (1st percentile), 1.88 (5th),
# 2.81 (median), 4.56 (95th), 5.80 (99th), 7.79 (99.9th). Thinner strokes than STROKE_LOW are grown to
# STROKE_TARGET (a fine pen: 96.7% -> 99.0% of 300 synthetic fine-pen photos read by cnn-best). Strokes
# thicker than STROKE_HIGH (all but 1% of MNIST's) are thinned to its bold end, STROKE_THINNED: the
# tutorial MLP then reads 89.7% of 300 thick-marker photos instead of 88.0%, cnn-best 98.3% either way.
# Thinning further hurts: every digit over 4.2 thinned to 2.4 left cnn-best 96.7% (a loop the marker
# filled has no stroke left to thin).
STROKE_LOW, STROKE_TARGET = 1.5, 2.8
STROKE_HIGH, STROKE_THINNED = 6.0, 4.2
# Thinning peels every stroke alike, so it must keep this share of the strokes' skeleton, or peel less
# deep. A marker's 6 whose loop filled is a blob with a thinner stem: peeled for the blob's width, the
# stem went (27-54% of the skeleton kept), and the 20 px fit blew the blob up into a '0'. Of the 82
# thinned among 3,000 photo-like images, three in four keep 95-100% at full depth. With this check the
# bundled model misreads 42 of 8,000 photo-like images instead of 51, cnn-best 36 instead of 43.
SKELETON_KEPT = 0.9
STROKE_SIZE = 80  # strokes are measured and changed on a copy this wide (4x MNIST's box): cheap, and fine enough
# A single digit is a few pieces at most (a broken stroke, a 5's bar); more similar blobs are not one digit.
MAX_BLOBS = 12
MAX_BLOBS_MULTI = 80


class ImageError(UserError):
    """One input image cannot be used; the message names the file and why."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed: refused from its header, before a pixel is decoded.

    A type of its own so that callers tell it apart without reading the message: a server answers
    it 413, like an oversized body, while every other ImageError is the image's content (422).
    """


class NoDigitFound(Exception):
    """The image is readable but holds no digit: ``reason`` says why in one line, ``seen`` shows what was found.

    ``reason`` starts with "no ink" (blank, uniform, noise only), "too faint" (marks too close to
    the paper's tone) or "too many blobs" (many separate marks, not one digit). ``seen`` is uint8
    [H, W]: the ink mask (255 = ink) at the working resolution, or None.
    """

    def __init__(self, reason: str = "no ink: the image is blank", seen: np.ndarray | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seen = seen


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
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32)
        if _ink_on_transparency(np.asarray(rgba.convert("L"), dtype=np.float32), alpha):
            # The drawing is the alpha channel: on white, white or yellow ink would all but vanish.
            return 255.0 - alpha
        # Transparent pixels are paper: composite onto white, as a viewer shows them.
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32)


def _ink_on_transparency(gray: np.ndarray, alpha: np.ndarray) -> bool:
    """Whether an image is ink of one colour on transparent paper (a drawing app's export).

    The paper is transparent when most of the border is; the ink is one colour when the opaque
    pixels' tones lie close together. A sticker (a dark digit on an opaque white card with
    transparent margins) is neither: it is composited onto white as a viewer shows it.
    """
    opaque = alpha > 127
    if not opaque.any() or opaque.all():
        return False
    if float((_border(alpha) < 26).mean()) < 0.8:
        return False
    tones = gray[opaque]
    low, high = np.percentile(tones, [5, 95]) if tones.size > 1 else (tones[0], tones[0])
    return float(high - low) < 64.0


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
    """Find the ink in a grayscale image: light denoising, polarity, uneven light flattened, threshold.

    Raises NoDigitFound (with its reason and the mask seen) when nothing stands out from the paper.
    """
    height, width = gray.shape
    scale = min(1.0, WORK_SIZE / max(height, width))
    work = gray.astype(np.float32, copy=False)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        work = np.asarray(Image.fromarray(work).resize(size, Image.Resampling.BOX), dtype=np.float32)
    # A light blur tames sensor noise and JPEG speckle (to about a third) and keeps a 1 px pen line at
    # half strength, where a 3x3 median erased it (fine-pen photos: 92% read before, 99% after).
    # Small images are left sharp.
    raw = work
    if min(work.shape) >= SMALL_IMAGE:
        work = gaussian(work, sigma=DENOISE_SIGMA, preserve_range=True).astype(np.float32)
    inverted, paper = flatten_light(work)
    # Light scales what a light page reflects: ink in a shadow is as much darker than its paper as in
    # full light, so dark ink's strength is its paper's brightness lost, relative to that paper.
    gain = float(np.median(paper[::4, ::4])) / np.maximum(paper, 1.0)
    signal = (paper - work) * gain if inverted else work - paper
    # The paper's level and noise from the pixels below it only: ink lies on the other side.
    level = _median(_border(signal))
    below = level - signal[signal < level]
    noise = 1.4826 * _median(below) if below.size else 0.0
    signal = signal - level
    contrast = float(signal.max())
    # Hysteresis: ink is what rises above the low threshold and is connected to something above the
    # high one, so faint stretches of a stroke keep it whole while faint noise blobs go.
    low = max(3.0 * noise, LOW_THRESHOLD * contrast)
    high = max(5.0 * noise, HIGH_THRESHOLD * contrast)
    labels, components = connected_components(signal > low)
    strong = np.zeros(len(components) + 1, dtype=bool)
    strong[labels[signal > high]] = True
    strong[0] = False
    mask = np.take(strong, labels)
    if raw is not work:
        # The blur spreads every edge by a pixel at a quarter strength: enough to join digits written 2 px
        # apart (3 more of 500 numbers misread). So the ink's outline is where the unblurred image is ink
        # too, and its grey levels are the unblurred ones, unless that image is so noisy that its noise
        # would punch holes in the strokes.
        crisp = ((paper - raw) * gain if inverted else raw - paper) - level
        below = -crisp[crisp < 0]
        if (1.4826 * _median(below) if below.size else 0.0) < CRISP_NOISE * contrast:
            mask &= crisp > LOW_THRESHOLD * contrast
            signal = crisp
            labels, components = connected_components(mask)
            strong = np.ones(len(components) + 1, dtype=bool)
            strong[0] = False
    needed = max(MIN_INK_CONTRAST, 8.0 * noise)
    if contrast < needed:
        seen = _as_seen(mask)
        if contrast < 6.0 * noise or contrast < 4.0:
            raise NoDigitFound("no ink: nothing stands out from the paper (blank, uniform or noise only)", seen)
        raise NoDigitFound(
            f"too faint: the ink differs from the paper by {contrast:.0f} grey levels, {needed:.0f} needed", seen
        )
    if not mask.any():
        raise NoDigitFound(
            "no ink: nothing stands out from the paper (blank, uniform or noise only)", seen=_as_seen(mask)
        )
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


def flatten_light(work: np.ndarray) -> tuple[bool, np.ndarray]:
    """The ink's polarity (True: dark ink on light paper) and the paper's brightness at every pixel.

    Uneven light (a page brighter on one side, a soft shadow) varies slowly, while ink comes in
    strokes, narrow however large the digit. So the paper is what a morphological closing (dark
    ink; an opening for light ink) leaves, with a footprint wider than the strokes: every stroke
    is filled in from the paper around it, while a gradient or a shadow wider than the footprint
    stays. The footprint starts at 1.5 strokes, grows while it leaves sharp-edged ink unfilled,
    and a footprint half as wide is taken away from the ink, where it follows a shadow closer.
    It is all done on a copy of at most FLAT_SIZE pixels, smoothed and scaled back up.
    """
    height, width = work.shape
    factor = min(1.0, FLAT_SIZE / max(height, width))
    small = _shrink(work, factor)
    inverted, stroke = _polarity(small)
    if min(height, width) < SMALL_IMAGE:
        # A digit a few dozen pixels across fills its image: the morphology would find no paper around
        # the strokes at the edges, and the light has no room to vary (scikit-learn's 8x8 digits enlarged
        # 4x: 90.5% read flattened, 91.9% not). The paper is the border's median, as it was everywhere.
        return inverted, np.full_like(work, _median(_border(work)))
    sign = 1.0 if inverted else -1.0  # work on dark ink either way: light ink is dark in -small

    def fill(size: int) -> np.ndarray:
        return sign * closing(
            sign * small, footprint_rectangle((size, size), decomposition="separable"), mode="nearest"
        )

    # The footprint must be wider than the strokes, their crossings too, to fill them; any wider and it
    # could not follow a shadow (2.5 strokes instead of 1.5: 99.0% of shadowed photos read, not 100%).
    widest = max(3, min(small.shape) // 2)
    side = int(np.clip(round(1.5 * stroke + 3), 3, widest))
    # A marker's strokes in a tight crop can fool the stroke estimate: the footprint grows until it fills
    # nearly all the ink the widest footprint fills (else the strokes would be read hollow).
    filled = fill(widest)
    depth = sign * (filled - small)
    ink = _sharp(small, depth)
    paper = fill(side)
    while side < widest and (ink & (sign * (filled - paper) >= 0.5 * depth)).sum() > 0.02 * ink.sum():
        side = min(widest, round(1.5 * side))
        paper = fill(side)
    # A closing overshoots in a shadow's dip, the more the wider its footprint (a shadow of 70 grey levels
    # next to the digit left 20 as "ink"). A footprint half as wide follows the light closely; it is
    # taken wherever it still filled the strokes, that is away from where it differs by ink's strength.
    half = max(3, side // 2)
    tight = fill(half)
    strength = float(np.percentile(sign * (paper - small), 99.5))
    unfilled = ndimage.binary_dilation(sign * (paper - tight) >= 0.25 * strength, structure=np.ones((half, half)))
    paper = np.where(unfilled, paper, tight)
    # The footprint's square steps, smoothed away: the light has no edges.
    paper = gaussian(paper, sigma=side / 4, mode="nearest", preserve_range=True).astype(np.float32)
    if factor < 1.0:
        paper = _resized(paper, width, height)
    return inverted, paper


def _sharp(small: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Where ``depth`` (darker than the paper) is ink: at least half the deepest, in blobs with sharp edges.

    A pen's stroke ends within a pixel or two; a shadow fades over a tenth of the page. A blob counts
    as ink when the brightness changes across its outline by at least an eighth of its depth per pixel.
    """
    deep = depth >= 0.5 * float(np.percentile(depth, 99.5))
    labels, count = ndimage.label(deep, structure=EIGHT_CONNECTED)
    if count == 0:
        return deep
    slope = sobel(small)
    outline = deep & ~ndimage.binary_erosion(deep, structure=EIGHT_CONNECTED)
    index = np.arange(1, count + 1)
    edge = ndimage.median(slope, labels * outline, index)
    level = ndimage.median(depth, labels, index)
    sharp = np.zeros(count + 1, dtype=bool)
    sharp[1:] = np.asarray(edge) >= np.asarray(level) / 8
    return sharp[labels]


def _shrink(image: np.ndarray, factor: float) -> np.ndarray:
    if factor >= 1.0:
        return image
    height, width = image.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX), dtype=np.float32)


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _polarity(small: np.ndarray) -> tuple[bool, float]:
    """(dark ink?, the ink's stroke width in ``small``'s pixels), against a rough median background.

    The ink is the extreme further from the paper, the border's median, when it is clearly further
    (twice). Else uneven light blurs that picture: a median over a window two thirds of the image
    wide is the paper for either polarity (ink covers less than half of such a window) and follows
    the light; what stands out from it beyond the noise, summed, is far larger on the ink's side.
    On that side, Otsu's threshold (and at least half the ink's strength) gives a rough ink mask
    whose area / skeleton length is its stroke width.
    """
    tiny = _shrink(small, min(1.0, POLARITY_SIZE / max(small.shape)))
    window = max(3, min(tiny.shape) // 3 * 2 + 1)
    rough = ndimage.median_filter(tiny, size=window, mode="nearest")
    background = _median(_border(small))
    darker, lighter = background - float(small.min()), float(small.max()) - background
    if max(darker, lighter) >= 2 * min(darker, lighter):
        inverted = darker > lighter
    else:
        residual = tiny - rough
        spread = 1.4826 * _median(np.abs(residual).ravel()) + 1.0
        dark = float(np.clip(-residual - 3 * spread, 0, None).sum())
        light = float(np.clip(residual - 3 * spread, 0, None).sum())
        inverted = dark > light if dark != light else darker >= lighter
    if rough.shape != small.shape:
        rough = _resized(rough, small.shape[1], small.shape[0])
    ink = rough - small if inverted else small - rough
    if float(np.ptp(ink)) < 1.0:
        return inverted, 1.0
    # At least half the ink's strength: a shadow the rough background missed is not taken for a stroke.
    mask = ink > max(threshold_otsu(ink), 0.5 * float(np.percentile(ink, 99.5)))
    return inverted, _width(mask)


def _as_seen(mask: np.ndarray) -> np.ndarray:
    """An ink mask as a picture: 255 where ink was found."""
    return mask.astype(np.uint8) * 255


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
        raise NoDigitFound("no ink: nothing left to fit in the 20x20 box")
    y0, x0, y1, x1 = bounds
    crop = normalize_strokes(pixels[y0:y1, x0:x1])
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
        raise NoDigitFound("no ink: nothing left to fit in the 20x20 box")
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


def stroke_width(crop: np.ndarray) -> float:
    """The strokes' width in MNIST's 20 px box: the half-strength ink's area / skeleton length, scaled to the box.

    Measured on a copy whose longer side is at most STROKE_SIZE pixels, where the skeleton is cheap;
    MNIST's own digits, enlarged to 112 px, give 1.88-4.56 (5th-95th percentile), median 2.81.
    """
    small = _stroke_copy(crop)
    mask = small >= 0.5 * float(small.max())
    return _width(mask) * MNIST_BOX / _core(mask)


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
    mask = small >= 0.5 * float(small.max())
    core = _core(mask)
    skeleton = skeletonize(mask)  # measures the width here, and is what thinning must keep below
    width = _width(mask, skeleton) * MNIST_BOX / core
    # A digit smaller than MNIST's box has too few pixels to measure a stroke by (scikit-learn's 8x8
    # digits: 97.1% read with it, 97.3% without).
    if STROKE_LOW <= width <= STROKE_HIGH or core < MNIST_BOX:
        return crop
    per_box_pixel = core / MNIST_BOX  # the copy's pixels per pixel of the 20 px box
    if width > STROKE_HIGH:
        # Thinned by peeling the strokes' outline, ``radius`` pixels deep: what stays keeps its own grey
        # levels (a grey erosion would spread the faintest pixel over every stroke), with a soft edge.
        depth = ndimage.distance_transform_edt(mask)
        pieces, holes = _topology(mask)
        radius = (width - STROKE_THINNED) * per_box_pixel / 2
        while radius >= 1:
            thinned = small * np.clip(depth - radius, 0.0, 1.0).astype(np.float32)
            kept = thinned >= 0.5 * float(small.max())
            count, loops = _topology(kept)
            if loops >= holes and 0 < count <= pieces and (skeleton & kept).sum() >= SKELETON_KEPT * skeleton.sum():
                return thinned
            radius -= 1
        return crop
    radius = round((STROKE_TARGET - width) * per_box_pixel / 2)
    # A fine line shrunk to the copy's scale is faint: its own strength is full strength.
    ink = small[small > 0]
    small = np.clip(small * (255.0 / max(1.0, float(np.percentile(ink, FULL_STROKE_PERCENTILE)))), 0, 255)
    small = np.pad(small, radius + 1)
    _, holes = _topology(small >= 127.5)
    while radius > 0:
        grown = ndimage.grey_dilation(small, footprint=disk(radius)).astype(np.float32)
        if _topology(grown >= 127.5)[1] >= holes:
            return grown
        radius -= 1
    return small


def _stroke_copy(crop: np.ndarray) -> np.ndarray:
    """The crop at most STROKE_SIZE px across, area-averaged."""
    return _shrink(crop.astype(np.float32, copy=False), min(1.0, STROKE_SIZE / max(crop.shape)))


def _core(mask: np.ndarray) -> int:
    bounds = _bounds(mask)
    if bounds is None:
        return 1
    y0, x0, y1, x1 = bounds
    return max(1, y1 - y0, x1 - x0)


def _width(mask: np.ndarray, skeleton: np.ndarray | None = None) -> float:
    """Area / skeleton length; ``skeleton``: the mask's, when the caller has it already."""
    skeleton = skeletonize(mask) if skeleton is None else skeleton
    return float(mask.sum()) / max(1, int(skeleton.sum()))


def _topology(mask: np.ndarray) -> tuple[int, int]:
    """(8-connected pieces of ink, holes in them): what thinning or thickening must not change.

    A hole is a 4-connected piece of background that does not touch the border, of at least 4
    pixels: a pinhole in a thick stroke is no loop.
    """
    _, pieces = ndimage.label(mask, structure=EIGHT_CONNECTED)
    regions, count = ndimage.label(np.pad(~mask, 1, constant_values=True))
    areas = np.bincount(regions.ravel(), minlength=count + 1)[2:]  # 0 is ink, 1 the outside (the padding)
    return int(pieces), int((areas >= 4).sum())


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
    _check_blobs(ink, kept, MAX_BLOBS)
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
    _check_blobs(ink, components, MAX_BLOBS_MULTI)
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
        raise NoDigitFound("no ink: no piece of ink is large enough for a digit", _as_seen(ink.mask))
    return segments


def _check_blobs(ink: Ink, kept: list[Component], limit: int) -> None:
    """NoDigitFound when no blob is left, or more than ``limit`` (a texture, a page of text, not digits)."""
    if not kept:
        raise NoDigitFound("no ink: only specks of noise", _as_seen(ink.mask))
    if len(kept) > limit:
        what = "a number" if limit > MAX_BLOBS else "one digit"
        raise NoDigitFound(
            f"too many blobs: {len(kept)} separate marks of similar size, not {what}", _as_seen(ink.mask)
        )


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
    spread = float(gray.max()) - float(gray.min())
    if spread < MIN_CONTRAST:
        seen = np.clip(gray, 0, 255).astype(np.uint8)
        if spread == 0:
            raise NoDigitFound("no ink: the image is uniform", seen)
        raise NoDigitFound(f"too faint: the image spans {spread:.0f} grey levels, {MIN_CONTRAST:.0f} needed", seen)
    return gray.astype(np.float32)
