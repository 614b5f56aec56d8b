"""Synthetic "real photos" made from MNIST test digits, for tests and benchmarks.

A real photo of a digit differs from MNIST in every way the preprocessing must undo: dark ink
on light paper of some tone, any size, anywhere on a larger canvas, sensor noise, JPEG
artefacts, colour, transparency, uneven light, pens far thicker or finer than MNIST's, low
resolution. ``photo_set`` makes such images from MNIST test digits (whose true labels are known),
each in one of the ``LOOKS``; ``number_set`` does the same for numbers of 2-6 digits. Both are
seeded, so a test and a benchmark see the same images. ``Look`` holds every knob of one image
explicitly, so a test can ask for exactly one condition ("a 60 grey-level gradient with noise").
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.morphology import skeletonize

# Output kinds and their shares: the acceptance asks for JPEG and RGBA among them; the rest
# cover the other formats the loader accepts.
KINDS = (
    ("png-gray", 0.20),
    ("png-rgb", 0.10),
    ("jpeg", 0.35),
    ("png-rgba", 0.20),
    ("webp", 0.05),
    ("bmp", 0.04),
    ("tiff", 0.03),
    ("gif", 0.03),
)
SUFFIXES = {"jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif", "gif": ".gif"}


@dataclass
class SyntheticImage:
    name: str  # file name, with the suffix of its format
    data: bytes  # the encoded file
    label: str  # the true reading: one digit, or a number's digits
    kind: str  # the file format, one of KINDS
    look: str = "classic"  # how it departs from MNIST, one of LOOKS
    source: int | None = None  # photo_set: the index of the MNIST image it was made from


@dataclass(frozen=True)
class Look:
    """Every knob of one photo-like image, explicit: the defaults are a clean dark digit on light paper.

    Sizes are in the output's pixels unless named otherwise; grey levels are 0-255. Light is
    multiplicative on light paper (a shadow darkens ink and paper alike, as on a real page) and
    additive on dark paper (where a product would leave no room for 60 levels).
    """

    size: int = 120  # side of the digit's 28x28 MNIST field (its 20 px box scales with it)
    thicken: float = 0.0  # a thick marker: strokes grown by this radius, in MNIST pixels
    pen: float = 0.0  # a fine pen: strokes redrawn along their skeleton this wide, in output pixels (0: off)
    canvas: tuple[float, float] = (1.7, 1.7)  # canvas height and width / the field's side
    place: tuple[float, float] = (0.5, 0.5)  # the field's top-left, as fractions of the free room
    paper: float = 215.0  # paper grey level; below ``ink`` the image is inverted (light ink on dark)
    ink: float = 30.0
    fade: float = 0.0  # the ink's strength falls by this fraction across the digit (a pen running dry)
    gradient: float = 0.0  # grey levels the light falls across the page, linearly
    angle: float = 0.0  # the gradient's direction in degrees (0: darker towards the right)
    shadow: float = 0.0  # depth of a soft round shadow at its centre, grey levels
    shadow_at: tuple[float, float, float] = (0.5, 0.5, 0.3)  # its centre (y, x) and sigma, fractions of the canvas
    noise: float = 4.0  # sensor noise, standard deviation in grey levels
    low_res: int = 0  # the digit's 20 px box drawn this many pixels tall (0: off)...
    upscale: float = 1.0  # ...then the whole image enlarged this much (1: kept tiny)
    upscale_filter: str = "bilinear"  # "nearest" (blocky) or "bilinear" (blurred)
    ink_colour: tuple[float, float, float] | None = None  # RGB; None: grey at ``ink``
    paper_colour: tuple[float, float, float] | None = None  # RGB; None: grey at ``paper``
    kind: str = "png-gray"  # the file format, one of KINDS (png-rgba: ink on transparency)
    quality: int = 90  # JPEG and WebP quality


def photo_set(
    images: np.ndarray,
    labels: np.ndarray,
    count: int = 1000,
    seed: int = 0,
    looks: tuple[str, ...] | None = None,
) -> list[SyntheticImage]:
    """``count`` photo-like images of single MNIST digits (uint8 [N, 28, 28], labels [N]), seeded.

    Each image takes one of ``looks`` (names in LOOKS; default: all, in LOOKS' shares) with its
    knobs drawn at random. ``looks=("classic",)`` is the first, milder set, image for image:
    a digit inverted to dark on light, 40-300 px, off-centre on a light canvas, noise, and one of
    ``KINDS`` (some JPEG-compressed, some RGBA with transparent paper).
    """
    names = tuple(LOOKS) if looks is None else tuple(looks)
    unknown = [name for name in names if name not in LOOKS]
    if unknown:
        raise ValueError(f"unknown look {unknown[0]!r}; known: {', '.join(LOOKS)}")
    shares = np.array([LOOKS[name][0] for name in names])
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), size=count, replace=False)
    out = []
    for n, index in enumerate(picks):
        label, stem = str(int(labels[index])), f"photo-{n:04d}"
        # One look only draws no choice: ("classic",) keeps the first set's random stream exactly.
        name = names[0] if len(names) == 1 else str(rng.choice(names, p=shares / shares.sum()))
        if name == "classic":
            size = int(rng.integers(40, 301))
            digit = _resize(images[index].astype(np.float32), size, size)
            out.append(_photo(digit, label, stem, _pick_kind(rng), rng))
        else:
            look = LOOKS[name][1](rng)
            item = photo(images[index], label, look, stem, rng)
            item.look = name
            out.append(item)
        out[-1].source = int(index)
    return out


def photo(
    digit: np.ndarray, label: str, look: Look, stem: str = "photo", rng: np.random.Generator | int = 0
) -> SyntheticImage:
    """One MNIST digit (uint8 or float [28, 28], light on dark) as an encoded photo-like image of ``look``.

    ``rng`` (a Generator or a seed) draws only the noise: the same look and seed give the same bytes.
    """
    rng = np.random.default_rng(rng)
    field = look.low_res * 28 // 20 if look.low_res else look.size
    field = max(8, int(field))
    # BOX when shrinking: a small camera image averages the light over each pixel.
    resample = Image.Resampling.BOX if field < 28 else Image.Resampling.BICUBIC
    coverage = _resize(np.asarray(digit, np.float32), field, field, resample) / 255.0
    if look.thicken > 0:
        coverage = _grow(coverage, look.thicken * field / 28)
    if look.pen > 0 and _strokes(coverage):
        coverage = _redraw(coverage, look.pen)
    if look.fade > 0:
        coverage = coverage * np.linspace(1.0, 1.0 - look.fade, field, dtype=np.float32)[None, :]
    canvas_h = int(field * look.canvas[0]) + 8
    canvas_w = int(field * look.canvas[1]) + 8
    top = round(look.place[0] * (canvas_h - field))
    left = round(look.place[1] * (canvas_w - field))
    full = np.zeros((canvas_h, canvas_w), np.float32)
    full[top : top + field, left : left + field] = coverage
    paint = _ink_on_transparency if look.kind == "png-rgba" else _on_paper
    image = paint(full, look, rng)
    if look.upscale > 1:
        size = (round(canvas_w * look.upscale), round(canvas_h * look.upscale))
        filters = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}
        image = image.resize(size, filters[look.upscale_filter])
    return SyntheticImage(
        name=stem + SUFFIXES.get(look.kind, ".png"),
        data=_encode(image, look.kind, look.quality),
        label=label,
        kind=look.kind,
        look="custom",
    )


def number_set(
    images: np.ndarray, labels: np.ndarray, count: int = 500, seed: int = 1, digits: tuple[int, int] = (2, 6)
) -> list[SyntheticImage]:
    """``count`` handwritten numbers of ``digits`` (inclusive) MNIST test digits each, seeded.

    The digits keep MNIST's vertical placement (so they sit on a common line, as handwriting
    does), are cropped horizontally to their ink and set side by side with random gaps of 2-10 px
    at MNIST's scale; the strip is then made photo-like as in ``photo_set`` (40-150 px tall).
    """
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        length = int(rng.integers(digits[0], digits[1] + 1))
        picks = rng.choice(len(images), size=length, replace=False)
        columns = [np.zeros((28, int(rng.integers(4, 12))), np.float32)]
        for i, index in enumerate(picks):
            digit = images[index].astype(np.float32)
            used = np.nonzero(digit.max(axis=0) > 0)[0]
            columns.append(digit[:, used[0] : used[-1] + 1])
            gap = int(rng.integers(2, 11)) if i < length - 1 else int(rng.integers(4, 12))
            columns.append(np.zeros((28, gap), np.float32))
        strip = np.concatenate(columns, axis=1)
        height = int(rng.integers(40, 151))
        strip = _resize(strip, round(strip.shape[1] * height / 28), height)
        label = "".join(str(int(labels[i])) for i in picks)
        out.append(_photo(strip, label, f"number-{n:04d}", _pick_kind(rng), rng))
    return out


def write_set(
    items: list[SyntheticImage], folder: str | os.PathLike, labels_file: str | os.PathLike | None = None
) -> dict[str, str]:
    """Write the images into ``folder``; return their labels (file name -> label), also as JSON to ``labels_file``.

    The labels go outside the folder so that the folder holds images only.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for item in items:
        (folder / item.name).write_bytes(item.data)
        labels[item.name] = item.label
    if labels_file is not None:
        Path(labels_file).write_text(json.dumps(labels, indent=1) + "\n", encoding="utf-8")
    return labels


