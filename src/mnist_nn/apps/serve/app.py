"""The web app and REST API around one Predictor: a drawing page at ``/``, JSON at ``/api/...``.

Every answer comes from ``Predictor.read_image``, the one way from an image to an answer that
``mnist-nn predict`` takes too, so the page, the API and the CLI cannot disagree about an image.

Client mistakes are 4xx with a JSON ``{"detail": "..."}``: a body over the size limit is 413
(refused from its Content-Length, or as soon as the streamed bytes pass the limit, never read
whole into memory), an image with too many pixels (a decompression bomb) 413, a content type
other than JSON or multipart 415; a malformed body, a wrong shape, a form other than one file in
the field "file", or a query parameter that is unknown or bad 422. Every status an operation can
answer is in /openapi.json with the body it has (tests/test_api_contract.py holds the app to it),
and the statuses come from exception types, never from reading messages.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import orjson
from anyio import CapacityLimiter
from anyio.to_thread import run_sync
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image, ImageDraw
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnist_nn.apps.serve.batching import Batcher, Ticket
from mnist_nn.apps.serve.policy import API_CSP, Policy, PolicyMiddleware
from mnist_nn.apps.serve.web_export import add_model_route
from mnist_nn.core.version import __version__
from mnist_nn.inference.predictor import ImageReading, Predictor, source_name
from mnist_nn.inference.preprocess import MNIST_SIZE, ImageError, ImageTooLarge, Segment, image_pixels
from mnist_nn.lab.explain import METHOD, ExplainUnavailable
from mnist_nn.models.bundled import bundled_name
from mnist_nn.models.bundled import model_name as bundled_model_name

log = logging.getLogger("mnist_nn.serve")

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 5 * 1024 * 1024
# Lower than the CLI's 50 MP: a server decodes images for strangers, several at once, and a
# 16 MP decode already takes ~100 MB; a 12 MP phone photo still passes.
MAX_PIXELS = 16_000_000
# Requests this small are answered on the event loop itself: a 28x28 JSON body or a drawing-sized
# image takes about a millisecond, less than the hand-off to a worker thread and back, and under
# Python's lock that thread could not run beside the loop anyway. Larger images (a photo: tens of
# milliseconds) go to the worker threads, so that they never hold up the small ones.
INLINE_MAX_BYTES = 64 * 1024
INLINE_MAX_PIXELS = 256 * 256
# The page, its script and its styles come from this app only: no CDN, works offline.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# --------------------------------------------------------------------------- response schemas


class Reading(BaseModel):
    label: str
    probability: float


# 28 rows of 28 values from -1 to 1: the schema states the shape the answer always has.
ExplanationRow = Annotated[
    list[Annotated[float, Field(ge=-1, le=1)]], Field(min_length=MNIST_SIZE, max_length=MNIST_SIZE)
]
ExplanationMap = Annotated[list[ExplanationRow], Field(min_length=MNIST_SIZE, max_length=MNIST_SIZE)]


class PredictResponse(BaseModel):
    status: str = Field(description='"ok", or "no digit found" for a blank or ink-less image')
    label: str | None = Field(description="the predicted class; null when no digit was found")
    reason: str | None = Field(
        default=None,
        description='without a digit, why, in one line: "no ink: ...", "too faint: ..." or "too many blobs: ..."; '
        "null with a digit",
    )
    confidence: float | None = Field(description="the predicted class's probability")
    probabilities: dict[str, float] | None = Field(description="every class's probability, in class order")
    top: list[Reading] = Field(description="the three most probable classes, best first")
    seen: list[list[int]] | None = Field(description="the 28x28 image the model saw, 0-255, light digit on dark")
    explanation: ExplanationMap | None = Field(
        description=f"with explain=true, why the model answered: 28 rows of 28 values, one per pixel of `seen`, "
        f"by {METHOD} from a black image for the answered class, divided by the largest magnitude (-1 to 1; "
        "positive pushed towards the answer, negative away, 0 did neither); null without explain=true or without "
        "a digit"
    )
    model: str = Field(description="the model's name: a bundled model's own (e.g. robust), else its network")
    latency_ms: float = Field(description="time spent in the server on this request, milliseconds")


class ModelInfo(BaseModel):
    name: str
    pretrained: str | None = Field(description="the bundled model's name (mnist-nn models --pretrained), if it is one")
    parameters: int
    dataset: str | None
    labels: list[str]
    test_accuracy: float | None = Field(description="test accuracy recorded in the checkpoint, 0-1")


class Health(BaseModel):
    status: str
    model: str  # the model's name: a bundled model's own (e.g. robust), else its network
    pretrained: str | None  # the bundled model's name, if it is one
    version: str


class ErrorResponse(BaseModel):
    detail: str


Answer = TypeVar("Answer", bound=BaseModel)


def answer_of(model: type[Answer], /, **values: Any) -> Answer:
    """An answer as ``model`` declares it, from the server's own values: every field, by its name.

    A field left out or a name the model lacks raises TypeError. The values are not validated on each
    request (checking the 784 pixels of "seen" would cost ~80 us, a few percent of a small request's
    time): tests/test_serve_answers.py validates every kind of answer against its model instead.
    """
    answer = model.model_construct(**values)
    if answer.model_fields_set != model.model_fields.keys():
        missing = sorted(model.model_fields.keys() - answer.model_fields_set)
        unknown = sorted(values.keys() - model.model_fields.keys())
        raise TypeError(f"{model.__name__}: fields missing {missing}, unknown {unknown}")
    return answer


def json_response(answer: BaseModel) -> Response:
    """``answer`` encoded by orjson, its fields in the model's order: 5 us against the json module's 90
    for the 784 "seen" pixels. Nested values are plain JSON values (``top`` holds Reading's fields as dicts)."""
    return Response(orjson.dumps(answer.__dict__), media_type="application/json")


def _example_one() -> list[list[int]]:
    """A '1' in MNIST form (a bright bar on black): the request body's example, for /docs's "Try it out"."""
    pixels = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=int)
    pixels[4:24, 13:16] = 255
    return pixels.tolist()


