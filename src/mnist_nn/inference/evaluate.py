"""Metrics on a labelled split: loss, accuracy, per-class accuracy, confusion matrix, calibration.

Calibration (``models.calibration``): the expected calibration error over 15 confidence bins, the
negative log-likelihood, and a reliability diagram. Each checkpoint's logits are already divided by its
temperature (``load_checkpoint``), so these figures are those of the probabilities predict and serve give.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mnist_nn.core.errors import UserError
from mnist_nn.models.bundled import model_title
from mnist_nn.models.calibration import ECE_BINS, ReliabilityBin, expected_calibration_error, reliability_bins
from mnist_nn.models.scoring import Evaluation, model_outputs

if TYPE_CHECKING:
    from mnist_nn.models.checkpoint import Checkpoint


def shifted_views(images: torch.Tensor) -> list[torch.Tensor]:
    """Test-time augmentation: the batch itself and its four one-pixel shifts (edges repeated)."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    height, width = images.shape[-2:]
    offsets = [(1, 1), (0, 1), (2, 1), (1, 0), (1, 2)]
    return [padded[..., y : y + height, x : x + width] for y, x in offsets]


def zoom_views(pixels: torch.Tensor, zoom: float) -> list[torch.Tensor]:
    """Test-time augmentation for a read image (``Predictor.zoom``): digits [N, 28, 28] as they are,
    enlarged by 1 / (1 - zoom) and shrunk by 1 / (1 + zoom), about the image's centre (bilinear)."""
    views = [pixels]
    for factor in (1 - zoom, 1 + zoom):
        # The sampling grid spans `factor` of the image: below 1 it enlarges the digit, above 1 shrinks it.
        theta = torch.tensor([[factor, 0.0, 0.0], [0.0, factor, 0.0]]).expand(len(pixels), 2, 3)
        grid = F.affine_grid(theta, [len(pixels), 1, *pixels.shape[1:]], align_corners=False)
        views.append(F.grid_sample(pixels.unsqueeze(1), grid, align_corners=False)[:, 0])
    return views


