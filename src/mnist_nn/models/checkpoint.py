"""Checkpoints: weights plus everything needed to rebuild and judge the model.

Two kinds of file, both saved atomically and loaded with ``weights_only=True``
so a file can hold only tensors and plain containers, never code to run:

- ``model.pt`` (``save_checkpoint``): the weights a user evaluates, with their ``CheckpointMeta``.
- ``state.pt`` (``TrainState``): everything the training loop needs to continue bitwise-identically
  (weights, optimizer, EMA, RNG states, position, history); ``load_checkpoint`` also accepts it, so the
  last good state of an interrupted or diverged run can be evaluated like a finished model.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import torch
from torch import nn

from mnist_nn.core.errors import UserError
from mnist_nn.core.fsutil import atomic_write
from mnist_nn.core.version import __version__
from mnist_nn.models.bundled import resolve_model
from mnist_nn.models.calibration import TemperatureScaled, check_temperature
from mnist_nn.models.networks import build_model

FORMAT = "mnist-nn-checkpoint"
FORMAT_VERSION = 1
STATE_FORMAT = "mnist-nn-train-state"
STATE_FORMAT_VERSION = 1
# The most parameters a checkpoint's metadata may ask for: 400 MB of float32, 50 times the largest registered
# model (the mlp's 1.9 M). Checked before anything is built, so a file cannot make a loader allocate gigabytes.
MAX_PARAMETERS = 100_000_000
# The longest list a model's kwargs may hold (layer widths, channels): building 10^6 layers would take minutes.
MAX_KWARG_ITEMS = 100


@dataclass
class CheckpointMeta:
    """What a ``model.pt`` says about its weights (every ``state.pt`` carries it too): enough to rebuild
    the model, to feed it inputs normalized as in training, and to scale its logits to calibrated
    probabilities (``calibration``: {"temperature", and how it was fitted}; empty: T = 1)."""

    model_name: str
    model_kwargs: dict[str, Any]
    dataset: str
    mean: float
    std: float
    recipe: dict[str, Any]
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"name": self.model_name, "kwargs": self.model_kwargs},
            "dataset": self.dataset,
            "normalization": {"mean": self.mean, "std": self.std},
            "recipe": self.recipe,
            "calibration": self.calibration,
            "mnist_nn_version": __version__,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> CheckpointMeta:
        """Raises KeyError, TypeError or ValueError for a field that is missing or of the wrong kind."""
        normalization = payload["normalization"]
        return cls(
            model_name=payload["model"]["name"],
            model_kwargs=dict(payload["model"]["kwargs"]),
            dataset=payload["dataset"],
            mean=float(normalization["mean"]),
            std=float(normalization["std"]),
            recipe=payload["recipe"],
            calibration=dict(payload.get("calibration") or {}),
        )


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model and its metadata.

    ``model`` is the network inside a ``TemperatureScaled``: its logits are the calibrated ones (divided by
    the checkpoint's temperature), for every consumer alike; ``network`` is the bare network.
    """

    path: Path
    model: nn.Module
    meta: CheckpointMeta
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.meta.model_name

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return self.meta.model_kwargs

    @property
    def dataset(self) -> str:
        return self.meta.dataset

    @property
    def mean(self) -> float:
        return self.meta.mean

    @property
    def std(self) -> float:
        return self.meta.std

    @property
    def recipe(self) -> dict[str, Any]:
        return self.meta.recipe

    @property
    def temperature(self) -> float:
        return self.meta.temperature

    @property
    def network(self) -> nn.Module:
        return self.model.network if isinstance(self.model, TemperatureScaled) else self.model


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta, metrics: dict[str, Any] | None = None
) -> Path:
    """Write ``model.pt``: the weights (on the CPU), their metadata and ``metrics``, atomically.

    A loaded checkpoint's ``model`` is saved as its bare network: the temperature lives in ``meta``.
    """
    if isinstance(model, TemperatureScaled):
        model = model.network
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **meta.to_dict(),
        "metrics": metrics or {},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return _save(path, payload)