PIXELS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["pixels"],
    # Other fields are allowed, as a JSON schema allows them by default, and ignored: no field can
    # make the server load a checkpoint or a file.
    "description": 'fields other than "pixels" are ignored',
    "properties": {
        "pixels": {
            "type": "array",
            "example": _example_one(),
            "description": "28 rows of 28 grayscale values 0-255 (either polarity when preprocessed)",
            "minItems": MNIST_SIZE,
            "maxItems": MNIST_SIZE,
            "items": {
                "type": "array",
                "minItems": MNIST_SIZE,
                "maxItems": MNIST_SIZE,
                "items": {"type": "number", "minimum": 0, "maximum": 255},
            },
        }
    },
}
UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "PNG, JPEG, BMP, GIF, WebP, TIFF"}},
    # Every part of a form is text or a file on the wire, so the schema of any other field could not
    # be checked: there are none. A file under another name is refused too, naming "file".
    "additionalProperties": False,
    "description": 'one field, "file", holding the image as a file',
}


def documented_errors(
    statuses: tuple[int, ...], *, images: bool, max_body_bytes: int = MAX_BODY_BYTES, max_pixels: int = MAX_PIXELS
) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries for these error statuses, each a one-line {"detail": "..."}.

    ``images``: whether the operation reads an image, and so has more ways to refuse a request.
    """
    too_large = f"the body is over {max_body_bytes:,} bytes: refused before it is read whole"
    unreadable = "a query parameter the operation does not take"
    if images:
        too_large += f"; or the image has over {max_pixels:,} pixels: refused before it is decoded"
        unreadable += (
            ", or preprocess or explain not a boolean; malformed JSON, or pixels that are not 28 rows of 28 "
            'numbers 0-255; a malformed multipart body, or no file in its field "file"; a file that is not a '
            "readable PNG, JPEG, BMP, GIF, WebP or TIFF image; with preprocess=false, an image other than 28x28"
        )
    why = {
        400: "the Content-Length header is not a number",
        413: too_large,
        415: "a content type other than multipart/form-data or application/json",
        422: unreadable,
        500: 'a fault in the server (logged there); the answer is {"detail": "internal server error"}',
        501: "explain=true on a server without Captum installed (the lab extra)",
    }
    return {status: {"model": ErrorResponse, "description": why[status]} for status in statuses}


# Any request may carry a body (the size limit and the Content-Length check apply to every route)
# and a query string (a parameter the route does not take is refused).
ROUTE_ERRORS = (400, 413, 422, 500)


def only_query(*names: str) -> Any:
    """A route dependency: 422 for a query parameter other than ``names``, as the schema lists none.

    Ignoring it would answer as if it had been obeyed (``?checkpoint=...``, ``?preprocess_=false``).
    """

    async def check(request: Request) -> None:
        unknown = [name for name in request.query_params if name not in names]
        if unknown:
            takes = f"takes only {', '.join(map(repr, names))}" if names else "takes no query parameters"
            raise HTTPException(422, f"unknown query parameter {unknown[0]!r}: {request.url.path} {takes}")

    return Depends(check)


# --------------------------------------------------------------------------- body size limit


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit:,} bytes ({limit / 2**20:g} MB)")


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` without holding them in memory.

    A declared Content-Length over the limit is answered at once, before a byte of the body is
    read. A body without one (chunked) or lying about it is counted as it streams in; the read
    that passes the limit raises BodyTooLarge, which the app turns into a 413 (or, if it escapes
    the app before a response started, this middleware does).
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_json(send, 400, "invalid Content-Length header")
                return
            if length > self.max_bytes:
                await _send_json(send, 413, BodyTooLarge(self.max_bytes).detail)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _send_json(send, 413, exc.detail)


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps(ErrorResponse(detail=detail).model_dump()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the app


def create_app(
    predictor: Predictor,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_pixels: int = MAX_PIXELS,
    workers: int | None = None,
    policy: Policy | None = None,
) -> FastAPI:
    """The FastAPI app serving ``predictor``; it never loads anything a client names.

    ``workers``: how many requests are preprocessed and run at once, off the event loop
    (default: the CPU count). More threads than cores only queue behind Python's lock and
    stretch every request's latency. ``policy``: the Host names answered and the origins allowed
    (policy.py; default: any Host, no other origin), with the security headers on every answer.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # FastAPIOffline serves Swagger UI's scripts from the package itself: /docs works without internet.
    app = FastAPIOffline(
        title="mnist-nn",
        version=__version__,
        description="Handwritten-digit recognition: draw at `/`, or POST an image or 28x28 pixels to `/api/predict`.",
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    # Added last, so outermost: a refused Host or Origin costs nothing more, and every answer gets the headers.
    app.add_middleware(PolicyMiddleware, policy=policy or Policy(), page_csp=PAGE_CSP)
    _add_error_handlers(app)
    errors = functools.partial(documented_errors, max_body_bytes=max_body_bytes, max_pixels=max_pixels)
    _add_page_and_info(app, predictor, errors)
    add_model_route(app, predictor)  # the page's model, run in the browser (web_export)
    _add_predict(app, predictor, errors, CapacityLimiter(workers or cpus), max_pixels)
    app.mount("/static", _HeaderedStatic(directory=STATIC), name="static")
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI answers a list of error objects; this API's every error is one {"detail": "..."} line.
        return JSONResponse(ErrorResponse(detail=validation_detail(exc)).model_dump(), status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client's doing, and common (a closed tab, a timeout): one line, no trace. Nobody reads the answer.
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.warning("%s went away before its request was read: %s %s", client, request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, never a client's doing (client input is caught in predict): log it, answer without internals.
        # This answer leaves from outside every middleware, so it carries the security headers itself.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        headers = {"x-content-type-options": "nosniff", "content-security-policy": API_CSP}
        return JSONResponse(ErrorResponse(detail="internal server error").model_dump(), 500, headers=headers)


def _add_page_and_info(app: FastAPI, predictor: Predictor, errors: Callable[..., dict]) -> None:
    network = str(predictor.metadata.get("model", "model"))
    checkpoint = predictor.metadata.get("checkpoint")
    pretrained = bundled_name(checkpoint) if checkpoint else None
    model_name = pretrained or network
    info = ModelInfo(
        name=network,
        pretrained=pretrained,
        parameters=sum(p.numel() for p in predictor.pixel_model.model.parameters()),
        dataset=predictor.metadata.get("dataset"),
        labels=list(predictor.labels),
        test_accuracy=predictor.metadata.get("test_accuracy"),
    )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_page_headers())

    documented = {"responses": errors(ROUTE_ERRORS, images=False), "dependencies": [only_query()], "tags": ["api"]}

    @app.get("/api/health", response_model=Health, **documented)
    async def health() -> Health:
        return Health(status="ok", model=model_name, pretrained=pretrained, version=__version__)

    @app.get("/api/model", response_model=ModelInfo, **documented)
    async def model() -> ModelInfo:
        return info


def _add_predict(
    app: FastAPI, predictor: Predictor, errors: Callable[..., dict], limiter: CapacityLimiter, max_pixels: int
) -> None:
    # The digits of concurrent requests are read in one forward pass (batching.py); one Batcher per process.
    batcher = app.state.batcher = Batcher(predictor.zoomed_probabilities)
    model_name = bundled_model_name(predictor.metadata.get("checkpoint"), str(predictor.metadata.get("model", "model")))

    @app.post(
        "/api/predict",
        response_model=PredictResponse,
        responses=errors((*ROUTE_ERRORS, 415, 501), images=True),
        dependencies=[only_query("preprocess", "explain")],
        tags=["api"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": UPLOAD_SCHEMA},
                    "application/json": {"schema": PIXELS_SCHEMA},
                },
            }
        },
    )
    async def predict(
        request: Request,
        preprocess: bool = Query(
            True,
            description="prepare the image the CLI's way (find the ink, fit it to 20x20, centre it); false: the "
            "input is already 28x28 in MNIST form (light digit on dark)",
        ),
        explain: bool = Query(
            False,
            # An example makes the API's contract test (and /docs's "Try it out") ask for a map too.
            openapi_examples={"explain": {"summary": "answer with the map", "value": True}},
            description=f"also answer why: `explanation`, a 28x28 map of each pixel's part in the answer ({METHOD})",
        ),
    ) -> Response:
        """Read one digit from an image upload (multipart field `file`) or JSON `{"pixels": 28x28 of 0-255}`."""
        start = time.perf_counter()
        with batcher.expecting() as ticket:
            kind, source, name = await read_body(request)
            job = (predictor, kind, source, name, preprocess, max_pixels)
            if explain:  # 32 forward and backward passes: in a worker thread, on its own
                reading = await run_sync(_answer, *job, explain, limiter=limiter)
            else:
                reading = await _batched_answer(job, batcher, ticket, limiter)
        latency_ms = round(1000 * (time.perf_counter() - start), 3)
        # Returned as a Response, so FastAPI does not validate it a second time against response_model.
        return json_response(answer_of(PredictResponse, **reading, model=model_name, latency_ms=latency_ms))


