"""Resuming a run and keeping it safe: the state file's checks, every random stream, stop signals, disk.

Used by the training loop (trainer.py) so that a run killed at any moment continues
bitwise-identically from its last ``state.pt``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shlex
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnist_nn.core.errors import Interrupted, UserError, option
from mnist_nn.models.checkpoint import TrainState
from mnist_nn.training.recipes import Recipe

# The resumable training state: rewritten atomically every epoch (and every --checkpoint-every steps).
STATE_NAME = "state.pt"


def open_resume(
    resume: str | os.PathLike, recipe: str | Recipe | None, out: str | os.PathLike | None, overrides: dict[str, Any]
) -> tuple[Path, TrainState]:
    """The run directory and its loaded state; a flag that would change the run is refused, not silently ignored."""
    path = Path(resume)
    run_dir = path.parent if path.is_file() else path
    if not run_dir.is_dir():
        raise UserError(f"cannot resume {path}: no such run directory")
    state_path = run_dir / STATE_NAME
    if not state_path.exists():
        raise UserError(
            f"cannot resume {run_dir}: it holds no {STATE_NAME} (not a run directory, or stopped before its first "
            "checkpoint)"
        )
    saved = TrainState.load(state_path)
    conflicts = []
    if out is not None and Path(out).resolve() != run_dir.resolve():
        conflicts.append(f"{option('out', str(out))} (the run stays in {run_dir})")
    saved_recipe = saved.recipe if isinstance(saved.recipe, dict) else {}
    if recipe is not None:
        name = recipe if isinstance(recipe, str) else recipe.name
        if name != saved_recipe.get("name") or (isinstance(recipe, Recipe) and recipe.to_dict() != saved_recipe):
            conflicts.append(f"{option('recipe', name)} (the run's recipe is {saved_recipe.get('name')})")
    for key, value in overrides.items():
        if value is not None and saved_recipe.get(key, value) != value:
            conflicts.append(f"--{key.replace('_', '-')} {value} (the run's is {saved_recipe[key]})")
    if conflicts:
        raise UserError(
            f"{option('resume')} continues {run_dir} with its saved recipe; these would change it: "
            f"{'; '.join(conflicts)} (drop them, or start a new run with {option('out')})"
        )
    return run_dir, saved


def saved_recipe(state_path: Path, fields: Any) -> Recipe:
    try:
        recipe = Recipe(**fields)
    except TypeError as exc:  # a field this version does not know, or lacks one it needs
        raise UserError(f"{state_path}: written by an incompatible mnist-nn version ({exc})") from None
    recipe.validate()
    return recipe


@contextlib.contextmanager
def damaged_state(state_path: Path) -> Iterator[None]:
    """Map a state whose parts do not fit together (edited, or from another build) to one line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{state_path}: damaged or incompatible training state ({first[:200]})") from None


def rng_states(augment_generator: torch.Generator) -> dict[str, Any]:
    """Every random stream as tensors and plain data (what ``weights_only`` loading accepts)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {
        "torch": torch.get_rng_state(),
        "augment": augment_generator.get_state(),
        "cuda": cuda,
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_states(states: dict[str, Any], augment_generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    augment_generator.set_state(states["augment"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))


class StopRequest:
    """A signal handler: the first SIGINT/SIGTERM asks the loop to stop after its step; a second stops at once."""

    def __init__(self, state_path: Path, run_dir: Path) -> None:
        self.signum: int | None = None
        self.state_path = state_path
        self.run_dir = run_dir

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            return
        # Raised wherever the loop is; a state write it cuts short leaves the previous file (atomic_write).
        raise Interrupted(
            f"interrupted again by {signal.Signals(signum).name}: stopped at once; the last good state in "
            f"{self.state_path} is intact; resume with: mnist-nn train --resume {shlex.quote(str(self.run_dir))}",
            128 + signum,
        )


@contextlib.contextmanager
def stop_on_signals(handler: StopRequest) -> Iterator[None]:
    """Install ``handler`` for SIGINT and SIGTERM while training, and put the previous handlers back after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; elsewhere Ctrl-C keeps its usual meaning
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def write_errors(run_dir: Path, state_path: Path) -> Iterator[None]:
    """A failed write in the run directory (full disk, lost permission) as one line that says what to do."""
    try:
        yield
    except OSError as exc:
        target = exc.filename or run_dir
        reason = exc.strerror or type(exc).__name__
        advice = ""
        if exc.errno == errno.ENOSPC:
            advice = "; free some disk space"
        if state_path.exists():
            advice += f"; the last good state is intact: mnist-nn train --resume {shlex.quote(str(run_dir))}"
        raise UserError(f"cannot write {target}: {reason}{advice}") from None


def check_disk_space(run_dir: Path, model: nn.Module, recipe: Recipe, has_ema: bool) -> None:
    """Refuse to start when the checkpoints of this run cannot fit, rather than fail hours in."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # state.pt: the weights, the optimizer's moments, the EMA and the best epoch's weights; during a
    # save the old and new state exist together; then model.pt, last.pt and some MB of plots and logs.
    moments = 1 if recipe.optimizer == "sgd" else 2
    state = weights * (1 + moments + int(has_ema) + int(bool(recipe.val_size)))
    needed = 2 * state + 2 * weights + 16 * 2**20
    existing = next(folder for folder in (run_dir, *run_dir.absolute().parents) if folder.is_dir())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise UserError(
            f"not enough free disk space in {run_dir}: this run's checkpoints need about "
            f"{needed / 2**20:.0f} MB, {free / 2**20:.0f} MB free"
        )


def remove_stale_temp_files(run_dir: Path) -> None:
    """Temp files of writes a kill cut short (atomic_write names them .NAME.XXXX.tmp): never read, only litter."""
    for path in run_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()
