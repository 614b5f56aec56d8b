"""Look inside a trained network: what its first layer looks for, how a digit flows through it, and how it
arranges digits in its last hidden layer.

``inspect_checkpoint`` writes three pictures (``mnist-nn inspect CHECKPOINT``):

- ``weights.png``: the first layer's weights as pictures. Each unit of an MLP's first Linear layer
  weighs the 784 pixels, so its row is a 28x28 image: red where ink raises the unit's input, blue
  where ink lowers it. A CNN's first convolution shows its small filters the same way.
- ``activations.png``: one test digit, the network's probabilities for it, and the output of every
  activation (ReLU) layer for it, captured with forward hooks: vectors as heatmaps, a convolution's
  output as its feature maps.
- ``features.png``: the inputs of the last layer (the penultimate features) for 2,000 test digits,
  mapped to 2-D by PCA (a linear projection) and t-SNE (which keeps neighbours together), coloured
  by label. A trained network puts each class in its own cluster.

(The module is not called ``inspect``: that would shadow the standard library's module of that name.)
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from mnist_nn.core.errors import UserError, option

if TYPE_CHECKING:
    from mnist_nn.data.datasets import Splits
    from mnist_nn.models.checkpoint import Checkpoint

FEATURE_DIGITS = 2000
# Feature vectors wider than this are reduced by PCA before t-SNE, as scikit-learn advises: the neighbours
# hardly change and t-SNE's distances cost less.
TSNE_INPUT_DIMS = 50
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Softplus)
MAX_MAPS = 16  # feature maps shown per convolutional layer


def require_scikit_learn() -> None:
    """PCA and t-SNE come from scikit-learn, an optional dependency: a one-line error says how to get it."""
    if find_spec("sklearn") is None:
        raise UserError('`mnist-nn inspect` needs scikit-learn for its feature map: pip install "mnist-nn[lab]"')


@dataclass
class Layer:
    """One activation layer's output for the digit, and the layers that led to it since the previous one."""

    title: str
    values: torch.Tensor  # [C, H, W] feature maps, or [N] values

    @property
    def active(self) -> float:
        """The fraction of its values above zero (for ReLU: the units that fire)."""
        return float((self.values > 0).float().mean())


# --------------------------------------------------------------------------- capturing with hooks


@contextlib.contextmanager
def record_leaf_outputs(model: nn.Module) -> Iterator[list[tuple[nn.Module, torch.Tensor]]]:
    """Forward hooks on every leaf module: (module, output) in the order the forward pass calls them."""
    calls: list[tuple[nn.Module, torch.Tensor]] = []
    leaves = [module for module in model.modules() if not any(module.children())]
    handles = [leaf.register_forward_hook(lambda m, _i, out: calls.append((m, out.detach()))) for leaf in leaves]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def describe(module: nn.Module) -> str:
    """A layer in a few words, for figure titles."""
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}→{module.out_features}"
    if isinstance(module, nn.Conv2d):
        stride = f" stride {module.stride[0]}" if module.stride[0] > 1 else ""
        k = module.kernel_size
        return f"Conv {k[0]}x{k[1]} {module.in_channels}→{module.out_channels}{stride}"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "BatchNorm"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return "Pool"
    return type(module).__name__


def activation_layers(model: nn.Module, image: torch.Tensor) -> tuple[list[Layer], torch.Tensor]:
    """Every activation layer's output for one normalized image [1, 1, 28, 28], and the model's logits [K]."""
    model.eval()
    with torch.inference_mode(), record_leaf_outputs(model) as calls:
        logits = model(image)[0].float()
    layers, since = [], []
    for module, output in calls:
        # Flatten reshapes and Dropout is the identity in eval mode: neither says anything about the digit.
        if not isinstance(module, (nn.Flatten, nn.Dropout)):
            since.append(describe(module))
        if isinstance(module, ACTIVATIONS):
            layers.append(Layer(f"layer {len(layers) + 1}: {' + '.join(since)}", output[0].float().cpu()))
            since = []
    return layers, logits.cpu()


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no Linear layer whose inputs could be mapped")
    return linears[-1]