class _HeaderedStatic(StaticFiles):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_page_headers(raw=True)]
            await send(message)

        await super().__call__(scope, receive, with_headers)


# Cross-origin isolation for the page and its files: ONNX Runtime Web runs the model on several threads
# only in an isolated page (shared memory); the page loads nothing from other origins, so nothing breaks.
ISOLATION_HEADERS = {"cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp"}


def _page_headers(raw: bool = False) -> Any:
    headers = {"content-security-policy": PAGE_CSP, "x-content-type-options": "nosniff", **ISOLATION_HEADERS}
    if raw:
        return [(k.encode(), v.encode()) for k, v in headers.items()]
    return headers


# --------------------------------------------------------------------------- request parsing


def parse_pixels(body: bytes) -> np.ndarray:
    """JSON ``{"pixels": 28x28 numbers 0-255}`` -> float32 [28, 28]; 422 with the reason otherwise."""
    try:
        data = orjson.loads(body)  # 3x the json module's speed on 784 numbers
    except ValueError:
        data = _loads(body)  # the json module's reading: its message, and NaN read (then refused below as such)
    if not isinstance(data, dict) or "pixels" not in data:
        raise HTTPException(422, 'expected a JSON object with a "pixels" field: 28 rows of 28 values 0-255')
    try:
        pixels = np.asarray(data["pixels"])
    except (ValueError, TypeError, OverflowError, RecursionError):
        pixels = None  # ragged rows
    if pixels is None or pixels.dtype.kind not in "iuf":
        raise HTTPException(422, '"pixels" must be 28 rows of 28 numbers, 0-255')
    if pixels.shape != (MNIST_SIZE, MNIST_SIZE):
        raise HTTPException(422, f'"pixels" must be 28x28, got shape {list(pixels.shape)}')
    pixels = pixels.astype(np.float64)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise HTTPException(422, '"pixels" values must be finite numbers from 0 to 255')
    return pixels.astype(np.float32)


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise HTTPException(422, f"malformed JSON: {exc}") from None


