"""``mnist-nn calibrate``: fit a checkpoint's temperature on held-out digits and write it into the checkpoint.

Which digits: the validation split its recipe held out (``val_size`` training digits, chosen by its
``seed`` exactly as training chose them), which the model never trained on. A checkpoint whose recipe
held nothing out (the tutorial's and the bundled robust model's train on all 60,000) is fitted on the
``HOLDOUT`` training digits that ``--val-size 5000`` would have held out: the model has seen those, so
the temperature is fitted where it is a little surer than on new digits. Never the test set: that is
where calibration is measured (``mnist-nn evaluate``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mnist_nn.core.errors import UserError, option
from mnist_nn.models.calibration import fit_temperature
from mnist_nn.models.scoring import model_outputs

HOLDOUT = 5000


def calibration_split(recipe: dict[str, Any], train_size: int) -> tuple[torch.Tensor, str]:
    """The training-set indices to fit a temperature on, and what they are, in words."""
    from mnist_nn.data.datasets import split_indices

    seed = int(recipe.get("seed") or 0)
    val_size = int(recipe.get("val_size") or 0)
    if 0 < val_size < train_size:
        return split_indices(train_size, val_size, seed)[1], "validation"
    return split_indices(train_size, min(HOLDOUT, train_size - 1), seed)[1], "training (no validation split)"


def calibrate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fit the temperature of ``checkpoint`` (a model.pt or a bundled name) and write it into the file, or
    into a copy at ``out``. Labels never change. Returns the calibration record and where it was written."""
    from mnist_nn.core.device import configure_cpu, resolve_device
    from mnist_nn.data.datasets import load_dataset, normalize
    from mnist_nn.models.bundled import bundled_name
    from mnist_nn.models.checkpoint import load_checkpoint, write_calibration

    loaded = load_checkpoint(checkpoint, resolve_device(device))
    target = Path(out) if out is not None else loaded.path
    if out is None and bundled_name(loaded.path) is not None:
        raise UserError(
            f"{bundled_name(loaded.path)} is a bundled model (already calibrated); write the result elsewhere "
            f"with {option('out', metavar='FILE')}"
        )
    if target.is_dir() or not target.parent.is_dir():
        raise UserError(f"output {target}: give a file in an existing folder")
    configure_cpu()
    splits = load_dataset(loaded.dataset, data_dir)
    index, split = calibration_split(loaded.recipe, len(splits.train_labels))
    device_of = next(loaded.network.parameters()).device
    images = normalize(splits.train_images[index], loaded.mean, loaded.std, device_of)
    logits = model_outputs(loaded.network, images, 1000, to_cpu=True)  # bare logits: the fit replaces any old T
    record = fit_temperature(logits, splits.train_labels[index]).record(split)
    try:
        written = write_calibration(loaded.path, record, target)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or type(exc).__name__}") from None
    return {"checkpoint": str(written), "dataset": loaded.dataset, **record}


def format_calibration(report: dict[str, Any]) -> str:
    """One line: the temperature, and what it did to the NLL and the ECE on the digits it was fitted on."""
    return (
        f"temperature {report['temperature']:.4g} fitted on {report['images']:,} {report['fitted_on']} digits: "
        f"NLL {report['nll_before']:.4f} -> {report['nll_after']:.4f}, ECE {100 * report['ece_before']:.2f}% -> "
        f"{100 * report['ece_after']:.2f}%; written to {report['checkpoint']}"
    )
