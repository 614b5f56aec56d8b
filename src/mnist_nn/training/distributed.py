"""Data-parallel plumbing: the same ``train`` runs as one process or as N under ``torchrun``.

nanoGPT's pattern: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in
every worker's environment; without them, or with WORLD_SIZE 1, nothing here starts a process
group and training is the plain single-process loop. The backend is gloo on the CPU and NCCL on
CUDA. Every rank runs the same loop on its shard of each global batch; DDP averages the gradients.
Only rank 0 prints and writes files; what it decides (the run directory, a failed write) is
broadcast so that every rank takes the same path and none waits forever in a collective.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from mnist_nn.core.errors import UserError, option

BACKEND_CHOICES = ("auto", "gloo", "nccl")
_NCCL_NEEDS_CUDA = (
    f"{option('dist_backend', 'nccl')} needs CUDA GPUs; use {option('dist_backend', 'gloo')} (or auto) on the CPU"
)
T = TypeVar("T")


class PeerFailed(UserError):
    """Rank 0 failed a step that every rank takes together; it reported the error, the others exit quietly."""


def launched_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun (or another env:// launcher) started this process with
    more than one worker; None for a plain single process."""
    world = os.environ.get("WORLD_SIZE", "").strip()
    if not world or world == "1":
        return None
    try:
        return int(os.environ["RANK"]), int(world), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise UserError(
            "WORLD_SIZE is set but RANK is missing or not a number: start several processes with torchrun"
        ) from None