@dataclass
class Position:
    """Where a run stands: ``batch`` batches of ``epoch`` done (0: the epoch has not started), ``step``
    optimizer steps in all, and whether the run has ``finished``."""

    epoch: int
    batch: int
    step: int
    finished: bool

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "finished": self.finished}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Position:
        return cls(
            epoch=int(payload["epoch"]),
            batch=int(payload["batch"]),
            step=int(payload["step"]),
            finished=bool(payload["finished"]),
        )


@dataclass
class TrainState:
    """``state.pt``: everything the training loop needs to continue bitwise-identically from ``position``.

    ``ranks`` holds each process's random streams and running loss after a data-parallel run (None after
    one process); ``rng`` and ``loss_sum`` are rank 0's streams and the running loss over all ranks.
    ``best`` is the best validation epoch so far: {"accuracy", "epoch", "state" (its weights, or None)}.
    """

    checkpoint: CheckpointMeta
    recipe: dict[str, Any]
    config: dict[str, Any]
    options: dict[str, Any]  # checkpoint_every, deterministic, sync_bn: kept by a resumed run
    position: Position
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    ema: dict[str, Any] | None
    rng: dict[str, Any]
    loss_sum: torch.Tensor
    ranks: list[dict[str, Any]] | None
    history: list[dict[str, Any]]
    best: dict[str, Any]
    train_seconds: float
    epoch_seconds: float

    # Written since the first format version but not by every release of it: absent means None.
    OPTIONAL: ClassVar[tuple[str, ...]] = ("ranks",)

    def to_dict(self) -> dict[str, Any]:
        payload = {name: getattr(self, name) for name in self.field_names()}
        return {**payload, "checkpoint": self.checkpoint.to_dict(), "position": self.position.to_dict()}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainState:
        """Raises KeyError, TypeError or ValueError for a field that is missing or of the wrong kind."""
        values = {name: payload.get(name) for name in cls.field_names()}
        values["checkpoint"] = CheckpointMeta.from_dict(payload["checkpoint"])
        values["position"] = Position.from_dict(payload["position"])
        return cls(**values)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: the previous file stays until this one is complete."""
        return _save(path, {"format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION, **self.to_dict()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainState:
        """Load and check a ``state.pt``; every failure is a UserError."""
        try:
            return cls.from_dict(load_train_state(path))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{path}: incomplete mnist-nn training state (missing or bad {exc})") from None


def _save(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    # Serialized in memory first: torch's zip writer turns a failed write (a full disk) into a vague
    # RuntimeError, while a plain write of the bytes raises the OSError (ENOSPC, EACCES) callers can explain.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6: a zip archive holding archive/data.pkl
# The pickled number torch.save's legacy (pre-1.6, or _use_new_zipfile_serialization=False) format starts with.
LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class _GlobalFound(Exception):
    """Raised by _NoGlobals at the first class or function a pickle names: the name is the message."""


class _NoGlobals(pickle.Unpickler):
    """An unpickler that refuses every class and function (the restricted unpickler of Python's pickle docs).

    Objects can only be built by calling a class or function named in the pickle, so a pickle
    this loads is plain data, and one it refuses never got to call anything.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise _GlobalFound(f"{module}.{name}")


def _read_payload(path: Path, what: str) -> Any:
    """torch.load with ``weights_only=True``, each way of failing told apart in one line.

    The file's first bytes decide what it is before torch reads it: torch's own errors call a
    Markdown file "unsupported operand" and a truncated zip "an internal miniz error", and advise
    weights_only=False, which would run the file's code: never.
    """
    if not path.is_file():
        raise UserError(f"{what} {path} not found" if not path.exists() else f"{what} {path} is not a file")
    with open(path, "rb") as handle:
        head = handle.read(32)
    _check_container(path, what, head)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes; the errors below say it all
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        culprit = f" ({found.group(1)})" if found else ""
        raise UserError(
            f"{path}: refused: not a plain mnist-nn {what}: it holds Python objects{culprit} other than tensors "
            "and plain data, which could run code when loaded"
        ) from None
    except EOFError:
        raise UserError(f"{path}: truncated PyTorch file (it ends too early); copy or save the {what} again") from None
    except Exception as exc:  # damaged bytes inside a well-formed container fail in arbitrary ways
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: corrupt PyTorch file, not a readable {what} ({reason[:160]})") from None


def _check_container(path: Path, what: str, head: bytes) -> None:
    """Refuse, before torch reads it, a file that is empty, cut short, or not a PyTorch file at all."""
    if not head:
        raise UserError(f"{path}: empty file (0 bytes), not a {what}: truncated, or never written completely")
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                # torch.load does not check the members' CRC-32: damaged weights would load as other numbers.
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError):
            # The zip's index is at its end: a cut-short copy or interrupted write loses it first.
            raise UserError(
                f"{path}: truncated PyTorch file (its zip index is missing); copy or save the {what} again"
            ) from None
        if not any(name.endswith("data.pkl") for name in names):
            raise UserError(f"{path}: a zip archive, but not a PyTorch file, so not an mnist-nn {what}")
        if any("/code/__torch__/" in name or name.endswith("/constants.pkl") for name in names):
            _refuse_export(path, what, "TorchScript", "torch.jit.load, in Python or C++ (libtorch)")
        if damaged is not None:
            raise UserError(
                f"{path}: corrupt PyTorch file ({damaged} fails its checksum); copy or save the {what} again"
            )
        return
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocols 2-5
        if LEGACY_MAGIC not in head:
            _refuse_plain_pickle(path, what)
        if _legacy_cut_short(path):
            raise UserError(f"{path}: truncated PyTorch file (it ends too early); copy or save the {what} again")
        return
    if path.suffix.lower() == ".onnx" and head[:1] == b"\x08":  # a protobuf ModelProto opens with ir_version
        _refuse_export(path, what, "ONNX", "onnxruntime")
    raise UserError(
        f"{path}: not a PyTorch file (it starts with {head[:8]!r}, not the zip or pickle header torch.save "
        f"writes), so not an mnist-nn {what}"
    )