async def read_body(request: Request) -> tuple[str, bytes, str]:
    """(content type, body or file bytes, the image's name) of a predict request; 415 for another content type."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        # Parsed with the rest (in a worker thread when large: 5 MB of JSON is milliseconds of CPU).
        return kind, await request.body(), "pixels"
    if kind == "multipart/form-data":
        return kind, *await read_upload(request)
    raise HTTPException(
        415,
        f"unsupported content type {kind or '(none)'!r}: send multipart/form-data with an image "
        'in the field "file", or application/json {"pixels": 28x28 values 0-255}',
    )


async def read_upload(request: Request) -> tuple[bytes, str]:
    """The bytes and name of the file in the field "file"; 422 for a malformed form or any other form."""
    try:
        # The parser's own limits bound the work for a hostile form; what passes is checked below.
        form = await request.form(max_files=1, max_fields=8)
    except BodyTooLarge:
        raise
    except HTTPException as exc:  # Starlette's 400 for a malformed multipart body
        raise HTTPException(422, f"malformed multipart body: {exc.detail}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or len(form) > 1:
            raise HTTPException(422, _form_problem(form))
        data = await upload.read()
        return data, upload.filename or "upload"
    finally:
        await form.close()


def _form_problem(form: FormData) -> str:
    """Why a form other than one file in the field "file" is refused, naming the field it expects."""
    elsewhere = [key for key, value in form.multi_items() if isinstance(value, UploadFile) and key != "file"]
    if elsewhere:
        return f'the file came in the multipart field "{elsewhere[0]}": send the image in the multipart field "file"'
    if "file" in form and not isinstance(form["file"], UploadFile):
        return 'the multipart field "file" holds text, not a file: send the image in it as a file, with a filename'
    if "file" not in form:
        return 'no file in the upload: send the image in the multipart field "file"'
    other = next(key for key in form if key != "file")
    return f'unexpected multipart field "{other}": send the image alone, in the multipart field "file"'


def validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: 'query parameter preprocess: Input should be ...'."""
    reasons = []
    for error in exc.errors():
        where, *names = [str(part) for part in error.get("loc", ())] or ["request"]
        place = f"{where} parameter {'.'.join(names)}" if names else where
        reasons.append(f"{place}: {error.get('msg', 'invalid')}")
    # A message may quote the input, newlines and all: the detail stays one line.
    return " ".join("; ".join(reasons).split()) or "invalid request"


