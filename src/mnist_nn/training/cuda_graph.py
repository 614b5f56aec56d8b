"""The training step captured as one CUDA graph: the speed path of a run on a CUDA GPU.

On a fast GPU these networks are tiny: a step of the tutorial MLP is a few dozen kernels of
microseconds each, and the time goes to launching them from Python (938 steps of the tutorial take
1.76 s per epoch on an H200). A CUDA graph records the whole step once (forward, backward, the fused
optimizer step and the EMA update) and then launches it as one unit, so the Python and launch cost is
paid once per step instead of once per kernel.

A graph replays fixed memory: the batch is copied into static buffers, and everything that changes
from step to step is a device tensor that the graph reads (the learning rate of the schedule, the
EMA's warming-up weight). The results are the eager step's up to the order of floating-point sums.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from mnist_nn.training.ema import ModelEMA

__all__ = ["WARMUP_STEPS", "CapturedStep", "can_capture", "ema_weight"]

# PyTorch's whole-network example warms up for 3 steps: enough for cuDNN's autotuning, cuBLAS's
# workspaces and the optimizer's lazily created state to exist before the capture.
WARMUP_STEPS = 3


class EagerStep(Protocol):
    """What a captured step records and falls back to: ``step.EagerStep``, the step followed by the EMA update."""

    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    model: nn.Module
    ema: ModelEMA | None

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, lr: float) -> torch.Tensor: ...


def can_capture(
    device: torch.device, *, distributed: bool, grad_clip: float, compile_model: bool, deterministic: bool
) -> tuple[bool, str]:
    """Whether a run's training step is captured as a CUDA graph, and if not, why (a short reason)."""
    if device.type != "cuda":
        return False, f"CUDA graphs need a CUDA device, the run is on {device.type}"
    if distributed:
        # DDP's gradient all-reduce hooks run outside what one process's graph can hold.
        return False, "data-parallel training (DDP) runs the eager step"
    if grad_clip:
        # clip_grad_norm_ is capturable, but the clipped path is rare here: kept eager, one path less to check.
        return False, "gradient clipping (--grad-clip) runs the eager step"
    if compile_model:
        return False, "torch.compile (--compile-model) captures graphs of its own"
    if deterministic:
        return False, "--deterministic runs the eager step"
    return True, ""


def ema_weight(ema: ModelEMA) -> float:
    """The weight of the live model in the EMA's next update: 1 - ``ModelEMA.update``'s warming-up decay."""
    updates = ema.updates + 1
    return 1 - min(ema.decay, (1 + updates) / (10 + updates))


