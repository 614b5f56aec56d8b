"""Metrics on a labelled split: loss, accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    logits: torch.Tensor  # [N, classes], on the CPU
    labels: torch.Tensor  # [N], on the CPU

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def confusion_matrix(self) -> torch.Tensor:
        """Rows: true class; columns: predicted class."""
        k = self.num_classes
        pairs = self.labels * k + self.predictions
        return torch.bincount(pairs, minlength=k * k).reshape(k, k)

    def per_class_accuracy(self) -> list[float]:
        matrix = self.confusion_matrix().double()
        totals = matrix.sum(1).clamp_min(1)
        return (matrix.diagonal() / totals).tolist()

    def most_confident_mistakes(self, count: int) -> torch.Tensor:
        """Indices of wrong predictions, the most confident first."""
        probabilities = self.logits.softmax(1)
        confidence, predicted = probabilities.max(1)
        wrong = (predicted != self.labels).nonzero().flatten()
        order = confidence[wrong].argsort(descending=True)
        return wrong[order[:count]]


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 10000) -> Evaluation:
    """Run ``model`` over already-normalized ``images`` in large batches, without autograd."""
    was_training = model.training
    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunks.append(model(images[start : start + batch_size]).float())
        logits = torch.cat(chunks) if chunks else torch.zeros(0, 10, device=images.device)
        loss = F.cross_entropy(logits, labels, reduction="sum").item() / max(1, len(labels))
        correct = (logits.argmax(1) == labels).sum().item()
    model.train(was_training)
    return Evaluation(
        loss=loss,
        accuracy=correct / max(1, len(labels)),
        logits=logits.cpu(),
        labels=labels.cpu(),
    )


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on its dataset's test set; write the heatmap and mistakes gallery to ``out``.

    ``out`` defaults to an ``evaluation`` folder beside the checkpoint. Returns the report as a dict.
    """
    from . import plots
    from .checkpoint import load_checkpoint
    from .data import load_dataset, normalize
    from .device import configure_cpu, resolve_device
    from .fsutil import ensure_writable_dir, write_json

    torch_device = resolve_device(device)
    configure_cpu()
    checkpoint = load_checkpoint(checkpoint_path, torch_device)
    splits = load_dataset(checkpoint.dataset, data_dir)
    out_dir = Path(out) if out is not None else checkpoint.path.parent / "evaluation"
    ensure_writable_dir(out_dir)
    images = normalize(splits.test_images, checkpoint.mean, checkpoint.std, torch_device)
    result = evaluate(checkpoint.model, images, splits.test_labels.to(torch_device))
    classes = splits.spec.classes
    matrix = result.confusion_matrix()
    mistakes = result.most_confident_mistakes(20)
    confidences = result.logits.softmax(1).max(1).values
    report = {
        "checkpoint": str(checkpoint.path),
        "model": checkpoint.model_name,
        "dataset": checkpoint.dataset,
        "test_size": len(result.labels),
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "errors": int((result.predictions != result.labels).sum()),
        "per_class_accuracy": dict(zip(classes, result.per_class_accuracy(), strict=True)),
        "confusion_matrix": matrix.tolist(),
        "classes": list(classes),
        "files": {"confusion": str(out_dir / "confusion.png"), "mistakes": str(out_dir / "mistakes.png")},
    }
    plots.save_figure(
        plots.confusion_heatmap(matrix, classes, f"Confusion matrix ({result.accuracy:.2%} correct)"),
        out_dir / "confusion.png",
    )
    plots.save_figure(
        plots.digit_grid(
            splits.test_images[mistakes],
            result.labels[mistakes].tolist(),
            result.predictions[mistakes].tolist(),
            classes,
            title=f"The {len(mistakes)} most confident mistakes on the test set",
            confidences=confidences[mistakes].tolist(),
        ),
        out_dir / "mistakes.png",
    )
    write_json(out_dir / "evaluation.json", report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as terminal text: totals, per-class accuracy and the confusion matrix."""
    classes = report["classes"]
    width = max(5, max(len(c) for c in classes))
    lines = [
        f"{report['model']} on {report['dataset']} test set ({report['test_size']:,} images)",
        f"accuracy {100 * report['test_accuracy']:.2f}%  loss {report['test_loss']:.4f}  errors {report['errors']}",
        "",
        "per-class accuracy:",
    ]
    for name, accuracy in report["per_class_accuracy"].items():
        lines.append(f"  {name:>{width}}  {100 * accuracy:6.2f}%")
    lines += ["", "confusion matrix (rows: true, columns: predicted):"]
    cell = max(5, max(len(c) for c in classes) + 1)
    lines.append(" " * (width + 2) + "".join(f"{c[: cell - 1]:>{cell}}" for c in classes))
    for name, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"  {name:>{width}}" + "".join(f"{v:>{cell}}" for v in row))
    lines += ["", f"heatmap: {report['files']['confusion']}", f"mistakes: {report['files']['mistakes']}"]
    return "\n".join(lines)
