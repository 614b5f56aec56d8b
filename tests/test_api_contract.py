"""The HTTP API keeps the contract its /openapi.json states: schemathesis against the app, in process.

Every operation gets the schema's examples, its coverage cases (boundaries, missing and wrong
fields and parameters, other content types) and a bounded number of generated requests, valid
and invalid, sent straight to the ASGI app (no socket). Every answer must be documented (its
status, content type and body), no request may cause a 500, and a request the schema forbids
must be refused.

The run goes through schemathesis's engine (what its CLI runs) inside one test, rather than its
pytest plugin: the CPU setting Hypothesis needs (see ``subnormal_floats``) is then changed for the
run alone, not from collection on, and every violation of every operation is reported at once.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

import torch  # noqa: E402
from fastapi.exception_handlers import request_validation_exception_handler  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from schemathesis.engine import Status, events, from_schema  # noqa: E402

from mnist_nn.apps.serve.app import create_app  # noqa: E402
from mnist_nn.inference.predictor import Predictor  # noqa: E402

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
)


def config(max_examples: int) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            # A fixed seed: the same requests on every run, so a failure here is never a fluke of the draw.
            "seed": 14,
            # Every violation, not the first of each operation: the report lists them all.
            "continue-on-failure": True,
            "generation": {"mode": "all", "max-examples": max_examples},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "phases": {name: {"enabled": True} for name in ("examples", "coverage", "fuzzing")},
        }
    )


@contextlib.contextmanager
def subnormal_floats() -> Iterator[None]:
    """Keep subnormal floats for a while: Hypothesis refuses to draw floats on a CPU that flushes them.

    Importing mnist_nn flushes them to zero, for speed (mnist_nn/__init__.py); that is put back after.
    """
    tiny = sys.float_info.min  # the smallest normal float: half of it is subnormal, or 0 when flushed
    flushed = tiny / 2 == 0.0
    torch.set_flush_denormal(False)
    try:
        yield
    finally:
        torch.set_flush_denormal(flushed)


def violations(app, max_examples: int) -> tuple[int, list[str]]:
    """Run schemathesis against ``app``: (requests sent, each kind of violation or error described).

    A kind is a failure code on one operation in one phase; its first request is shown, with a count.
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config(max_examples))
    sent, kinds, count = 0, {}, Counter()
    with subnormal_floats():
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                sent += len(event.recorder.cases)
                for check in (check for checks in event.recorder.checks.values() for check in checks):
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        kind = f"{failure.code} {failure.title} ({event.recorder.label}, {event.phase.value})"
                        count[kind] += 1
                        kinds.setdefault(kind, f"{failure.message}\n{check.failure_info.code_sample}")
            elif isinstance(event, events.NonFatalError):
                kind = f"error ({event.label})"
                count[kind] += 1
                kinds.setdefault(kind, str(event.info))
            elif isinstance(event, events.FatalError):
                kinds[f"schemathesis failed: {event.exception!r}"] = ""
    return sent, [f"{kind}, {count[kind] or 1} request(s); the first:\n{text}" for kind, text in kinds.items()]


def test_every_answer_is_documented(random_checkpoint):
    app = create_app(Predictor.from_checkpoint(random_checkpoint))
    sent, found = violations(app, max_examples=100)
    assert not found, f"{len(found)} contract violations:\n\n" + "\n\n".join(found)
    assert sent >= 100  # the run did test: three operations, their coverage cases and up to 100 generated requests each


def test_the_run_catches_an_undocumented_answer(random_checkpoint):
    """With FastAPI's own handler back, a bad query parameter is answered with a list: caught."""
    app = create_app(Predictor.from_checkpoint(random_checkpoint))
    app.exception_handlers[RequestValidationError] = request_validation_exception_handler
    _sent, found = violations(app, max_examples=5)
    assert any(text.startswith("ST108 Response violates schema (POST /api/predict") for text in found), found
    assert not any(text.startswith(("error", "schemathesis failed")) for text in found), found