def _pick_kind(rng: np.random.Generator) -> str:
    names, shares = zip(*KINDS, strict=True)
    return str(rng.choice(names, p=np.array(shares) / sum(shares)))


def _resize(
    array: np.ndarray, width: int, height: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> np.ndarray:
    image = Image.fromarray(array.astype(np.float32)).resize((width, height), resample)
    return np.asarray(image, dtype=np.float32).clip(0, 255)


def _photo(ink: np.ndarray, label: str, stem: str, kind: str, rng: np.random.Generator) -> SyntheticImage:
    """Light-on-dark ink (float [h, w], 0-255) -> an encoded photo-like image of dark ink on paper."""
    h, w = ink.shape
    canvas_h = int(h * rng.uniform(1.2, 2.2)) + 8
    canvas_w = int(w * rng.uniform(1.2, 2.2)) + 8
    top, left = int(rng.integers(0, canvas_h - h + 1)), int(rng.integers(0, canvas_w - w + 1))
    coverage = np.zeros((canvas_h, canvas_w), np.float32)
    coverage[top : top + h, left : left + w] = ink / 255.0
    paper = rng.uniform(170, 250)
    ink_tone = rng.uniform(0, 70)
    noise = rng.uniform(2, 12)
    gray = paper + (ink_tone - paper) * coverage + rng.normal(0, noise, coverage.shape)
    if kind == "png-rgba":
        # Ink in a dark colour on transparent paper: a drawing app's export.
        colour = rng.uniform(0, 90, size=3)
        rgba = np.empty((canvas_h, canvas_w, 4), np.float32)
        rgba[..., :3] = colour + rng.normal(0, noise, (canvas_h, canvas_w, 3))
        rgba[..., 3] = 255 * np.clip(coverage + rng.normal(0, 0.02, coverage.shape), 0, 1)
        image = Image.fromarray(np.clip(rgba, 0, 255).astype(np.uint8))
    elif kind in ("png-rgb", "jpeg", "webp"):
        # Tinted paper (warm or cool) and tinted ink: a phone photo.
        tint = rng.uniform(-12, 12, size=3)
        rgb = gray[..., None] + tint + rng.normal(0, noise / 2, (canvas_h, canvas_w, 3))
        image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    else:
        image = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    if kind == "jpeg":
        image.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)))
    elif kind == "webp":
        image.save(buffer, format="WEBP", quality=90)
    elif kind in ("bmp", "tiff", "gif"):
        image.save(buffer, format={"bmp": "BMP", "tiff": "TIFF", "gif": "GIF"}[kind])
    else:
        image.save(buffer, format="PNG")
    return SyntheticImage(name=stem + SUFFIXES.get(kind, ".png"), data=buffer.getvalue(), label=label, kind=kind)


