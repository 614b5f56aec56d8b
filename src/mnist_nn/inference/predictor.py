"""The Predictor: a checkpoint turned into answers for image files, arrays or pixels.

One class serves the CLI (`mnist-nn predict`), the exporter (it exports ``Predictor.pixel_model``)
and a web server: all of them feed the same module, so they cannot disagree.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from mnist_nn.core.errors import UserError, option
from mnist_nn.inference.evaluate import average_log_probabilities, zoom_views
from mnist_nn.inference.preprocess import (
    DEFAULT_MAX_PIXELS,
    MNIST_SIZE,
    ImageError,
    NoDigitFound,
    Segment,
    load_grayscale,
    mnist_form,
    preprocess_image,
    segment_digits,
)
from mnist_nn.models.scoring import model_outputs

if TYPE_CHECKING:
    from mnist_nn.models.checkpoint import Checkpoint

NO_DIGIT = "no digit found"
# A single-digit answer less sure than this, of an image that splits into several digits, gets --multi's hint.
HINT_BELOW = 0.95
UNCERTAIN = "uncertain"


# Writes what the model saw beside why it answered (lab.explain.save_explanations), for ``predict --explain``.
Explainer = Callable[["Predictor", "ImageReading", Path], object]


class PixelModel(nn.Module):
    """A trained model with its input normalization inside: pixels in, logits out.

    Takes [N, 28, 28] pixels on MNIST's 0-255 scale, uint8 or float, light digit on dark; applies
    the checkpoint's (x / 255 - mean) / std exactly as training did. Exported graphs are this module.
    """

    def __init__(self, model: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model = model
        # Folded into one multiply-add: x * scale + shift == (x / 255 - mean) / std.
        self.register_buffer("scale", torch.tensor(1.0 / (255.0 * std), dtype=torch.float32))
        self.register_buffer("shift", torch.tensor(-mean / std, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32).unsqueeze(1)
        return self.model(x * self.scale + self.shift)


@dataclass
class DigitReading:
    """One digit's answer: the label, its probability and the top-k alternatives."""

    label: str
    confidence: float
    top: list[dict[str, Any]]
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in the original image
    uncertain: bool = False


@dataclass
class Prediction:
    """The answer for one input: status "ok", "uncertain", "no digit found" or "error"."""

    source: str
    status: str
    label: str | None = None  # the reading: a digit, or a number with --multi ("?" where uncertain)
    confidence: float | None = None  # the digit's probability; for a number, the product over digits
    top: list[dict[str, Any]] = field(default_factory=list)
    digits: list[DigitReading] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None  # why no digit was found: "no ink: ...", "too faint: ...", "too many blobs: ..."

    @property
    def failed(self) -> bool:
        return self.status == "error"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for digit in data["digits"]:
            digit["box"] = list(digit["box"]) if digit["box"] is not None else None
        return data


@dataclass
class ImageReading:
    """What the model made of one image: a reading per digit found (none for a blank image).

    ``pixels`` are exactly what the model was given, MNIST form; ``seen`` is the same rounded to
    bytes, as a page shows it or a PNG stores it.
    """

    source: str
    digits: list[DigitReading]
    probabilities: torch.Tensor  # float32 [N, classes]: row i is digits[i]'s distribution
    pixels: np.ndarray  # float32 [N, 28, 28], 0-255, light on dark
    reason: str | None = None  # without digits: why (NoDigitFound.reason)
    mask: np.ndarray | None = None  # without digits: the ink that was seen, uint8 [H, W] (NoDigitFound.seen)

    @property
    def found(self) -> bool:
        """Whether the image held a digit at all."""
        return bool(self.digits)

    @property
    def seen(self) -> np.ndarray:
        """The model's input as uint8 [N, 28, 28]."""
        return np.clip(np.rint(self.pixels), 0, 255).astype(np.uint8)


