"""Safe decoding: an image file, bytes or Pillow image -> float32 grayscale, with pixel limits checked first.

Pillow opens only the FORMATS; the pixel count is read from the header and refused over the limit
before a pixel is decoded (a decompression bomb costs nothing). Alpha is composited onto white, or
taken as the ink itself when the image is ink of one colour on transparency.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_nn.inference.preprocess.arrays import border
from mnist_nn.inference.preprocess.errors import ImageError, ImageTooLarge
from mnist_nn.inference.preprocess.thresholds import (
    CLEAR_ALPHA,
    CLEAR_BORDER_SHARE,
    DEFAULT_MAX_PIXELS,
    FORMATS,
    ONE_COLOUR_PERCENTILES,
    ONE_COLOUR_SPREAD,
    OPAQUE_ALPHA,
    REASON_CHARS,
    SIXTEEN_BIT_WHITE,
)

# Pillow's modes with an alpha channel (an image may also mark one colour transparent in its info).
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
# 16-bit and float grayscale modes, which Pillow's convert("L") clips instead of scaling.
DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


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
    data = source if isinstance(source, bytes) else _read_file(Path(source), name)
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes), not an image")
    image = _checked_header(data, name, max_pixels)
    _decode_pixels(image, name, max_pixels)
    return _to_grayscale(image)


def image_pixels(data: bytes) -> int | None:
    """Width x height from an encoded image's header, without decoding it; None when unreadable."""
    try:
        with _open_header(data) as image:
            width, height = image.size
    except Exception:  # whatever it is, load_grayscale will say so
        return None
    return width * height


def _read_file(path: Path, name: str) -> bytes:
    """A file's bytes; every way it cannot be read is an ImageError saying which."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _too_large(name: str, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(f"{name}: image too large: refused before decoding (limit {max_pixels:,} pixels)")


def _checked_header(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The image opened from its header alone, refused when it is no image or has too many (or no) pixels."""
    try:
        image = _open_header(data)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (or not one of {', '.join(FORMATS)})") from None
    except Image.DecompressionBombError:
        raise _too_large(name, max_pixels) from None
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
    return image


def _decode_pixels(image: Image.Image, name: str, max_pixels: int) -> None:
    """Decode the pixels of an image whose header passed; truncated or corrupt data is an ImageError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError:
        raise _too_large(name, max_pixels) from None
    except Exception as exc:  # truncated or corrupt pixel data
        reason = _reason(exc)
        kind = "truncated" if "truncat" in reason.lower() or isinstance(exc, EOFError) else "corrupt"
        raise ImageError(f"{name}: {kind} {image.format} image ({reason})") from None


def _open_header(data: bytes) -> Image.Image:
    """Open an encoded image, reading its header only (pixels are decoded on ``load()``)."""
    with warnings.catch_warnings():
        # Our own pixel limits replace Pillow's global one (a warning, then an error at 2x).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=FORMATS)


def _reason(exc: BaseException) -> str:
    """A decoder's exception as one short line: its first line, or its type when it says nothing."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:REASON_CHARS]


def _to_grayscale(image: Image.Image) -> np.ndarray:
    # Phones store the camera's orientation in EXIF instead of rotating the pixels.
    image = ImageOps.exif_transpose(image)
    if image.mode in DEEP_MODES:
        # 16-bit and float grayscale: Pillow's convert("L") clips instead of scaling.
        array = np.asarray(image, dtype=np.float64)
        top = SIXTEEN_BIT_WHITE if image.mode.startswith("I;16") else max(255.0, float(array.max()))
        return (array * (255.0 / top)).clip(0, 255).astype(np.float32)
    has_alpha = image.mode in ALPHA_MODES or "transparency" in image.info
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
    opaque = alpha > OPAQUE_ALPHA
    if not opaque.any() or opaque.all():
        return False
    if float((border(alpha) < CLEAR_ALPHA).mean()) < CLEAR_BORDER_SHARE:
        return False
    tones = gray[opaque]
    if tones.size > 1:
        low, high = np.percentile(tones, ONE_COLOUR_PERCENTILES)
    else:
        low = high = tones[0]
    return float(high - low) < ONE_COLOUR_SPREAD