def _grow(coverage: np.ndarray, radius: float) -> np.ndarray:
    """A thick marker: every stroke grown by ``radius`` pixels, its new edge anti-aliased."""
    distance = ndimage.distance_transform_edt(coverage < 0.5)  # to the nearest ink pixel
    return np.maximum(coverage, np.clip(radius + 0.5 - distance, 0.0, 1.0)).astype(np.float32)


def _strokes(coverage: np.ndarray) -> bool:
    """Whether a digit is strokes a fine pen could draw: not a blob (a loop drawn full, strokes piled up).

    Its stroke width (ink area / skeleton length) is then at most 4.5 px in MNIST's 20 px box, MNIST's
    95th percentile; the skeleton of a blob would be another digit (a bold 3 thins to a J).
    """
    mask = coverage >= 0.5
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return False
    core = max(np.ptp(rows), np.ptp(cols)) + 1
    return float(mask.sum()) / max(1, int(skeletonize(mask).sum())) * 20 / core <= 4.5


def _redraw(coverage: np.ndarray, width: float) -> np.ndarray:
    """A fine pen: the digit's skeleton drawn ``width`` pixels wide; under 1 px, a fainter line."""
    skeleton = skeletonize(coverage >= 0.5)
    distance = ndimage.distance_transform_edt(~skeleton)
    return (np.clip(width / 2 + 0.5 - distance, 0.0, 1.0) * min(1.0, width)).astype(np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _on_paper(coverage: np.ndarray, look: Look, rng: np.random.Generator) -> Image.Image:
    """Ink coverage (0-1 over the canvas) as ink on paper under ``look``'s light, with noise."""
    height, width = coverage.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = np.deg2rad(look.angle)
    ramp = xs * np.cos(theta) + ys * np.sin(theta)
    ramp = (ramp - ramp.min()) / max(1e-6, float(np.ptp(ramp)))
    light = look.gradient * ramp  # grey levels the paper loses at each pixel
    if look.shadow:
        cy, cx, sigma = look.shadow_at
        distance2 = ((ys - cy * height) ** 2 + (xs - cx * width) ** 2) / (sigma * max(height, width)) ** 2
        light = light + look.shadow * np.exp(-distance2 / 2)
    coloured = look.ink_colour is not None or look.paper_colour is not None
    paper = np.array(look.paper_colour if look.paper_colour is not None else (look.paper,) * 3, np.float32)
    ink = np.array(look.ink_colour if look.ink_colour is not None else (look.ink,) * 3, np.float32)
    if not coloured:
        paper, ink = paper[:1], ink[:1]
    pixels = paper + (ink - paper) * coverage[..., None]
    paper_level, ink_level = float(_luminance(np.resize(paper, 3))), float(_luminance(np.resize(ink, 3)))
    if paper_level >= ink_level:
        # Light paper: the light scales what the page reflects, ink and paper alike.
        pixels = pixels * (1.0 - light / max(paper_level, 1.0))[..., None]
    else:
        pixels = pixels - light[..., None]
    pixels = pixels + rng.normal(0, look.noise, pixels.shape)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels if coloured else pixels[..., 0])


