"""PNG figures, drawn headless (Agg); ``show`` opens them in a window as the tutorial did."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

if not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from mnist_nn.core.fsutil import atomic_write


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def loss_curve(history: Sequence[dict], eval_split: str) -> Figure:
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss (mean over batches)")
    axes.plot(epochs, [row["eval_loss"] for row in history], marker="s", label=f"{eval_split} loss")
    axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def accuracy_curve(history: Sequence[dict], eval_split: str) -> Figure:
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(epochs, [100 * row["eval_accuracy"] for row in history], marker="o", color="tab:green")
    axes.set(xlabel="epoch", ylabel=f"{eval_split} accuracy (%)", title=f"{eval_split.capitalize()} accuracy per epoch")
    axes.grid(alpha=0.3)
    return figure


def digit_grid(
    images: torch.Tensor,
    labels: Sequence[int],
    predictions: Sequence[int],
    classes: Sequence[str],
    title: str,
    confidences: Sequence[float] | None = None,
    columns: int = 5,
) -> Figure:
    """Digits (uint8 [N, 28, 28]) with true and predicted labels; wrong ones in red."""
    count = len(images)
    rows = max(1, -(-count // columns))
    figure, axes_grid = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.4 * rows), squeeze=False)
    for index, axes in enumerate(axes_grid.flat):
        axes.axis("off")
        if index >= count:
            continue
        axes.imshow(images[index].numpy(), cmap="gray", vmin=0, vmax=255)
        true, predicted = int(labels[index]), int(predictions[index])
        text = f"true: {classes[true]}\npred: {classes[predicted]}"
        if confidences is not None:
            text += f" ({100 * confidences[index]:.0f}%)"
        axes.set_title(text, fontsize=9, color="tab:green" if true == predicted else "tab:red")
    figure.suptitle(title)
    return figure


def confusion_heatmap(matrix: torch.Tensor, classes: Sequence[str], title: str) -> Figure:
    k = len(classes)
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(matrix.numpy(), cmap="Blues")
    figure.colorbar(image, ax=axes, label="test images")
    axes.set_xticks(range(k), classes, rotation=45 if max(len(c) for c in classes) > 2 else 0, ha="right")
    axes.set_yticks(range(k), classes)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    threshold = matrix.max().item() / 2
    for i in range(k):
        for j in range(k):
            value = int(matrix[i, j])
            color = "white" if value > threshold else "black"
            axes.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    return figure


def show_saved(paths: Sequence[Path]) -> None:
    """Open saved PNGs in windows (needs a display and an interactive matplotlib backend)."""
    plt.switch_backend(os.environ.get("MNIST_NN_SHOW_BACKEND", "TkAgg"))
    for path in paths:
        figure = plt.figure()
        figure.figimage(plt.imread(path))
        if figure.canvas.manager is not None:
            figure.canvas.manager.set_window_title(Path(path).name)
    plt.show()
