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
the ink mask that was seen. ``segment_digits`` splits a handwritten number into one such image
per digit, left to right. Everything here works on numpy arrays; no model is involved.

One module per job, below the public names re-exported here:

    decode      safe decoding: formats, pixel limits before decoding, alpha, 16-bit, EXIF rotation
    ink         finding the ink: denoising, hysteresis threshold, "no ink" / "too faint"
    light       polarity and uneven light (the paper's brightness, by morphology)
    strokes     stroke width measured and brought into MNIST's range
    normalize   MNIST normalisation: 20 px box, centre of mass, 28x28
    segments    one digit per image, or a number split into its digits
    components  connected blobs of ink
    arrays      small shared helpers (medians, borders, resizing, boxes)
    errors      ImageError, ImageTooLarge, NoDigitFound
    thresholds  every tuned threshold and constant, each with what it controls and why
"""

from mnist_nn.inference.preprocess.components import Component, connected_components
from mnist_nn.inference.preprocess.decode import image_pixels, load_grayscale
from mnist_nn.inference.preprocess.errors import ImageError, ImageTooLarge, NoDigitFound
from mnist_nn.inference.preprocess.ink import Ink, extract_ink
from mnist_nn.inference.preprocess.light import flatten_light
from mnist_nn.inference.preprocess.normalize import mnist_form, to_mnist
from mnist_nn.inference.preprocess.segments import Segment, preprocess_image, segment_digits
from mnist_nn.inference.preprocess.strokes import normalize_strokes, stroke_width
from mnist_nn.inference.preprocess.thresholds import (
    CRISP_NOISE,
    DEFAULT_MAX_PIXELS,
    DENOISE_SIGMA,
    EIGHT_CONNECTED,
    FLAT_SIZE,
    FORMATS,
    FULL_STROKE_PERCENTILE,
    HIGH_THRESHOLD,
    LOW_THRESHOLD,
    MAX_BLOBS,
    MAX_BLOBS_MULTI,
    MIN_CONTRAST,
    MIN_INK_CONTRAST,
    MNIST_BOX,
    MNIST_CENTRE,
    MNIST_SIZE,
    POLARITY_SIZE,
    SKELETON_KEPT,
    SMALL_IMAGE,
    STROKE_HIGH,
    STROKE_LOW,
    STROKE_SIZE,
    STROKE_TARGET,
    STROKE_THINNED,
    WORK_SIZE,
)

# Every public name the single module preprocess.py had, so that existing imports keep working.
__all__ = [
    "CRISP_NOISE",
    "DEFAULT_MAX_PIXELS",
    "DENOISE_SIGMA",
    "EIGHT_CONNECTED",
    "FLAT_SIZE",
    "FORMATS",
    "FULL_STROKE_PERCENTILE",
    "HIGH_THRESHOLD",
    "LOW_THRESHOLD",
    "MAX_BLOBS",
    "MAX_BLOBS_MULTI",
    "MIN_CONTRAST",
    "MIN_INK_CONTRAST",
    "MNIST_BOX",
    "MNIST_CENTRE",
    "MNIST_SIZE",
    "POLARITY_SIZE",
    "SKELETON_KEPT",
    "SMALL_IMAGE",
    "STROKE_HIGH",
    "STROKE_LOW",
    "STROKE_SIZE",
    "STROKE_TARGET",
    "STROKE_THINNED",
    "WORK_SIZE",
    "Component",
    "ImageError",
    "ImageTooLarge",
    "Ink",
    "NoDigitFound",
    "Segment",
    "connected_components",
    "extract_ink",
    "flatten_light",
    "image_pixels",
    "load_grayscale",
    "mnist_form",
    "normalize_strokes",
    "preprocess_image",
    "segment_digits",
    "stroke_width",
    "to_mnist",
]