def _ink_on_transparency(coverage: np.ndarray, look: Look, rng: np.random.Generator) -> Image.Image:
    """Ink of one colour on fully transparent paper, its shape in the alpha channel: a drawing app's export."""
    colour = np.array(look.ink_colour if look.ink_colour is not None else (look.ink,) * 3, np.float32)
    height, width = coverage.shape
    rgba = np.empty((height, width, 4), np.float32)
    rgba[..., :3] = colour + rng.normal(0, look.noise, (height, width, 3))
    rgba[..., 3] = 255 * np.clip(coverage + rng.normal(0, 0.02, coverage.shape), 0, 1)
    return Image.fromarray(np.clip(rgba, 0, 255).astype(np.uint8))


def _encode(image: Image.Image, kind: str, quality: int = 90) -> bytes:
    if kind == "png-gray":
        image = image.convert("L")
    elif kind == "png-rgb":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if kind in ("jpeg", "webp"):
        image.save(buffer, format=kind.upper(), quality=quality)
    elif kind in ("bmp", "tiff", "gif"):
        image.save(buffer, format=kind.upper())
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- looks

# Pens and papers of phone photos: RGB, jittered per image.
PENS = ((30, 50, 160), (20, 30, 90), (180, 30, 40), (30, 120, 60), (25, 25, 30), (90, 40, 130))
PAPERS = ((250, 250, 248), (245, 238, 210), (205, 205, 200), (225, 235, 245), (250, 240, 160))
# Ink on transparency is drawn in any colour, white and light ones too.
TRANSPARENT_INKS = ((255, 255, 255), (200, 200, 200), (250, 230, 60), (150, 200, 255), (0, 0, 0), (20, 30, 120))
GRAY_KINDS = (
    ("png-gray", 0.35),
    ("jpeg", 0.35),
    ("png-rgb", 0.1),
    ("webp", 0.05),
    ("bmp", 0.05),
    ("tiff", 0.05),
    ("gif", 0.05),
)