class Predictor:
    """Predictions from a checkpoint: on image files, decoded arrays, or MNIST-form pixels.

    ``zoom``: an image's digit is read as it is and zoomed in and out by this fraction, and the three
    readings' probabilities are averaged. A checkpoint's is the zoom range its recipe
    trained on (``aug_scale``; 0, one reading, for recipes without zoom augmentation): the 20 px box
    that preprocessing fits a photographed digit into is only roughly the size MNIST's writers gave it.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: float,
        std: float,
        labels: Sequence[str],
        metadata: dict[str, Any],
        zoom: float = 0.0,
    ):
        if not 0 <= zoom < 1:
            raise UserError(f"zoom must be at least 0 and below 1 (a fraction of the digit's size), got {zoom}")
        self.pixel_model = PixelModel(model, mean, std).eval()
        self.labels = tuple(labels)
        self.metadata = {**metadata, "zoom": zoom}
        self.zoom = zoom
        self.device = next(iter(self.pixel_model.parameters()), torch.empty(0)).device
        # What computes the probabilities when set (engine.choose_engine: ONNX Runtime for a server); None: PyTorch.
        self.engine: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", zoom: float | None = None) -> Predictor:
        """The checkpoint's Predictor; ``zoom`` None reads images at its recipe's zoom range (see the class)."""
        from mnist_nn.core.device import resolve_device
        from mnist_nn.models.checkpoint import load_checkpoint

        return cls.from_loaded(load_checkpoint(path, resolve_device(device)), zoom)

    @classmethod
    def from_loaded(cls, checkpoint: Checkpoint, zoom: float | None = None) -> Predictor:
        """The Predictor of a checkpoint in memory (its model as it is now); ``zoom`` as in from_checkpoint."""
        from mnist_nn.data.datasets import get_dataset_spec

        labels = get_dataset_spec(checkpoint.dataset).classes
        metadata = {
            "checkpoint": str(checkpoint.path),
            "model": checkpoint.model_name,
            "dataset": checkpoint.dataset,
            "mean": checkpoint.mean,
            "std": checkpoint.std,
            "labels": list(labels),
            "test_accuracy": checkpoint.metrics.get("test_accuracy"),
            "temperature": checkpoint.temperature,  # already applied: checkpoint.model divides the logits by it
        }
        if zoom is None:
            zoom = float(checkpoint.recipe.get("aug_scale") or 0.0)
        return cls(checkpoint.model, checkpoint.mean, checkpoint.std, labels, metadata, zoom=zoom)

    # ----------------------------------------------------------------- pixels

    def probabilities(self, pixels: np.ndarray | torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Class probabilities (float32 [N, classes], CPU) for MNIST-form pixels [N, 28, 28], 0-255."""
        tensor = torch.as_tensor(pixels)
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(0)
        if tensor.dim() != 3 or tuple(tensor.shape[1:]) != (28, 28):
            raise ValueError(f"expected pixels of shape [N, 28, 28], got {list(tensor.shape)}")

        if self.engine is not None:
            return self.engine(tensor)

        def score(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
            return model(batch.to(self.device)).float().softmax(1)

        # One batch (every served request) is returned as it is, without a copy into a new tensor.
        return model_outputs(self.pixel_model, tensor, batch_size, score, to_cpu=True)

    def zoomed_probabilities(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class probabilities for an image's digits [N, 28, 28]: the mean of the readings of ``zoom_views``
        (the same averaging as ``evaluate --tta``); the plain reading without a zoom."""
        if not self.zoom:
            return self.probabilities(pixels)
        views = zoom_views(torch.as_tensor(pixels, dtype=torch.float32), self.zoom)
        # One forward pass for the three views: a served digit is a batch of one, where each pass costs mostly overhead.
        probabilities = self.probabilities(torch.cat(views)).view(len(views), len(views[0]), -1)
        return average_log_probabilities(list(probabilities.log())).exp()

    def read(self, probabilities: torch.Tensor, top_k: int = 3, threshold: float = 0.0) -> list[DigitReading]:
        """Turn probability rows into readings: best label, confidence, top-k, uncertain below ``threshold``.

        A probability that is not a number is refused (RuntimeError), never answered: load_checkpoint refuses
        non-finite weights, so only a model built otherwise, or an overflow, can produce one.
        """
        # numpy's check: a tenth of torch's per-call cost on the one-row answers a server gives.
        if not np.isfinite(probabilities.detach().cpu().numpy()).all():
            raise RuntimeError("the model's probabilities are NaN or infinite: its weights or inputs are broken")
        k = max(1, min(top_k, len(self.labels)))
        values, indices = probabilities.topk(k, dim=1)
        readings = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True):
            top = [{"label": self.labels[i], "probability": p} for p, i in zip(row_values, row_indices, strict=True)]
            readings.append(
                DigitReading(
                    label=top[0]["label"],
                    confidence=row_values[0],
                    top=top,
                    uncertain=row_values[0] < threshold,
                )
            )
        return readings

    # ----------------------------------------------------------------- images

    def prepare(
        self,
        source: str | os.PathLike | bytes | Image.Image | np.ndarray,
        *,
        preprocess: bool = True,
        multi: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> list[Segment]:
        """The MNIST-form digit(s) the model will see; NoDigitFound or ImageError otherwise."""
        name = source_name(source)
        if isinstance(source, np.ndarray):
            gray = source.astype(np.float32)
            if gray.ndim != 2:
                raise ImageError(f"{name}: expected a 2-D grayscale array, got shape {list(gray.shape)}")
        else:
            gray = load_grayscale(source, max_pixels=max_pixels)
        if not preprocess:
            return [Segment(pixels=mnist_form(gray, name), box=(0, 0, gray.shape[1], gray.shape[0]))]
        if multi:
            return segment_digits(gray)
        return [preprocess_image(gray)]

    def read_image(
        self,
        source: str | os.PathLike | bytes | Image.Image | np.ndarray,
        *,
        preprocess: bool = True,
        multi: bool = False,
        top_k: int = 3,
        threshold: float = 0.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> ImageReading:
        """Read one image (a path, encoded bytes, a decoded array or pixels): its digit(s), or none.

        The one way from an image to an answer: ``predict`` (the CLI) and the web server both
        take it, so they cannot disagree. A blank image is a reading without digits. An unusable
        image raises ImageError naming it (ImageTooLarge for too many pixels).
        """
        found = self.find_digits(source, preprocess=preprocess, multi=multi, max_pixels=max_pixels)
        if isinstance(found, ImageReading):
            return found
        probabilities = self.zoomed_probabilities(np.stack([segment.pixels for segment in found]))
        return self.reading_of(source_name(source), found, probabilities, top_k=top_k, threshold=threshold)

    def find_digits(
        self,
        source: str | os.PathLike | bytes | Image.Image | np.ndarray,
        *,
        preprocess: bool = True,
        multi: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> list[Segment] | ImageReading:
        """read_image's first half: the digits to read, or the reading without digits of a blank image.

        The web server reads the digits of concurrent requests in one forward pass between the halves.
        """
        name = source_name(source)
        try:
            return self.prepare(source, preprocess=preprocess, multi=multi, max_pixels=max_pixels)
        except NoDigitFound as exc:
            empty = np.zeros((0, MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
            return ImageReading(name, [], torch.zeros(0, len(self.labels)), empty, exc.reason, exc.seen)
        except ImageError:
            raise
        except Exception as exc:
            # A damaged file can fail the preprocessing in ways no check foresaw: that is the image's
            # doing, reported like any unusable image; the original error stays attached as the cause.
            raise ImageError(f"{name}: could not process this image ({type(exc).__name__})") from exc

    def reading_of(
        self, name: str, segments: list[Segment], probabilities: torch.Tensor, top_k: int = 3, threshold: float = 0.0
    ) -> ImageReading:
        """read_image's second half: the reading of ``segments`` from their ``zoomed_probabilities``."""
        digits = self.read(probabilities, top_k=top_k, threshold=threshold)
        for digit, segment in zip(digits, segments, strict=True):
            digit.box = segment.box
        return ImageReading(name, digits, probabilities, np.stack([segment.pixels for segment in segments]))

    def predict(
        self,
        source: str | os.PathLike | bytes | Image.Image | np.ndarray,
        *,
        preprocess: bool = True,
        multi: bool = False,
        top_k: int = 3,
        threshold: float = 0.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        save_to: str | os.PathLike | None = None,
        explain_to: str | os.PathLike | None = None,
        explainer: Explainer | None = None,
    ) -> Prediction:
        """Read one image. Errors about the image become a Prediction with status "error".

        ``save_to``: a PNG path to write what the model saw (with ``multi``, one file per digit,
        numbered after the stem; without a digit, the ink mask it saw, as STEM-mask.png). ``explain_to``:
        the same for what it saw beside why it answered, written by ``explainer(predictor, reading, path)``
        (the lab's ``explain.save_explanations``: inference does not import the lab); an image that cannot
        be read gets neither.
        """
        if (explain_to is None) != (explainer is None):
            raise ValueError("explain_to and explainer go together")
        name = source_name(source)
        options = {"preprocess": preprocess, "multi": multi, "top_k": top_k, "threshold": threshold}
        try:
            reading = self.read_image(source, max_pixels=max_pixels, **options)
        except ImageError as exc:
            return Prediction(source=name, status="error", error=str(exc))
        if not reading.found:
            if save_to is not None and reading.mask is not None:
                save_mask(reading.mask, save_to)
            return Prediction(source=name, status=NO_DIGIT, reason=reading.reason)
        if save_to is not None:
            save_preprocessed(reading.pixels, save_to)
        if explain_to is not None and explainer is not None:
            explainer(self, reading, Path(explain_to))
        readings = reading.digits
        if not multi:
            best = readings[0]
            return Prediction(
                source=name,
                status=UNCERTAIN if best.uncertain else "ok",
                label=None if best.uncertain else best.label,
                confidence=best.confidence,
                top=best.top,
                digits=readings,
            )
        text = "".join("?" if r.uncertain else r.label for r in readings)
        return Prediction(
            source=name,
            status=UNCERTAIN if any(r.uncertain for r in readings) else "ok",
            label=text,
            confidence=float(np.prod([r.confidence for r in readings])),
            digits=readings,
        )

    def predict_paths(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        save_dir: str | os.PathLike | None = None,
        explain_dir: str | os.PathLike | None = None,
        explainer: Explainer | None = None,
        **options: Any,
    ) -> list[Prediction]:
        """Predict every file named or inside a named folder; a bad file is an error entry, never a stop.

        ``save_dir`` / ``explain_dir``: folders for what the model saw / for that beside why it
        answered (written by ``explainer``, as in ``predict``), a PNG per file (per digit with ``multi``)
        named after the file.
        """
        results = []
        used: set[str] = set()
        for path, problem in expand_paths(paths):
            if problem is not None:
                results.append(Prediction(source=str(path), status="error", error=problem))
                continue
            name = _unique_name(Path(path).stem, used)
            save_to = Path(save_dir) / name if save_dir is not None else None
            explain_to = Path(explain_dir) / name if explain_dir is not None else None
            results.append(self.predict(path, save_to=save_to, explain_to=explain_to, explainer=explainer, **options))
        return results


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, str | None]]:
    """Files to read, in order: each named file, then each named folder's files (sorted, not recursive).

    Every non-hidden file in a folder is tried by content, not by name, so a folder holding
    other files too gives those an error each. Returns (path, problem or None) pairs.
    """
    out: list[tuple[Path, str | None]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            try:
                entries = sorted(p for p in path.iterdir() if not p.name.startswith(".") and not p.is_dir())
            except OSError as exc:
                out.append((path, f"{path}: cannot list folder ({exc.strerror or type(exc).__name__})"))
                continue
            if not entries:
                out.append((path, f"{path}: folder holds no files"))
            out.extend((entry, None) for entry in entries)
        elif path.exists() or path.is_symlink():
            out.append((path, None))
        else:
            out.append((path, f"{path}: no such file or folder"))
    return out


def save_preprocessed(pixels: np.ndarray, path: str | os.PathLike) -> list[Path]:
    """Write MNIST-form digits as 28x28 grayscale PNGs; several digits get -0, -1, ... suffixes."""
    from mnist_nn.core.fsutil import atomic_write

    path = Path(path)
    written = []
    for i, digit in enumerate(pixels):
        target = path.with_suffix(".png") if len(pixels) == 1 else path.with_name(f"{path.stem}-{i}.png")
        buffer = io.BytesIO()
        Image.fromarray(np.clip(np.rint(digit), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
        data = buffer.getvalue()
        written.append(atomic_write(target, lambda handle, data=data: handle.write(data)))
    return written


def save_mask(mask: np.ndarray, path: str | os.PathLike) -> Path:
    """Write the ink mask seen in an image without a digit (uint8 [H, W]) as STEM-mask.png.

    ``path`` names the file its digit would have had: "blank" and "blank.png" both give blank-mask.png.
    """
    from mnist_nn.core.fsutil import atomic_write

    path = Path(path)
    stem = path.name[: -len(".png")] if path.name.lower().endswith(".png") else path.name
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    return atomic_write(path.with_name(f"{stem}-mask.png"), lambda handle: handle.write(data))


def _unique_name(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return name


def source_name(source: object) -> str:
    """How messages name an image: its path, or ``<bytes>``, ``<ndarray>``... for one in memory."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def format_table(predictions: Sequence[Prediction], top_k: int = 3) -> str:
    """Predictions as a terminal table: file, answer, confidence, top-k (or the per-digit confidences)."""
    width = min(60, max([4, *(len(p.source) for p in predictions)]))
    lines = [f"{'FILE':<{width}}  {'ANSWER':<14} {'CONF':>6}  DETAILS"]
    for p in predictions:
        source = p.source if len(p.source) <= width else "..." + p.source[-(width - 3) :]
        if p.status == "error":
            # The reason goes once, to stderr as every error does (the command prints it): the row only marks the file.
            lines.append(f"{source:<{width}}  error")
            continue
        if p.status == NO_DIGIT:
            lines.append(f"{source:<{width}}  {NO_DIGIT:<14} {'':>6}  {p.reason or ''}".rstrip())
            continue
        answer = p.label if p.status == "ok" or len(p.digits) > 1 else UNCERTAIN
        if len(p.digits) > 1 or (p.digits and p.top == []):
            details = "  ".join(f"{'?' if d.uncertain else d.label} {100 * d.confidence:.1f}%" for d in p.digits)
        else:
            details = "  ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in p.top[:top_k])
        if p.status == UNCERTAIN:
            details += "  (uncertain)"
        lines.append(f"{source:<{width}}  {answer or '':<14} {100 * (p.confidence or 0):5.1f}%  {details}")
    return "\n".join(lines)


def several_digits_hints(predictions: Sequence[Prediction], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[str]:
    """The sources read as one digit, without much confidence, whose ink falls into several digits side by
    side (as ``--multi`` splits it): a number such as "42" read as its first digit. What predict hints at."""
    hinted = []
    for p in predictions:
        if p.status not in ("ok", UNCERTAIN) or len(p.digits) != 1 or (p.confidence or 0.0) >= HINT_BELOW:
            continue
        try:
            several = len(segment_digits(load_grayscale(p.source, max_pixels=max_pixels))) > 1
        except Exception:  # only a hint: an image it cannot split gets none
            several = False
        if several:
            hinted.append(p.source)
    return hinted


def check_options(top_k: int, threshold: float, max_pixels: int) -> None:
    """Refuse out-of-range reading options, naming each as its caller spells it (errors.option)."""
    if top_k < 1:
        raise UserError(f"{option('top_k')} must be a positive integer, got {top_k}")
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"{option('threshold')} must be a probability between 0 and 1, got {threshold}")
    if max_pixels < 1:
        raise UserError(f"{option('max_pixels')} must be a positive integer, got {max_pixels}")