def env_rank() -> int:
    """This process's rank from the environment (0 outside torchrun): for the CLI's error reporting."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@dataclass
class Context:
    """Where this process stands in the job. ``world_size`` 1 (the default) is the single-process run:
    every method is then a no-op or the identity, with no collective and no host sync."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False
    # Control messages (stop flags, objects) go through a CPU group: with NCCL, a flag on the GPU
    # would force a device sync every time it is read.
    control: Any = None
    _pending_vote: Any = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, in place (identity for one process)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control)

    def broadcast_object(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather_objects(self, value: Any) -> list[Any] | None:
        """Every rank's ``value``, by rank, on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [value]
        boxes: list[Any] | None = [None] * self.world_size if self.is_main() else None
        dist.gather_object(value, boxes, dst=0, group=self.control)
        return boxes

    def slice_of(self, size: int) -> tuple[int, int]:
        """Rows [start, stop) of ``size`` rows that this process takes (all of them for one process)."""
        return shard_bounds(size, self.rank, self.world_size)

    def shard(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This process's contiguous shard of a global batch (the same permutation on every rank)."""
        if not self.enabled:
            return tensors
        start, stop = self.slice_of(len(tensors[0]))
        return tuple(tensor[start:stop] for tensor in tensors)

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every rank.

        DDP copies them from rank 0 at the start of each forward, so after the last step of an epoch (and
        in an EMA of them) each rank holds its own: made equal before a sharded evaluation or a save.
        """
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the training step runs: DDP around ``model`` (sharing its parameters) for several
        processes, ``model`` itself for one. DDP starts by broadcasting rank 0's weights."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def run_on_main(self, action: Callable[[], T]) -> T:
        """``action`` on rank 0 alone, its result broadcast; if it raises, rank 0 re-raises and the
        other ranks raise PeerFailed (rank 0 reports the error), so all ranks leave together."""
        if not self.enabled:
            return action()
        outcome: tuple[str, Any]
        error: BaseException | None = None
        if self.is_main():
            try:
                outcome = ("ok", action())
            except (UserError, OSError) as exc:
                error = exc
                outcome = ("error", getattr(exc, "exit_code", 2))
        else:
            outcome = ("", None)
        outcome = self.broadcast_object(outcome)
        if error is not None:
            raise error
        if outcome[0] == "error":
            raise PeerFailed("rank 0 failed (it reports why)") from None
        return outcome[1]

    def agree_stop(self, local: int | None) -> int | None:
        """The signal (the highest number) any rank has received, read one step late.

        Every step sends this rank's flag without waiting and reads the previous step's vote: the
        same number of votes on every rank, so all ranks stop after the same step, and the small
        all-reduce overlaps a whole step instead of stalling it.
        """
        if not self.enabled:
            return local
        agreed = self._collect_vote()
        flag = torch.tensor([local or 0], dtype=torch.int64)
        self._pending_vote = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control, async_op=True), flag)
        return agreed

    def settle_stop(self, local: int | None) -> int | None:
        """Like ``agree_stop`` but waits for the answer: at the end of an epoch, where every rank waits anyway."""
        if not self.enabled:
            return local
        earlier = self._collect_vote()
        flag = torch.tensor([max(local or 0, earlier or 0)], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control)
        return int(flag.item()) or None

    def _collect_vote(self) -> int | None:
        if self._pending_vote is None:
            return None
        work, flag = self._pending_vote
        self._pending_vote = None
        work.wait()
        return int(flag.item()) or None

    def close(self, clean: bool = True) -> None:
        """Leave the process group. After a clean run every rank waits for the others first: rank 0
        still writes checkpoints and plots after the last collective, and a peer that tears its
        connections down meanwhile makes gloo abort rank 0 at exit. After a failure no one waits."""
        if self._pending_vote is not None and clean:
            self._pending_vote[0].wait()
        self._pending_vote = None
        if self.owns_group and dist.is_initialized():
            if clean:
                dist.barrier(group=self.control)
            dist.destroy_process_group()


def setup(device: torch.device, backend: str = "auto") -> tuple[Context, torch.device]:
    """Join the process group when launched by torchrun; return the context and this rank's device.

    ``backend`` "auto" is NCCL for CUDA and gloo otherwise. With CUDA, rank r uses GPU LOCAL_RANK.
    A process group that the caller already started (the Python API inside its own DDP job) is
    used as it is and left open.
    """
    if backend not in BACKEND_CHOICES:
        raise UserError(f"unknown distributed backend {backend!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if world == 1:
            return Context(), device
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        context = Context(rank, world, local_rank, dist.get_backend(), owns_group=False)
        return _finish(context, device)
    ranks = launched_ranks()
    if ranks is None:
        if backend == "nccl" and device.type != "cuda":
            raise UserError(_NCCL_NEEDS_CUDA)
        return Context(), device
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed: it cannot train on several processes")
    rank, world, local_rank = ranks
    if device.type == "mps":
        raise UserError(
            f"training on several processes needs {option('device', 'cpu')} or cuda (PyTorch has no MPS backend for it)"
        )
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise UserError(_NCCL_NEEDS_CUDA)
    if backend == "nccl" and not dist.is_nccl_available():
        raise UserError(f"this PyTorch build has no NCCL; use {option('dist_backend', 'gloo')}")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most one process per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    options: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=30)}
    if device.type == "cuda":
        options["device_id"] = device
    dist.init_process_group(**options)
    context = Context(rank, world, local_rank, backend, owns_group=True)
    return _finish(context, device)


def _finish(context: Context, device: torch.device) -> tuple[Context, torch.device]:
    context.control = dist.new_group(backend="gloo") if context.backend != "gloo" else None
    return context, device


# ---------------------------------------------------------------------- sharding


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s own random streams (dropout, augmentation): ``seed`` itself for rank 0."""
    return seed if rank == 0 else (seed * 1_000_003 + 7_919 * rank) % 2**63


def shard_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of a batch of ``size`` that ``rank`` takes: contiguous, sizes differing by at most one.

    For a full batch (``size`` a multiple of the world size) rank r takes [r*B/W, (r+1)*B/W).
    """
    return rank * size // world_size, (rank + 1) * size // world_size


def check_batch_size(batch_size: int, world_size: int) -> None:
    if world_size > 1 and batch_size % world_size:
        raise UserError(
            f"batch size {batch_size} is not divisible by the {world_size} processes: the batch size is the global "
            f"one, split evenly across processes; choose a multiple of {world_size} (e.g. "
            f"{option('batch_size', batch_size - batch_size % world_size or world_size)})"
        )


class ShardLoss:
    """The training loss under DDP: this rank's share of the mean loss over a global batch of ``batch_size``.

    Each rank sums its shard's losses and divides by the global batch: the ranks' shares add up to the
    global batch's mean loss. DDP averages the gradients over the ranks, so the step scales this share's
    gradient by the world size (``step.TrainStep``'s ``loss_scale``): the average is then the gradient of the
    mean over the whole global batch, as with one process.
    """

    def __init__(self, label_smoothing: float, world_size: int) -> None:
        self.summed = nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction="sum")
        self.world_size = world_size

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        return self.summed(logits, targets) / batch_size
