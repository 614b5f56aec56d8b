"""What a model answers on a split of tensors: the one batched-inference loop and its loss and accuracy.

Training scores each epoch with ``evaluate`` and inference scores checkpoints with it, so it lives
below both. Under data-parallel training the trainer passes its process group as a ``Collective``:
any object with these three methods (``training.distributed.Context`` is one); one process needs none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn


class Collective(Protocol):
    """The three collective operations ``evaluate`` needs from a process group."""

    def slice_of(self, size: int) -> tuple[int, int]:
        """This process's contiguous [start, stop) of ``size`` items."""
        ...

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes, in place."""
        ...

    def gather_objects(self, value: Any) -> list[Any] | None:
        """Every process's ``value`` on rank 0 (None elsewhere)."""
        ...


class OneProcess:
    """The ``Collective`` of a single process: the whole split is its slice, sums and gathers are itself."""

    def slice_of(self, size: int) -> tuple[int, int]:
        return 0, size

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather_objects(self, value: Any) -> list[Any] | None:
        return [value]


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


def model_outputs(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    score: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda model, batch: model(batch).float(),
    to_cpu: bool = False,
) -> torch.Tensor:
    """The one batched-inference loop: ``score(model, batch)`` over ``images`` in eval mode, without
    autograd, concatenated (moved to the CPU batch by batch with ``to_cpu``). The default score is the
    float32 logits. An empty input still runs the model once, on zero images, so the width is the model's.
    """
    # A model in eval mode (every served one) is left as it is: switching its every module to eval and
    # back on each request cost more than a small model's forward pass.
    was_training = model.training
    if was_training:
        model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size) or range(1):
            output = score(model, images[start : start + batch_size])
            chunks.append(output.cpu() if to_cpu else output)
    if was_training:
        model.train()
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 10000,
    *,
    context: Collective | None = None,
    gather: bool = False,
) -> Evaluation:
    """Loss and accuracy of ``model`` on already-normalized ``images``.

    Under data-parallel training (a ``context`` of several processes) each process scores its
    contiguous slice and the summed losses and correct counts are all-reduced, so every process gets
    the whole split's figures; ``logits``/``labels`` then hold this process's slice, or with
    ``gather`` every slice, on rank 0. One process is the same code with one slice: the whole split.
    """
    context = context or OneProcess()
    start, stop = context.slice_of(len(labels))
    logits = model_outputs(model, images[start:stop], batch_size)
    mine = labels[start:stop]
    with torch.inference_mode():
        loss_sum = F.cross_entropy(logits, mine, reduction="sum").double()
        totals = torch.stack([loss_sum, (logits.argmax(1) == mine).sum().double()])
    context.all_reduce_sum(totals)
    loss_sum, correct = totals.tolist()
    count = max(1, len(labels))
    logits, mine = logits.cpu(), mine.cpu()
    if gather:
        pieces = context.gather_objects((logits, mine))
        if pieces is not None and len(pieces) > 1:
            logits, mine = torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])
    return Evaluation(loss=loss_sum / count, accuracy=correct / count, logits=logits, labels=mine)