def _choice(rng: np.random.Generator, table: tuple[tuple[str, float], ...]) -> str:
    names, shares = zip(*table, strict=True)
    return str(rng.choice(names, p=np.array(shares) / sum(shares)))


def _jitter(rng: np.random.Generator, colours: tuple, spread: float) -> tuple[float, float, float]:
    colour = np.array(colours[int(rng.integers(len(colours)))], np.float64) + rng.uniform(-spread, spread, 3)
    return tuple(float(c) for c in np.clip(colour, 0, 255))


def _plain(rng: np.random.Generator, **changes: object) -> Look:
    """The classic photo's random knobs (size, canvas, place, paper, ink, noise, format), then ``changes``."""
    look = Look(
        size=int(rng.integers(40, 301)),
        canvas=(float(rng.uniform(1.2, 2.2)), float(rng.uniform(1.2, 2.2))),
        place=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))),
        paper=float(rng.uniform(170, 250)),
        ink=float(rng.uniform(0, 70)),
        noise=float(rng.uniform(2, 12)),
        kind=_choice(rng, GRAY_KINDS),
        quality=int(rng.integers(60, 96)),
    )
    return replace(look, **changes)


def _edge(rng: np.random.Generator) -> float:
    return float(rng.uniform(0, 0.12)) if rng.random() < 0.5 else float(rng.uniform(0.88, 1))


def _thick(rng: np.random.Generator) -> Look:
    return _plain(rng, thicken=float(rng.uniform(0.6, 1.6)))


def _fine(rng: np.random.Generator) -> Look:
    return _plain(rng, size=int(rng.integers(80, 301)), pen=float(rng.uniform(1.0, 3.0)))


def _gradient(rng: np.random.Generator) -> Look:
    return _plain(rng, gradient=float(rng.uniform(20, 60)), angle=float(rng.uniform(0, 360)))


def _shadow(rng: np.random.Generator) -> Look:
    at = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)), float(rng.uniform(0.15, 0.4)))
    return _plain(
        rng,
        shadow=float(rng.uniform(30, 80)),
        shadow_at=at,
        gradient=float(rng.uniform(0, 20)),
        angle=float(rng.uniform(0, 360)),
    )


def _off_centre(rng: np.random.Generator) -> Look:
    canvas = (float(rng.uniform(2.5, 5)), float(rng.uniform(2.5, 5)))
    place = (_edge(rng), float(rng.uniform(0, 1))) if rng.random() < 0.5 else (float(rng.uniform(0, 1)), _edge(rng))
    return _plain(rng, size=int(rng.integers(30, 121)), canvas=canvas, place=place)