def average_log_probabilities(log_probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """log(mean of the probabilities), computed in log space: exact even where a probability underflows."""
    stacked = torch.stack(list(log_probabilities))
    return torch.logsumexp(stacked, 0) - math.log(len(stacked))


def predict_log_probabilities(
    model: nn.Module, images: torch.Tensor, batch_size: int = 64, tta: bool = False
) -> torch.Tensor:
    """Log class probabilities [N, classes] on the CPU; with ``tta`` of the average over ``shifted_views``.

    Small batches on purpose: a CNN's activations for 2,000 images are hundreds of MB, allocated
    and returned to the system on every batch. With TTA over three cnn-best checkpoints on the CPU,
    batches of 64 took 88 s where 2,000 took 159 s (half of it system time), with the same predictions.
    """

    def score(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        views = shifted_views(batch) if tta else [batch]
        return average_log_probabilities([model(view).float().log_softmax(1) for view in views])

    return model_outputs(model, images, batch_size, score, to_cpu=True)


def evaluation_from_log_probabilities(log_probabilities: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    """Score (averaged) log probabilities: loss is their NLL, accuracy their argmax."""
    labels = labels.cpu()
    return Evaluation(
        loss=F.nll_loss(log_probabilities, labels).item(),
        accuracy=(log_probabilities.argmax(1) == labels).double().mean().item(),
        logits=log_probabilities,
        labels=labels,
    )


def evaluate_checkpoint(
    checkpoint_paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    out: str | os.PathLike | None = None,
    tta: bool = False,
) -> dict[str, Any]:
    """Score one checkpoint, or an ensemble averaging several checkpoints' probabilities, on the test set.

    Writes the confusion heatmap, the gallery of confident mistakes and the reliability diagram to ``out``
    (default: an ``evaluation`` folder beside the first checkpoint; for a bundled model runs/evaluation-NAME,
    never a folder inside the installed package). Returns the report.
    """
    from mnist_nn.core.device import configure_cpu, resolve_device
    from mnist_nn.core.fsutil import ensure_writable_dir, write_json
    from mnist_nn.data.datasets import load_dataset

    paths = [checkpoint_paths] if isinstance(checkpoint_paths, (str, os.PathLike)) else list(checkpoint_paths)
    torch_device = resolve_device(device)
    configure_cpu()
    checkpoints = _load_one_dataset_checkpoints(paths, torch_device)
    splits = load_dataset(checkpoints[0].dataset, data_dir)
    out_dir = Path(out) if out is not None else _default_out_dir(checkpoints[0].path)
    ensure_writable_dir(out_dir)
    members = _member_log_probabilities(checkpoints, splits.test_images, torch_device, tta)
    result = evaluation_from_log_probabilities(average_log_probabilities(members), splits.test_labels)
    report = _evaluation_report(checkpoints, members, result, splits.spec.classes, out_dir, tta)
    _save_evaluation_figures(result, splits.test_images, splits.spec.classes, out_dir)
    _save_reliability_diagram(report, out_dir / "reliability.png")
    write_json(out_dir / "evaluation.json", report)
    return report


def _default_out_dir(checkpoint: Path) -> Path:
    """An ``evaluation`` folder beside a checkpoint; runs/evaluation-NAME for a bundled model, whose own folder
    is the installed package (read-only for many users, and not theirs to fill)."""
    from mnist_nn.models.bundled import bundled_name

    name = bundled_name(checkpoint)
    return Path("runs") / f"evaluation-{name}" if name else checkpoint.parent / "evaluation"


def _load_one_dataset_checkpoints(paths: Sequence[str | os.PathLike], torch_device: torch.device) -> list[Checkpoint]:
    """Load every checkpoint; an ensemble's members must share a dataset, else their classes would not line up."""
    from mnist_nn.models.checkpoint import load_checkpoint

    checkpoints = [load_checkpoint(path, torch_device) for path in paths]
    datasets = {c.dataset for c in checkpoints}
    if len(datasets) > 1:
        listing = ", ".join(f"{c.path} ({c.dataset})" for c in checkpoints)
        raise UserError(f"an ensemble needs checkpoints of one dataset, got {listing}")
    return checkpoints


def _member_log_probabilities(
    checkpoints: Sequence[Checkpoint], test_images: torch.Tensor, torch_device: torch.device, tta: bool
) -> list[torch.Tensor]:
    """Each member's log probabilities on the test images, normalized with that member's own mean and std.

    Members trained with the same statistics share one normalized copy of the test set.
    """
    from mnist_nn.data.datasets import normalize

    inputs: dict[tuple[float, float], torch.Tensor] = {}
    members = []
    for checkpoint in checkpoints:
        key = (checkpoint.mean, checkpoint.std)
        if key not in inputs:
            inputs[key] = normalize(test_images, *key, torch_device)
        members.append(predict_log_probabilities(checkpoint.model, inputs[key], tta=tta))
    return members


def _evaluation_report(
    checkpoints: Sequence[Checkpoint],
    members: Sequence[torch.Tensor],
    result: Evaluation,
    classes: Sequence[str],
    out_dir: Path,
    tta: bool,
) -> dict[str, Any]:
    """The JSON report of an evaluation; an ensemble's also carries each member's own accuracy."""
    matrix = result.confusion_matrix()
    first = checkpoints[0]
    name = model_title(first.path, first.model_name) if len(checkpoints) == 1 else f"ensemble of {len(checkpoints)}"
    report = {
        "checkpoint": str(checkpoints[0].path) if len(checkpoints) == 1 else [str(c.path) for c in checkpoints],
        "model": name + (" with TTA" if tta else ""),
        "dataset": checkpoints[0].dataset,
        "tta": tta,
        "test_size": len(result.labels),
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "errors": int((result.predictions != result.labels).sum()),
        **_calibration_report(checkpoints, result),
        "per_class_accuracy": dict(zip(classes, result.per_class_accuracy(), strict=True)),
        "confusion_matrix": matrix.tolist(),
        "most_confused": most_confused(matrix.tolist(), classes),
        "classes": list(classes),
        "files": {
            "confusion": str(out_dir / "confusion.png"),
            "mistakes": str(out_dir / "mistakes.png"),
            "reliability": str(out_dir / "reliability.png"),
        },
    }
    if len(checkpoints) > 1:
        report["member_accuracy"] = {
            str(c.path): evaluation_from_log_probabilities(p, result.labels).accuracy
            for c, p in zip(checkpoints, members, strict=True)
        }
    return report


def _calibration_report(checkpoints: Sequence[Checkpoint], result: Evaluation) -> dict[str, Any]:
    """ECE (15 bins), NLL, each checkpoint's temperature, and the reliability diagram's bins."""
    probabilities = result.logits.exp()  # the (averaged) log-probabilities of evaluation_from_log_probabilities
    temperatures = [c.temperature for c in checkpoints]
    return {
        "ece": expected_calibration_error(probabilities, result.labels),
        "ece_bins": ECE_BINS,
        "nll": result.loss,
        "temperature": temperatures[0] if len(temperatures) == 1 else temperatures,
        "reliability": [b.to_dict() for b in reliability_bins(probabilities, result.labels)],
    }


def _save_reliability_diagram(report: dict[str, Any], path: Path) -> None:
    """Accuracy against confidence per bin (Guo et al.'s figure): bars on the diagonal are calibrated."""
    from mnist_nn.core import plots

    bins = [ReliabilityBin(**row) for row in report["reliability"]]
    figure, (top, bottom) = plots.plt.subplots(
        2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = 1 / len(bins)
    centres = [(b.lower + b.upper) / 2 for b in bins]
    filled = [b for b in bins if b.count]
    top.bar([(b.lower + b.upper) / 2 for b in filled], [b.accuracy for b in filled], width=width, edgecolor="black",
            color="tab:blue", label="accuracy")  # fmt: skip
    # Each bin's gap between accuracy and mean confidence, hatched: above the bar (under-confident) or inside it.
    top.bar([(b.lower + b.upper) / 2 for b in filled], [abs(b.confidence - b.accuracy) for b in filled], width=width,
            bottom=[min(b.accuracy, b.confidence) for b in filled], facecolor="none", edgecolor="tab:red",
            hatch="//", label="gap to mean confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="calibrated")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"{report['model']}: ECE {100 * report['ece']:.2f}% ({len(bins)} bins), NLL {report['nll']:.4f}")
    top.legend(loc="upper left")
    bottom.bar(centres, [b.count for b in bins], width=width, edgecolor="black", color="tab:gray")
    bottom.set(xlabel="confidence (the best class's probability)", ylabel="digits", yscale="symlog")
    plots.save_figure(figure, path)


def _save_evaluation_figures(
    result: Evaluation, test_images: torch.Tensor, classes: Sequence[str], out_dir: Path
) -> None:
    """Write the confusion heatmap and the gallery of the 20 most confident mistakes into ``out_dir``."""
    from mnist_nn.core import plots

    matrix = result.confusion_matrix()
    mistakes = result.most_confident_mistakes(20)
    plots.save_figure(
        plots.confusion_heatmap(matrix, classes, f"Confusion matrix ({result.accuracy:.2%} correct)"),
        out_dir / "confusion.png",
    )
    plots.save_figure(
        plots.digit_grid(
            test_images[mistakes],
            result.labels[mistakes].tolist(),
            result.predictions[mistakes].tolist(),
            classes,
            title=f"The {len(mistakes)} most confident mistakes on the test set",
            confidences=result.logits[mistakes].exp().max(1).values.tolist(),
        ),
        out_dir / "mistakes.png",
    )


MOST_CONFUSED = 10


def most_confused(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], top: int = MOST_CONFUSED, min_count: int = 1
) -> list[dict[str, Any]]:
    """The pairs of classes most often mistaken, as fastai's ``most_confused``: off-diagonal cells, largest first.

    ``matrix[i][j]`` counts images of class i predicted as j. Returns up to ``top`` entries
    ``{"true", "predicted", "count"}`` with a count of at least ``min_count``; ties keep class order.
    """
    pairs = [
        (int(count), i, j)
        for i, row in enumerate(matrix)
        for j, count in enumerate(row)
        if i != j and count >= min_count
    ]
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": count} for count, i, j in pairs[:top]]


def format_report(report: dict[str, Any]) -> str:
    """The report as terminal text: totals, per-class accuracy, the confusion matrix, the most confused pairs."""
    classes = report["classes"]
    width = max(5, max(len(c) for c in classes))
    lines = [
        f"{report['model']} on {report['dataset']} test set ({report['test_size']:,} images)",
        f"accuracy {100 * report['test_accuracy']:.2f}%  loss {report['test_loss']:.4f}  errors {report['errors']}",
    ]
    if "ece" in report:  # an evaluation.json written before calibration was measured has none
        lines.append(
            f"calibration: ECE {100 * report['ece']:.2f}% ({report['ece_bins']} bins)  NLL {report['nll']:.4f}  "
            f"temperature {_temperatures(report['temperature'])}"
        )
    for path, accuracy in report.get("member_accuracy", {}).items():
        lines.append(f"  member {path}: {100 * accuracy:.2f}%")
    lines += ["", "per-class accuracy:"]
    for name, accuracy in report["per_class_accuracy"].items():
        lines.append(f"  {name:>{width}}  {100 * accuracy:6.2f}%")
    lines += ["", "confusion matrix (rows: true, columns: predicted):"]
    cell = max(5, max(len(c) for c in classes) + 1)
    lines.append(" " * (width + 2) + "".join(f"{c[: cell - 1]:>{cell}}" for c in classes))
    for name, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"  {name:>{width}}" + "".join(f"{v:>{cell}}" for v in row))
    confused = report.get("most_confused", [])
    if confused:
        lines += ["", "most confused (true -> predicted: images):"]
        lines += [f"  {p['true']:>{width}} -> {p['predicted']:<{width}}  {p['count']:>5}" for p in confused]
    files = report["files"]
    lines += ["", f"heatmap: {files['confusion']}", f"mistakes: {files['mistakes']}"]
    if "reliability" in files:
        lines.append(f"reliability diagram: {files['reliability']}")
    return "\n".join(lines)


def _temperatures(value: float | list[float]) -> str:
    return ", ".join(f"{t:.4g}" for t in value) if isinstance(value, list) else f"{value:.4g}"