# --------------------------------------------------------------------------- inference


def _is_small(kind: str, body: bytes) -> bool:
    """Cheap enough to answer on the event loop: a small body, and for an image a small header size."""
    if len(body) > INLINE_MAX_BYTES:
        return False
    if kind == "application/json":
        return True
    pixels = image_pixels(body)
    return pixels is None or pixels <= INLINE_MAX_PIXELS  # an unreadable image fails fast either way


def warm_up(predictor: Predictor) -> list[str | int]:
    """Answer a drawing, 28x28 pixels and a file that is no image once, before serving.

    The first request of each kind would otherwise pay for lazy imports and first calls (Pillow's
    format plug-ins, the first forward pass): 10-30 ms, in each worker process. Done before the
    workers are forked, it is paid once. Returns each answer's status (a label's "ok", or the 4xx).
    """
    drawing = Image.new("L", (112, 112), 255)
    ImageDraw.Draw(drawing).line([(56, 14), (56, 98)], fill=0, width=8)
    buffer = io.BytesIO()
    drawing.save(buffer, format="PNG")
    pixels = json.dumps({"pixels": (255 - np.asarray(drawing.resize((MNIST_SIZE, MNIST_SIZE)))).tolist()}).encode()
    requests = (("multipart/form-data", buffer.getvalue()), ("application/json", pixels), ("multipart/form-data", b"?"))
    statuses: list[str | int] = []
    for kind, body in requests:
        try:
            statuses.append(_answer(predictor, kind, body, "warm-up", True, MAX_PIXELS)["status"])
        except HTTPException as exc:
            statuses.append(exc.status_code)
    return statuses