def _inverted(rng: np.random.Generator) -> Look:
    return _plain(
        rng,
        paper=float(rng.uniform(0, 80)),
        ink=float(rng.uniform(170, 255)),
        gradient=float(rng.uniform(0, 40)),
        angle=float(rng.uniform(0, 360)),
    )


def _low_res(rng: np.random.Generator) -> Look:
    upscale = 1.0 if rng.random() < 0.5 else float(rng.uniform(2, 6))
    return _plain(
        rng,
        low_res=int(rng.integers(10, 19)),
        canvas=(float(rng.uniform(1.1, 1.6)),) * 2,
        noise=float(rng.uniform(0, 6)),
        upscale=upscale,
        upscale_filter=str(rng.choice(["nearest", "bilinear"])),
        kind=str(rng.choice(["png-gray", "png-rgb", "jpeg"])),
        quality=int(rng.integers(80, 96)),
    )


def _colour(rng: np.random.Generator) -> Look:
    paper = tuple(c * float(rng.uniform(0.8, 1.0)) for c in _jitter(rng, PAPERS, 8))
    return _plain(
        rng, ink_colour=_jitter(rng, PENS, 25), paper_colour=paper, kind=str(rng.choice(["png-rgb", "jpeg", "webp"]))
    )


def _transparent(rng: np.random.Generator) -> Look:
    return _plain(rng, ink_colour=_jitter(rng, TRANSPARENT_INKS, 5), kind="png-rgba")


def _faint(rng: np.random.Generator) -> Look:
    """Pencil or a pen running dry: ink 35-80 grey levels from the paper, fading across the digit."""
    look = _plain(rng, noise=float(rng.uniform(2, 6)), fade=float(rng.uniform(0, 0.6)))
    return replace(look, ink=look.paper - float(rng.uniform(35, 80)))


def _noisy_jpeg(rng: np.random.Generator) -> Look:
    return _plain(rng, noise=float(rng.uniform(10, 20)), kind="jpeg", quality=int(rng.integers(25, 61)))


def _phone(rng: np.random.Generator) -> Look:
    """Everything a phone photo of a page does at once: light, shadow, colour, a bolder pen, JPEG."""
    paper = tuple(c * float(rng.uniform(0.85, 1.0)) for c in _jitter(rng, PAPERS, 8))
    at = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)), float(rng.uniform(0.15, 0.4)))
    return _plain(
        rng,
        gradient=float(rng.uniform(10, 60)),
        angle=float(rng.uniform(0, 360)),
        shadow=float(rng.uniform(20, 60)) if rng.random() < 0.5 else 0.0,
        shadow_at=at,
        thicken=float(rng.uniform(0.3, 1.2)) if rng.random() < 0.3 else 0.0,
        ink_colour=_jitter(rng, PENS, 25),
        paper_colour=paper,
        noise=float(rng.uniform(3, 12)),
        kind="jpeg",
        quality=int(rng.integers(50, 91)),
    )


# Name -> (share of photo_set's default mix, its knobs drawn at random). "classic" is the first set's look;
# the others add to it a marker grown 0.6-1.6 MNIST px, a fine pen 1-3 px, ink 35-80 grey levels from the
# paper, light falling 20-60 levels across the page, a shadow 30-80 deep, a small digit near an edge,
# light ink on dark paper, a digit's box 10-18 px tall (kept tiny or enlarged 2-6x), coloured ink on
# tinted paper, ink on transparency in any colour, noise 10-20 with JPEG at quality 25-60, and all of
# a phone photo's at once.
LOOKS: dict[str, tuple[float, Callable[[np.random.Generator], Look] | None]] = {
    "classic": (0.07, None),
    "thick": (0.09, _thick),
    "fine": (0.09, _fine),
    "faint": (0.06, _faint),
    "gradient": (0.09, _gradient),
    "shadow": (0.08, _shadow),
    "off-centre": (0.08, _off_centre),
    "inverted": (0.08, _inverted),
    "low-res": (0.08, _low_res),
    "colour": (0.08, _colour),
    "transparent": (0.05, _transparent),
    "noisy-jpeg": (0.07, _noisy_jpeg),
    "phone": (0.08, _phone),
}