def _refuse_export(path: Path, what: str, kind: str, runner: str) -> NoReturn:
    """An exported model is code for another runtime, not a checkpoint: say which file to give instead."""
    article = "an" if kind[0] in "AEIOU" else "a"
    raise UserError(
        f"{path}: {article} {kind} model (as `mnist-nn export` writes), not an mnist-nn {what}: give the model.pt "
        f"it was exported from; the {kind} file itself runs with {runner}"
    )


def _legacy_cut_short(path: Path) -> bool:
    """Whether a legacy-format file ends inside its four leading pickles (read as opcodes: nothing runs).

    Cut short, its last opcode is a partial class name that torch's unpickler would refuse as foreign code.
    """
    with open(path, "rb") as handle:
        try:
            for _ in range(4):  # magic number, protocol version, system info, then the saved object
                for _ in pickletools.genops(handle):
                    pass
        except ValueError:  # "pickle exhausted before seeing STOP", or an argument cut short
            return True
    return False


def _refuse_plain_pickle(path: Path, what: str) -> NoReturn:
    """A pickle.dump file, not torch.save: name the code it would run, if any, without running it."""
    try:
        with open(path, "rb") as handle:
            _NoGlobals(handle).load()
    except _GlobalFound as found:
        raise UserError(
            f"{path}: refused: not a plain mnist-nn {what}: it holds Python objects ({found}) other than tensors "
            "and plain data, which could run code when loaded"
        ) from None
    except Exception:  # a damaged or cut-short pickle: still not ours, and nothing was called
        pass
    raise UserError(f"{path}: a Python pickle, not a PyTorch file, so not an mnist-nn {what}")


def _describe(payload: Any) -> str:
    """What a foreign PyTorch file holds, in a few words: "a dict with keys 'weights', 'step'"."""
    name = type(payload).__name__
    kind = ("an " if name[0] in "AEIOUaeiou" else "a ") + name
    if not isinstance(payload, dict):
        return kind
    if not payload:
        return f"{kind}, empty"
    keys = ", ".join(repr(key) for key in list(payload)[:4]) + (", ..." if len(payload) > 4 else "")
    bare = all(isinstance(value, torch.Tensor) for value in payload.values())
    return f"{kind} with keys {keys}" + (": a bare state_dict?" if bare else "")


