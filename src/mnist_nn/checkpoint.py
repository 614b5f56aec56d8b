"""Checkpoints: weights plus everything needed to rebuild and judge the model.

Saved atomically; loaded with ``weights_only=True`` so a file can hold only
tensors and plain containers, never code to run.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .fsutil import atomic_write
from .models import build_model
from .version import __version__

FORMAT = "mnist-nn-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model and its metadata."""

    path: Path
    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    dataset: str
    mean: float
    std: float
    recipe: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    dataset: str,
    mean: float,
    std: float,
    recipe: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> Path:
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mnist_nn_version": __version__,
        "model": {"name": model_name, "kwargs": model_kwargs},
        "dataset": dataset,
        "normalization": {"mean": mean, "std": std},
        "recipe": recipe,
        "metrics": metrics or {},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> Checkpoint:
    """Load and check a checkpoint written by ``save_checkpoint``; every failure is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found" if not path.exists() else f"checkpoint {path} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes; the errors below say it all
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's code: never.
        raise UserError(
            f"{path}: refused: not a plain mnist-nn checkpoint (it holds objects other than tensors and "
            "plain data, which could run code when loaded)"
        ) from None
    except Exception as exc:  # arbitrary bytes make the unpickler fail in arbitrary ways
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable checkpoint (corrupt or truncated: {reason[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not an mnist-nn checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format {payload.get('format_version')} is not supported by "
            f"mnist-nn {__version__} (it reads format {FORMAT_VERSION})"
        )
    try:
        model_name = payload["model"]["name"]
        model_kwargs = dict(payload["model"]["kwargs"])
        normalization = payload["normalization"]
        mean, std = float(normalization["mean"]), float(normalization["std"])
        dataset, recipe, state_dict = payload["dataset"], payload["recipe"], payload["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: incomplete mnist-nn checkpoint (missing or bad {exc})") from None
    model = build_model(model_name, **model_kwargs)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit model {model_name!r} ({first[:200]})") from None
    model.to(device).eval()
    return Checkpoint(
        path=path,
        model=model,
        model_name=model_name,
        model_kwargs=model_kwargs,
        dataset=dataset,
        mean=mean,
        std=std,
        recipe=recipe,
        metrics=payload.get("metrics", {}),
    )
