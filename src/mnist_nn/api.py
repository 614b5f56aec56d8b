"""``mnist_nn.predict``: read digits in images from Python, in one call.

    >>> import mnist_nn
    >>> result = mnist_nn.predict("docs/images/digit.png")  # the bundled default model
    >>> result = mnist_nn.predict("docs/images/digit.png", "runs/tutorial/model.pt")  # a model of your own
    >>> result.label, round(result.probabilities[result.label], 3)

A thin layer over ``Predictor`` (predict.py), the class the CLI, the exporter and the web server
use, so all of them give the same answers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_nn.core.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from mnist_nn.inference.predictor import Predictor
    from mnist_nn.models.checkpoint import Checkpoint

    ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray


@dataclass(frozen=True)
class Reading:
    """The answer for one image.

    ``label``: the most probable class ("7"), or None when the image holds no digit.
    ``probabilities``: every class's probability, in the classes' order ({"0": 0.001, ..., "9": 0.0});
    empty when no digit was found.
    """

    source: str
    label: str | None
    probabilities: dict[str, float] = field(default_factory=dict)

    @property
    def confidence(self) -> float | None:
        """The probability of ``label``."""
        return None if self.label is None else self.probabilities[self.label]


def predict(
    images: ImageInput | Sequence[ImageInput],
    checkpoint: str | os.PathLike | Checkpoint | Predictor | None = None,
    *,
    preprocess: bool = True,
    device: str = "auto",
) -> Reading | list[Reading]:
    """Read the digit in each image with a trained checkpoint.

    ``images``: one image or a list of them. An image is a file path (PNG, JPEG, BMP, GIF, WebP,
    TIFF), encoded bytes, a PIL image, or a 2-D numpy array of gray levels 0-255 (a 3-D array
    [N, H, W] is N images). Any photo, scan or drawing works, dark ink on light paper or light on
    dark: it is cropped to its ink and centred in a 28x28 square, as MNIST's digits are. With
    ``preprocess=False`` each image must already be MNIST form: 28x28, a light digit on black, 0-255.
    The normalization the model was trained with is applied inside; do not scale the pixels.

    ``checkpoint``: a ``model.pt`` path, a bundled model's name ("robust", "cnn-fast", "tutorial"), a loaded
    ``mnist_nn.load_checkpoint(...)``, or a ``Predictor``; None (the default) is the bundled robust model.
    ``device``: auto (CUDA, then Apple's MPS, then the CPU), cpu, cuda or mps.

    Returns a ``Reading`` (label and probabilities) for one image, a list of them for a list.
    An image that cannot be read raises ``UserError`` naming it.
    """
    predictor = _predictor(checkpoint, device)
    many = isinstance(images, (list, tuple)) or (_is_array(images) and getattr(images, "ndim", 0) == 3)
    readings = [_read(predictor, image, preprocess) for image in (images if many else [images])]
    return readings if many else readings[0]


def _read(predictor: Predictor, image: Any, preprocess: bool) -> Reading:
    # Every class in the top list gives the whole distribution; Predictor.predict keeps the CLI's handling.
    answer = predictor.predict(image, preprocess=preprocess, top_k=len(predictor.labels))
    if answer.status == "error":
        raise UserError(answer.error or f"{answer.source}: cannot read this image")
    if not answer.top:  # no digit found: a blank or empty image
        return Reading(source=answer.source, label=None)
    by_label = {entry["label"]: entry["probability"] for entry in answer.top}
    probabilities = {label: by_label[label] for label in predictor.labels}
    return Reading(source=answer.source, label=answer.top[0]["label"], probabilities=probabilities)


def _is_array(value: object) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def _predictor(checkpoint: Any, device: str) -> Predictor:
    from mnist_nn.inference.predictor import Predictor
    from mnist_nn.models.checkpoint import Checkpoint

    if isinstance(checkpoint, Predictor):
        return checkpoint
    if isinstance(checkpoint, Checkpoint):  # the model in memory, as the caller may have changed it
        return Predictor.from_loaded(checkpoint)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise UserError(f"checkpoint: expected a model.pt path, a Checkpoint or a Predictor, got {checkpoint!r}")
    from mnist_nn.models.bundled import resolve_model

    path = resolve_model(checkpoint).resolve()
    stamp = path.stat().st_mtime_ns if path.is_file() else 0
    return _cached_predictor(path, stamp, device)


@lru_cache(maxsize=4)
def _cached_predictor(path: Path, stamp: int, device: str) -> Predictor:
    """One Predictor per checkpoint file (and version of it: ``stamp`` is its mtime): calls in a loop load it once."""
    from mnist_nn.inference.predictor import Predictor

    return Predictor.from_checkpoint(path, device=device)