def _check_version(path: Path, payload: dict[str, Any], what: str, expected: int) -> None:
    if payload.get("format_version") != expected:
        raise UserError(
            f"{path}: {what} format {payload.get('format_version')} is not supported by "
            f"mnist-nn {__version__} (it reads format {expected})"
        )


def load_weights(model: nn.Module, state_dict: Any, path: Path, model_name: str) -> None:
    """Load ``state_dict`` into ``model``; weights of another model are a one-line UserError."""
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: weights do not fit model {model_name!r} ({first[:200]})") from None


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu", expect_dataset: str | None = None
) -> Checkpoint:
    """Load and check a checkpoint (``model.pt``, a training ``state.pt``, or a bundled model's name);
    every failure is a UserError.

    ``expect_dataset``: refuse a checkpoint trained on another dataset.
    """
    path = resolve_model(path)  # a bundled model's name ("robust") works wherever a checkpoint path does
    payload = _read_payload(path, "checkpoint")
    if isinstance(payload, dict) and payload.get("format") == STATE_FORMAT:
        _check_version(path, payload, "training state", STATE_FORMAT_VERSION)
        payload = _state_as_checkpoint(path, payload)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: a PyTorch file, but not an mnist-nn checkpoint (it holds {_describe(payload)})")
    _check_version(path, payload, "checkpoint", FORMAT_VERSION)
    try:
        meta, state_dict = CheckpointMeta.from_dict(payload), payload["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: incomplete mnist-nn checkpoint (missing or bad {exc})") from None
    if expect_dataset is not None and meta.dataset != expect_dataset:
        raise UserError(f"{path}: a checkpoint for {meta.dataset}, not {expect_dataset}")
    check_meta(path, meta)
    check_size(path, meta, state_dict)
    check_weights(path, state_dict)
    network = build_model(meta.model_name, **meta.model_kwargs)
    load_weights(network, state_dict, path, meta.model_name)
    model = TemperatureScaled(network, meta.temperature).to(device).eval()
    return Checkpoint(path=path, model=model, meta=meta, metrics=payload.get("metrics", {}))


# --------------------------------------------------------------------------- checks before building


def check_meta(path: Path, meta: CheckpointMeta) -> None:
    """The metadata's numbers, each failure one line naming its field: the normalization must be finite with
    std above 0 (a std of 0 divides by zero), the temperature finite and above 0, the model's sizes sane."""
    for name, value in (("normalization.mean", meta.mean), ("normalization.std", meta.std)):
        if not math.isfinite(value):
            raise UserError(f"{path}: bad checkpoint: {name} is {value}, not a finite number")
    if meta.std <= 0:
        raise UserError(f"{path}: bad checkpoint: normalization.std is {meta.std}; it must be above 0")
    if not isinstance(meta.calibration, dict):
        raise UserError(f"{path}: bad checkpoint: calibration must be a mapping, got {type(meta.calibration).__name__}")
    if "temperature" in meta.calibration:
        try:
            check_temperature(meta.calibration["temperature"])
        except ValueError as exc:
            raise UserError(f"{path}: bad checkpoint: calibration.temperature {exc}") from None
    for name, value in meta.model_kwargs.items():
        _check_kwarg(path, f"model.kwargs.{name}", value)


def _check_kwarg(path: Path, field_name: str, value: Any) -> None:
    """A size cannot be negative, a rate must be finite, and a list of sizes stays short."""
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_KWARG_ITEMS:
            raise UserError(
                f"{path}: bad checkpoint: {field_name} has {len(value):,} entries (at most {MAX_KWARG_ITEMS})"
            )
        for i, item in enumerate(value):
            _check_kwarg(path, f"{field_name}[{i}]", item)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and value < 0:
        raise UserError(f"{path}: bad checkpoint: {field_name} is {value}; a size cannot be negative")
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{path}: bad checkpoint: {field_name} is {value}, not a finite number")