def ema_pairs(ema: ModelEMA, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(average, live) for every tensor of the state, as ``ModelEMA.update`` pairs them."""
    live = model.state_dict()
    return [(value, live[key]) for key, value in ema.module.state_dict().items()]


@torch.no_grad()
def ema_update_(pairs: list[tuple[torch.Tensor, torch.Tensor]], weight: torch.Tensor) -> None:
    """``ModelEMA.update`` with the live model's weight read from a device tensor, so that a graph can replay it."""
    for average, live in pairs:
        if average.is_floating_point():
            average.lerp_(live, weight)
        else:
            average.copy_(live)


class CapturedStep:
    """A training step on full batches, replayed as one CUDA graph after a few eager warm-up steps.

    ``eager`` is the run's ``step.EagerStep``: its ``step`` (forward, loss, backward, optimizer step, which
    returns the loss share) is what the graph records, with the EMA update when there is one. Calling the
    object with a batch of ``batch_size`` runs the step and returns its loss share; any other batch (an
    epoch's last, smaller one) goes to the eager step, and the graph stays valid for the next.

    The first ``warmup`` full batches are eager steps on a side stream (real steps: nothing is
    thrown away), the next is captured on that stream and replayed; from then on each step is a copy
    of the batch into the static buffers, two scalar fills (learning rate, EMA weight) and one replay.
    The returned share is a static tensor: the next step overwrites it.
    """

    def __init__(
        self, eager: EagerStep, optimizer: torch.optim.Optimizer, batch_size: int, warmup: int = WARMUP_STEPS
    ) -> None:
        self.eager = eager
        self.update = eager.step
        self.model = eager.model
        self.ema = eager.ema
        self.optimizer = optimizer
        self.batch_size = batch_size
        # At least one eager step: the optimizer creates its state on its first step, which must not be
        # recorded (a replay would reset the moments to zero every step).
        self.warmup_left = max(1, warmup)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None  # why the capture failed; the eager step runs from then on
        self._stream: torch.cuda.Stream | None = None
        self._buffers: dict[str, torch.Tensor] = {}

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def fits(self, inputs: torch.Tensor, targets: torch.Tensor) -> bool:
        """Whether this batch is one the graph runs: a full one (the graph's shapes are fixed)."""
        return self.failed is None and len(targets) == self.batch_size == len(inputs)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, lr: float) -> torch.Tensor:
        """One step at learning rate ``lr`` (already in the optimizer's groups for the eager steps)."""
        if not self.fits(inputs, targets):
            return self.eager(inputs, targets, lr)
        if self.graph is None:
            if self.warmup_left > 0:
                self.warmup_left -= 1
                return self._warm_up(inputs, targets)
            if not self._capture(inputs, targets, lr):
                return self.eager(inputs, targets, lr)
        buffers = self._buffers
        buffers["inputs"].copy_(inputs)
        buffers["targets"].copy_(targets)
        # fill_ with a Python number is a kernel argument: no host-device synchronization per step.
        buffers["lr"].fill_(lr)
        if self.ema is not None:
            buffers["ema_weight"].fill_(ema_weight(self.ema))
            self.ema.updates += 1
        assert self.graph is not None
        self.graph.replay()
        return buffers["share"]

    def _side_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _warm_up(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """An eager step on the stream the capture will use, so that the libraries' per-stream state
        (cuBLAS handles and workspaces, cuDNN's chosen algorithms) exists before capturing."""
        stream, current = self._side_stream(), torch.cuda.current_stream()
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            share = self.update(inputs, targets)
            if self.ema is not None:
                self.ema.update(self.model)
        current.wait_stream(stream)
        return share

    def _capture(self, inputs: torch.Tensor, targets: torch.Tensor, lr: float) -> bool:
        """Record the step into a graph (recording runs nothing: the caller then replays it for this batch)."""
        device = inputs.device
        buffers = {
            "inputs": inputs.clone(),
            "targets": targets.clone(),
            "lr": torch.full((), lr, device=device),
            "ema_weight": torch.zeros((), device=device),
        }
        pairs = ema_pairs(self.ema, self.model) if self.ema is not None else []
        groups = self.optimizer.param_groups
        saved = [(group["lr"], group.get("capturable")) for group in groups]
        # The graph reads the learning rate from a tensor (fused Adam and SGD take one); Adam refuses
        # to be captured unless capturable. Both are set for the capture only: outside it the groups
        # stay as they were, so state.pt and the eager steps are those of an uncaptured run.
        for group in groups:
            group["lr"] = buffers["lr"]
            if "capturable" in group:
                group["capturable"] = True
        # Gradients set to None: the captured backward allocates them in the graph's own memory.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._side_stream()):
                buffers["share"] = self.update(buffers["inputs"], buffers["targets"])
                if pairs:
                    ema_update_(pairs, buffers["ema_weight"])
        except RuntimeError as exc:
            # Nothing ran while recording, so the state is untouched: continue with the eager step.
            self.failed = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"CUDA graph capture failed, training on with the eager step: {self.failed}", stacklevel=2)
            return False
        finally:
            for group, (group_lr, capturable) in zip(groups, saved, strict=True):
                group["lr"] = group_lr
                if capturable is not None:
                    group["capturable"] = capturable
        self.graph, self._buffers = graph, buffers
        return True