async def _batched_answer(job: tuple, batcher: Batcher, ticket: Ticket, limiter: CapacityLimiter) -> dict:
    """_answer's fields, the model's forward pass shared with concurrent requests (batching.py).

    The image is parsed and preprocessed on the event loop when small (see _is_small), else in a
    worker thread, so that a photo never holds up the small ones; the batch runs on the loop.
    """
    predictor, kind, source, name = job[:4]
    found = _prepare(*job) if _is_small(kind, source) else await run_sync(_prepare, *job, limiter=limiter)
    if isinstance(found, ImageReading):
        return _fields(predictor, found)
    probabilities = await batcher.probabilities(np.stack([segment.pixels for segment in found]), ticket)
    return _fields(predictor, predictor.reading_of(name, found, probabilities, top_k=3))


def _answer(
    predictor: Predictor, kind: str, body: bytes, name: str, preprocess: bool, max_pixels: int, explain: bool = False
) -> dict:
    """Parse one request's image and read it the Predictor's one way, unbatched (CPU-bound: see _is_small).

    Returns PredictResponse's fields but the two the route adds (``model``, ``latency_ms``).
    ``explain``: add the normalized attribution map of the answer (``explain.attributions``).
    """
    found = _prepare(predictor, kind, body, name, preprocess, max_pixels)
    if isinstance(found, ImageReading):
        return _fields(predictor, found)
    probabilities = predictor.zoomed_probabilities(np.stack([segment.pixels for segment in found]))
    return _fields(predictor, predictor.reading_of(name, found, probabilities, top_k=3), explain)


def _prepare(
    predictor: Predictor, kind: str, body: bytes, name: str, preprocess: bool, max_pixels: int
) -> list[Segment] | ImageReading:
    """The request's digit to read (Predictor.find_digits), or the reading of an image without one; 4xx if unusable."""
    source = parse_pixels(body) if kind == "application/json" else body
    try:
        return predictor.find_digits(source, preprocess=preprocess, max_pixels=max_pixels)
    except ImageError as exc:
        if exc.__cause__ is not None:  # the preprocessing failed unforeseen: keep the trace for us
            log.warning("could not process %s", name, exc_info=exc.__cause__)
        raise HTTPException(image_error_status(exc), str(exc).replace(source_name(source), name, 1)) from None


def _fields(predictor: Predictor, reading: ImageReading, explain: bool = False) -> dict:
    """PredictResponse's fields of a reading, but ``model`` and ``latency_ms``."""
    if not reading.found:
        return {
            "status": "no digit found",
            "label": None,
            "reason": reading.reason,
            "confidence": None,
            "probabilities": None,
            "top": [],
            "seen": None,
            "explanation": None,
        }
    digit = reading.digits[0]
    return {
        "status": "ok",
        "label": digit.label,
        "reason": None,
        "confidence": digit.confidence,
        "probabilities": dict(zip(predictor.labels, reading.probabilities[0].tolist(), strict=True)),
        "top": digit.top,
        "seen": reading.seen[0].tolist(),
        "explanation": _explanation(predictor, reading) if explain else None,
    }


def _explanation(predictor: Predictor, reading: ImageReading) -> list[list[float]]:
    """The first digit's map, normalized to [-1, 1] and rounded: 4 decimals are finer than a page shows."""
    from mnist_nn.lab.explain import attributions, normalized

    try:
        maps = attributions(predictor, reading.pixels[:1], targets=reading.probabilities[:1].argmax(1))
    except ExplainUnavailable as exc:
        raise HTTPException(501, f"this server cannot explain: {exc}") from None
    return np.round(normalized(maps)[0], 4).tolist()


def image_error_status(exc: ImageError) -> int:
    """The HTTP status for an unusable image, by its type: too many pixels is 413, like too many bytes."""
    return 413 if isinstance(exc, ImageTooLarge) else 422