def check_size(path: Path, meta: CheckpointMeta, state_dict: Any) -> None:
    """The parameters the metadata implies, counted on PyTorch's "meta" device (shapes only, no memory),
    against ``MAX_PARAMETERS`` and against the weights the file holds, before anything real is built."""
    try:
        with torch.device("meta"):
            blueprint = build_model(meta.model_name, **meta.model_kwargs)
    except UserError as exc:
        raise UserError(f"{path}: bad checkpoint: model.kwargs: {str(exc)[:240]}") from None
    except Exception as exc:  # a size no layer accepts (a width of 0 for a convolution, a number too large)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path}: bad checkpoint: model.kwargs cannot build {meta.model_name!r} ({reason[:160]})"
        ) from None
    wanted = sum(p.numel() for p in blueprint.parameters())
    if wanted > MAX_PARAMETERS:
        raise UserError(
            f"{path}: bad checkpoint: model.kwargs ask for {wanted:,} parameters, over the {MAX_PARAMETERS:,} "
            "a checkpoint may hold"
        )
    held = (
        sum(v.numel() for v in state_dict.values() if isinstance(v, torch.Tensor))
        if isinstance(state_dict, dict)
        else 0
    )
    if wanted > held:
        raise UserError(
            f"{path}: bad checkpoint: model.kwargs ask for {wanted:,} parameters, but its state_dict holds "
            f"{held:,} numbers: the weights do not fit model {meta.model_name!r}"
        )


def check_weights(path: Path, state_dict: Any) -> None:
    """Every stored number finite (a NaN weight makes every answer NaN), batch-norm variances not negative."""
    if not isinstance(state_dict, dict):
        return  # load_weights names the problem
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        if not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"{path}: bad checkpoint: state_dict[{name!r}] holds NaN or infinite values (the weights of a "
                "diverged run, or a damaged file)"
            )
        if str(name).endswith("running_var") and bool((tensor < 0).any()):
            raise UserError(f"{path}: bad checkpoint: state_dict[{name!r}] holds negative variances")


def write_calibration(
    path: str | os.PathLike, calibration: dict[str, Any], out: str | os.PathLike | None = None
) -> Path:
    """Rewrite the ``model.pt`` at ``path`` (or write a copy to ``out``) with ``calibration``, atomically;
    weights, metadata and metrics stay as they are. A training state cannot be calibrated: its model.pt can."""
    path = resolve_model(path)
    check_temperature(calibration["temperature"])
    payload = _read_payload(path, "checkpoint")
    if isinstance(payload, dict) and payload.get("format") == STATE_FORMAT:
        raise UserError(f"{path}: a training state; calibrate the model.pt of its run (or of its finished run)")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: a PyTorch file, but not an mnist-nn checkpoint (it holds {_describe(payload)})")
    return _save(path if out is None else out, {**payload, "calibration": calibration})


def _state_as_checkpoint(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The evaluated weights of a training state (its EMA when the run keeps one), as a model.pt payload."""
    try:
        meta = state["checkpoint"]
        weights = state["ema"]["module"] if state.get("ema") is not None else state["model"]
        position = state["position"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: incomplete mnist-nn training state (missing or bad {exc})") from None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **meta,
        "metrics": {"epoch": position.get("epoch"), "batch": position.get("batch"), "step": position.get("step")},
        "state_dict": weights,
    }


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of a ``state.pt`` as written (``TrainState.load`` makes a TrainState of them)."""
    path = Path(path)
    payload = _read_payload(path, "training state")
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        kind = (
            "a model checkpoint, not a training state"
            if isinstance(payload, dict) and payload.get("format") == FORMAT
            else f"a PyTorch file, but not an mnist-nn training state (it holds {_describe(payload)})"
        )
        raise UserError(f"{path}: {kind}")
    _check_version(path, payload, "training state", STATE_FORMAT_VERSION)
    missing = [key for key in TrainState.field_names() if key not in payload and key not in TrainState.OPTIONAL]
    if missing:
        raise UserError(f"{path}: incomplete mnist-nn training state (missing {', '.join(missing)})")
    return payload