def penultimate_features(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The inputs of the model's last Linear layer for ``images`` (a forward pre-hook), as [N, D] on the CPU."""
    from mnist_nn.models.scoring import model_outputs

    captured: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach()))

    def features(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        captured.clear()
        model(batch)
        return captured[0].flatten(1).float()

    try:
        return model_outputs(model, images, batch_size, score=features, to_cpu=True)
    finally:
        handle.remove()


def first_layer(model: nn.Module) -> nn.Linear | nn.Conv2d:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            return module
    raise UserError(f"{type(model).__name__} has no Linear or Conv2d layer to show")


# --------------------------------------------------------------------------- the 2-D maps


def feature_maps(features: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """PCA and t-SNE coordinates [N, 2] of the features, and the share of the variance PCA's two axes keep."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    pca = PCA(n_components=2, random_state=seed).fit(features)
    reduced = features
    if features.shape[1] > TSNE_INPUT_DIMS and len(features) > TSNE_INPUT_DIMS:
        reduced = PCA(n_components=TSNE_INPUT_DIMS, random_state=seed).fit_transform(features)
    # Barnes-Hut t-SNE with 500 iterations (scikit-learn's default is 1,000): 2,000 points settle into
    # their clusters well before that. Perplexity 30 is the usual neighbourhood.
    perplexity = min(30.0, (len(features) - 1) / 3)
    tsne = TSNE(
        n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=500, random_state=seed
    )
    # One thread: scikit-learn's OpenMP threads contend with PyTorch's, which stay spinning after the
    # forward passes; on 2 cores that made t-SNE 6x slower (17 s against 2.8 s for 2,000 points).
    with threadpool_limits(limits=1):
        coordinates = tsne.fit_transform(reduced)
    return {"pca": pca.transform(features), "pca_variance": pca.explained_variance_ratio_.tolist(), "tsne": coordinates}


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """How far apart the classes lie (-1 to 1; higher: each digit nearer its own class than any other)."""
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(points, labels))


# --------------------------------------------------------------------------- figures


def _grid(count: int, max_columns: int = 32) -> tuple[int, int]:
    columns = min(max_columns, max(1, math.ceil(math.sqrt(2 * count))))
    return math.ceil(count / columns), columns


def weights_figure(layer: nn.Linear | nn.Conv2d, model_name: str) -> Figure:
    """The first layer's weights as pictures on one diverging scale centred on 0 (red +, blue -)."""
    import matplotlib.pyplot as plt

    weight = layer.weight.detach().float().cpu()
    if isinstance(layer, nn.Linear):
        side = math.isqrt(layer.in_features)
        if side * side != layer.in_features:
            raise UserError(f"the first layer takes {layer.in_features} inputs, not a square image")
        tiles, what = weight.reshape(-1, side, side), f"its {len(weight)} units' weights on the {side}x{side} pixels"
    else:
        tiles = weight[:, 0]
        k = tuple(layer.kernel_size)
        what = f"its {len(weight)} convolution filters ({k[0]}x{k[1]})"
    rows, columns = _grid(len(tiles))
    # One scale for all, so that weak units look weak; the 99.5th percentile keeps a few large weights from
    # washing the rest out.
    limit = float(torch.quantile(tiles.abs().flatten(), 0.995)) or 1.0
    figure, axes_grid = plt.subplots(
        rows,
        columns,
        figsize=(0.6 * columns + 1.2, 0.6 * rows + 0.6),
        squeeze=False,
        gridspec_kw={"wspace": 0.06, "hspace": 0.06},
    )
    image = None
    for index, axes in enumerate(axes_grid.flat):
        axes.axis("off")
        if index < len(tiles):
            image = axes.imshow(tiles[index].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    figure.suptitle(f"First layer of {model_name}: {what}")
    figure.colorbar(image, ax=axes_grid, fraction=0.03, pad=0.02, label="weight (red: ink here raises the unit)")
    return figure


def activations_figure(
    digit: torch.Tensor, label: str, logits: torch.Tensor, layers: Sequence[Layer], classes: Sequence[str]
) -> Figure:
    """The digit and the network's probabilities, then one row per activation layer."""
    import matplotlib.pyplot as plt

    # Feature maps need less height than a heatmap of values with its colour bar.
    heights = [2.2] + [1.3 if layer.values.dim() == 3 else 1.6 for layer in layers]
    figure = plt.figure(figsize=(12, sum(heights)), layout="constrained")
    rows = figure.subfigures(len(heights), 1, height_ratios=heights)
    probabilities = logits.softmax(0)
    top = int(probabilities.argmax())
    image_axes, bar_axes = rows[0].subplots(1, 2, width_ratios=[1, 4])
    image_axes.imshow(digit.numpy(), cmap="gray", vmin=0, vmax=255)
    image_axes.set_title(f"test digit, label {label}", fontsize=9)
    image_axes.axis("off")
    colours = ["tab:green" if i == top else "tab:blue" for i in range(len(classes))]
    bar_axes.bar(range(len(classes)), 100 * probabilities.numpy(), color=colours)
    bar_axes.set_xticks(range(len(classes)), classes, fontsize=8)
    bar_axes.set(ylim=(0, 100), ylabel="%")
    bar_axes.set_title(f"output: answers {classes[top]} ({100 * probabilities[top]:.1f}%)", fontsize=9)
    for row, layer in zip(rows[1:], layers, strict=True):
        _draw_layer(row, layer)
    return figure


def _draw_layer(row: Any, layer: Layer) -> None:
    values = layer.values
    active = f"{100 * layer.active:.0f}% above 0"
    if values.dim() == 3:
        shown = min(MAX_MAPS, len(values))
        axes_row = row.subplots(1, MAX_MAPS)
        for index, axes in enumerate(axes_row):
            axes.axis("off")
            if index < shown:
                axes.imshow(values[index].numpy(), cmap="magma")
        size = f"{values.shape[1]}x{values.shape[2]}"
        row.suptitle(f"{layer.title}: {len(values)} maps of {size} ({shown} shown), {active}", fontsize=9)
        return
    flat = values.flatten()
    # Rows of a power of two, about twice as wide as tall: 128 values as 8 x 16, 256 as 8 x 32, 64 as 4 x 16.
    columns = 2 ** math.ceil(math.log2(math.sqrt(2 * len(flat))))
    grid = np.full(math.ceil(len(flat) / columns) * columns, np.nan)
    grid[: len(flat)] = flat.numpy()
    axes = row.subplots(1, 1)
    image = axes.imshow(grid.reshape(-1, columns), cmap="magma", aspect="auto")
    axes.set_xticks([])
    axes.set_yticks([])
    row.colorbar(image, ax=axes, shrink=0.8)
    row.suptitle(f"{layer.title}: {len(flat)} values, in rows of {columns}, {active}", fontsize=9)


def features_figure(maps: dict[str, Any], labels: np.ndarray, classes: Sequence[str], dims: int) -> Figure:
    """The two maps side by side, one colour per class, each class's name at its median point."""
    import matplotlib.pyplot as plt

    figure, (pca_axes, tsne_axes) = plt.subplots(1, 2, figsize=(13, 6), layout="constrained")
    variance = 100 * sum(maps["pca_variance"])
    titles = {
        "pca": f"PCA: the two directions of most variance ({variance:.0f}% of it)",
        "tsne": "t-SNE: near neighbours stay near",
    }
    colours = plt.get_cmap("tab10")
    for key, axes in (("pca", pca_axes), ("tsne", tsne_axes)):
        points = maps[key]
        for index, name in enumerate(classes):
            mine = points[labels == index]
            axes.scatter(mine[:, 0], mine[:, 1], s=5, color=colours(index % 10), label=name, alpha=0.7)
            if len(mine):
                x, y = np.median(mine, axis=0)
                axes.text(
                    x,
                    y,
                    name,
                    fontsize=12,
                    weight="bold",
                    ha="center",
                    va="center",
                    bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.7, "linewidth": 0},
                )
        axes.set_title(titles[key], fontsize=10)
        axes.set_xticks([])
        axes.set_yticks([])
    tsne_axes.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    figure.suptitle(f"The penultimate layer's {dims} values for {len(labels):,} test digits, coloured by label")
    return figure


# --------------------------------------------------------------------------- the command


def inspect_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    index: int = 0,
    feature_digits: int = FEATURE_DIGITS,
) -> dict[str, Any]:
    """Write weights.png, activations.png, features.png and inspection.json; return the report."""
    from mnist_nn.core import plots
    from mnist_nn.core.device import configure_cpu
    from mnist_nn.core.fsutil import ensure_writable_dir, write_json
    from mnist_nn.data.datasets import load_dataset
    from mnist_nn.models.checkpoint import load_checkpoint

    require_scikit_learn()
    configure_cpu()
    loaded = load_checkpoint(checkpoint)
    splits = load_dataset(loaded.dataset, data_dir)
    test_size = len(splits.test_labels)
    if not 0 <= index < test_size:
        raise UserError(f"{option('index')} must be between 0 and {test_size - 1}, got {index}")
    out_dir = ensure_writable_dir(Path(out) if out is not None else loaded.path.parent / "inspection")
    files = {name: out_dir / f"{name}.png" for name in ("weights", "activations", "features")}

    layer = first_layer(loaded.model)
    plots.save_figure(weights_figure(layer, loaded.model_name), files["weights"])
    digit, layers = _inspect_digit(loaded, splits, index, files["activations"])
    features = _inspect_features(loaded, splits, feature_digits, files["features"])

    report = {
        "checkpoint": str(loaded.path),
        "model": loaded.model_name,
        "dataset": loaded.dataset,
        "first_layer": {"layer": describe(layer), "pictures": int(layer.weight.shape[0])},
        "digit": digit,
        "layers": [{"layer": item.title, "shape": list(item.values.shape), "active": item.active} for item in layers],
        "features": features,
        "files": {name: str(path) for name, path in files.items()},
    }
    write_json(out_dir / "inspection.json", report)
    return report


def _inspect_digit(loaded: Checkpoint, splits: Splits, index: int, path: Path) -> tuple[dict[str, Any], list[Layer]]:
    """Draw test digit ``index`` through the network's activation layers into ``path``.

    Returns the report's ``digit`` entry (label, the network's answer and its confidence) and the layers drawn.
    """
    from mnist_nn.core import plots
    from mnist_nn.data.datasets import normalize

    classes = splits.spec.classes
    digit = splits.test_images[index]
    layers, logits = activation_layers(loaded.model, normalize(digit[None], loaded.mean, loaded.std, "cpu"))
    label = classes[int(splits.test_labels[index])]
    plots.save_figure(activations_figure(digit, label, logits, layers, classes), path)
    entry = {
        "index": index,
        "label": label,
        "answer": classes[int(logits.argmax())],
        "confidence": float(logits.softmax(0).max()),
    }
    return entry, layers


def _inspect_features(loaded: Checkpoint, splits: Splits, feature_digits: int, path: Path) -> dict[str, Any]:
    """Map the penultimate layer of the first ``feature_digits`` test digits by PCA and t-SNE into ``path``.

    Returns the report's ``features`` entry; the silhouettes are None when the digits hold a single class,
    where class separation means nothing.
    """
    from mnist_nn.core import plots
    from mnist_nn.data.datasets import normalize

    count = min(feature_digits, len(splits.test_labels))
    images = normalize(splits.test_images[:count], loaded.mean, loaded.std, "cpu")
    features = penultimate_features(loaded.model, images).numpy()
    labels = splits.test_labels[:count].numpy()
    maps = feature_maps(features)
    plots.save_figure(features_figure(maps, labels, splits.spec.classes, features.shape[1]), path)
    return {
        "digits": count,
        "dims": int(features.shape[1]),
        "pca_variance": maps["pca_variance"],
        "silhouette": silhouette(features, labels) if len(set(labels.tolist())) > 1 else None,
        "tsne_silhouette": silhouette(maps["tsne"], labels) if len(set(labels.tolist())) > 1 else None,
    }


def format_report(report: dict[str, Any]) -> str:
    first = report["first_layer"]
    digit = report["digit"]
    features = report["features"]
    files = report["files"]
    lines = [
        f"{report['model']} ({report['dataset']}), {report['checkpoint']}",
        f"  {files['weights']}: the first layer ({first['layer']}) as {first['pictures']} pictures",
        f"  {files['activations']}: test digit {digit['index']} (label {digit['label']}, answered {digit['answer']} "
        f"at {100 * digit['confidence']:.1f}%) through {len(report['layers'])} activation layers",
    ]
    for layer in report["layers"]:
        lines.append(f"      {layer['layer']}: {100 * layer['active']:.0f}% above 0")
    separation = (
        "" if features["silhouette"] is None else f"; class separation (silhouette) {features['silhouette']:.2f}"
    )
    lines.append(
        f"  {files['features']}: the penultimate layer ({features['dims']} values) of {features['digits']:,} test "
        f"digits by PCA ({100 * sum(features['pca_variance']):.0f}% of the variance) and t-SNE{separation}"
    )
    return "\n".join(lines)
