"""Dynamic batching in `serve`: concurrent requests share one forward pass, and answer as if alone."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from live_server import live_server
from mnist_nn.apps.serve.app import _answer, create_app
from mnist_nn.apps.serve.batching import Batcher
from mnist_nn.inference.predictor import Predictor


def bar(row: int, width: int = 3) -> list[list[int]]:
    pixels = np.zeros((28, 28), dtype=int)
    pixels[4:24, row : row + width] = 255
    pixels[row % 20 + 4, 6:22] = 200
    return pixels.tolist()


def run_batch(batcher: Batcher, sizes: list[int]) -> list[torch.Tensor]:
    async def one(size: int) -> torch.Tensor:
        with batcher.expecting() as ticket:
            await asyncio.sleep(0)  # the body arrives: every request is on the way before any joins
            return await batcher.probabilities(np.full((size, 28, 28), size, dtype=np.float32), ticket)

    async def all_of() -> list[torch.Tensor]:
        return await asyncio.gather(*(one(size) for size in sizes))

    return asyncio.run(all_of())


def test_requests_on_the_way_share_one_pass_and_get_their_own_rows():
    calls = []

    def score(pixels: np.ndarray) -> torch.Tensor:
        calls.append(len(pixels))
        return torch.as_tensor(pixels[:, 0, :2]).clone()  # each row names its request (its size)

    batcher = Batcher(score, max_wait_s=5.0)  # the timer never fires: the last arrival flushes
    answers = run_batch(batcher, [1, 3, 1, 2])
    assert calls == [7]
    assert [a[:, 0].tolist() for a in answers] == [[1.0], [3.0] * 3, [1.0], [2.0] * 2]


def test_a_full_batch_goes_at_once_and_a_lone_request_does_not_wait():
    calls = []

    def score(pixels: np.ndarray) -> torch.Tensor:
        calls.append(len(pixels))
        return torch.zeros(len(pixels), 10)

    run_batch(Batcher(score, max_wait_s=5.0, max_batch=4), [2, 2, 2, 2])
    assert calls == [4, 4]
    calls.clear()
    run_batch(Batcher(score, max_wait_s=5.0), [1])  # waits for nobody (5 s would time the test out)
    assert calls == [1]


def test_a_failing_pass_fails_every_request_in_it():
    def score(pixels: np.ndarray) -> torch.Tensor:
        raise RuntimeError("broken model")

    with pytest.raises(RuntimeError, match="broken model"):
        run_batch(Batcher(score), [1, 1])


def test_concurrent_answers_equal_the_unbatched_ones(random_checkpoint):
    # A zoomed reading (three views per digit), as the bundled model is read.
    predictor = Predictor.from_checkpoint(random_checkpoint, zoom=0.1)
    app = create_app(predictor)
    bodies = [json.dumps({"pixels": bar(row)}).encode() for row in range(4, 24)] * 2

    def post(url: str, body: bytes) -> dict:
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    with live_server(app) as base, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda body: post(f"{base}/api/predict", body), bodies))
    assert app.state.batcher.batches <= len(bodies)
    for body, answer in zip(bodies, answers, strict=True):
        alone = _answer(predictor, "application/json", body, "pixels", True, 10**6)
        assert answer["label"] == alone["label"] and answer["seen"] == alone["seen"]
        assert answer["top"][0]["label"] == alone["top"][0]["label"]
        got = np.array(list(answer["probabilities"].values()))
        want = np.array(list(alone["probabilities"].values()))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
