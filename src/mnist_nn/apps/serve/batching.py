"""Dynamic batching: the digits of concurrent requests go through the model in one forward pass.

As TorchServe's and Triton's dynamic batchers do: a request's digits wait for others at most
``max_wait_s`` (a millisecond), or until ``max_batch`` digits are waiting, then all go through the
model together and each request gets its own rows back. One forward pass of 32 digits costs little
more than one of a single digit (most of a small pass is per-call overhead), so under load a server
answers several times more requests per second. A request that no other request is being read
beside does not wait: with nobody else coming, its batch is flushed at once.

Everything runs on the event loop of one process (its forward passes too, like the small requests'
preprocessing), so no lock is needed. The model's answer for a digit does not depend on the others
in its batch (the models are in eval mode: batch norm uses its running statistics): labels are
identical to an unbatched reading, probabilities equal to float rounding (tests/test_serve.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

MAX_WAIT_S = 0.001
MAX_BATCH = 64
# A batch goes through the model in chunks of this many digits. A small model's pass is mostly per-call
# overhead, which 16 digits share; a CNN's is compute (the bundled robust one: about 3 ms a digit, its three
# zoomed views, on one core), and its per-digit cost grew with larger batches (their activations outgrow
# the cache), so no chunk is larger.
CHUNK = 16


class Ticket:
    """A request expected to join a batch; ``joined`` once its digits wait in one."""

    joined = False


class Batcher:
    """Batches ``score`` (pixels [N, 28, 28] -> probabilities [N, classes]) over concurrent callers."""

    def __init__(
        self,
        score: Callable[[np.ndarray], torch.Tensor],
        max_wait_s: float = MAX_WAIT_S,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.score = score
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        self.waiting: list[tuple[np.ndarray, asyncio.Future]] = []
        self.digits = 0
        self.reading = 0  # requests being read or prepared that will join a batch
        self.timer: asyncio.Handle | None = None
        self.batches = 0  # forward passes so far (for tests and benchmarks)

    @contextmanager
    def expecting(self) -> Iterator[Ticket]:
        """Around a request's reading and preprocessing: until it joins a batch (or leaves), batches wait for it."""
        ticket = Ticket()
        self.reading += 1
        try:
            yield ticket
        finally:
            if not ticket.joined:
                self.reading -= 1
                if not self.reading and self.waiting:
                    self._flush_soon()  # the last one left without joining (an error, no digit): nobody to wait for

    async def probabilities(self, pixels: np.ndarray, ticket: Ticket) -> torch.Tensor:
        """``score(pixels)``, computed in one pass with whatever other requests' digits are waiting."""
        ticket.joined = True
        self.reading -= 1
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((pixels, future))
        self.digits += len(pixels)
        if self.digits >= self.max_batch:
            self._cancel_timer()
            self._flush()  # the future has its rows before it is awaited
        elif not self.reading:  # no other request is on the way
            self._flush_soon()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._flush)
        return await future

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _flush_soon(self) -> None:
        self._cancel_timer()
        # call_soon, not at once: requests ready in this turn of the loop still join.
        self.timer = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.timer = None
        batch = self.waiting
        self.waiting = []
        self.digits = 0
        if not batch:
            return
        self.batches += 1
        try:
            pixels = np.concatenate([pixels for pixels, _ in batch])
            probabilities = torch.cat([self.score(pixels[i : i + CHUNK]) for i in range(0, len(pixels), CHUNK)])
        except Exception as exc:  # every waiting request fails alike (their handlers log it)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for pixels, future in batch:
            if not future.done():  # a request whose client went away was cancelled
                future.set_result(probabilities[start : start + len(pixels)])
            start += len(pixels)
