"""`mnist-nn serve`: every endpoint, every limit, garbage in never a 500, the CLI's errors, the load script."""

from __future__ import annotations

import io
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from conftest import REPO
from live_server import live_server
from mnist_nn.apps.serve.app import MAX_BODY_BYTES, MAX_PIXELS, BodyLimitMiddleware, create_app
from mnist_nn.cli import main
from mnist_nn.inference.predictor import Predictor
from mnist_nn.inference.preprocess import ImageError, ImageTooLarge, load_grayscale

MB = 2**20


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawn_one(size: int = 112) -> Image.Image:
    """A '1' as the page draws it: a dark vertical stroke on white."""
    image = Image.new("L", (size, size), 255)
    ImageDraw.Draw(image).line([(size // 2, size // 8), (size // 2, size - size // 8)], fill=0, width=size // 14)
    return image


def upload(data: bytes, name: str = "digit.png", kind: str = "image/png") -> dict:
    return {"files": {"file": (name, data, kind)}}


@pytest.fixture(scope="module")
def predictor(random_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(random_checkpoint)


@pytest.fixture(scope="module")
def client(predictor) -> TestClient:
    with TestClient(create_app(predictor)) as test_client:
        yield test_client


# --------------------------------------------------------------------------- endpoints


def test_health(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["model"] == "tutorial-mlp"
    assert response.json()["pretrained"] is None  # a checkpoint of one's own, not a bundled model


def test_model_reports_name_parameters_and_recorded_accuracy(client):
    info = client.get("/api/model").json()
    assert info == {
        "name": "tutorial-mlp",
        "pretrained": None,
        "parameters": 175_306,
        "dataset": "mnist",
        "labels": [str(d) for d in range(10)],
        "test_accuracy": 0.1,
    }
    assert "checkpoint" not in json.dumps(info)  # the server's file paths stay private


def test_upload_answers_with_the_predictors_own_preprocessing(client, predictor):
    data = png_bytes(drawn_one())
    response = client.post("/api/predict", **upload(data))
    assert response.status_code == 200
    body = response.json()
    expected = predictor.probabilities(predictor.prepare(data)[0].pixels)[0]
    probabilities = np.array(list(body["probabilities"].values()))
    assert list(body["probabilities"]) == [str(d) for d in range(10)]
    assert np.allclose(probabilities, expected.numpy(), atol=1e-6)
    assert body["status"] == "ok" and body["label"] == str(int(expected.argmax()))
    assert body["confidence"] == pytest.approx(float(expected.max()))
    assert body["top"][0]["label"] == body["label"] and len(body["top"]) == 3
    assert body["model"] == "tutorial-mlp" and body["latency_ms"] > 0
    seen = np.array(body["seen"])
    assert seen.shape == (28, 28) and seen.min() >= 0 and seen.max() == 255
    # The CLI's path gives the same answer for the same bytes.
    assert predictor.predict(data).label == body["label"]


def test_json_pixels_are_prepared_or_used_as_they_are(client, predictor):
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[4:24, 13:16] = 255  # a '1' in MNIST form: light on dark
    raw = client.post("/api/predict", params={"preprocess": "false"}, json={"pixels": pixels.tolist()}).json()
    assert np.allclose(list(raw["probabilities"].values()), predictor.probabilities(pixels)[0].numpy(), atol=1e-6)
    assert raw["seen"] == pixels.tolist()
    prepared = client.post("/api/predict", json={"pixels": pixels.tolist()}).json()
    expected = predictor.probabilities(predictor.prepare(pixels.astype(np.float32))[0].pixels)[0]
    assert np.allclose(list(prepared["probabilities"].values()), expected.numpy(), atol=1e-6)
    # Dark ink on white works too: preprocessing finds the polarity, as for an image file.
    inverted = client.post("/api/predict", json={"pixels": (255 - pixels).tolist()}).json()
    assert inverted["label"] == prepared["label"]


def test_small_requests_are_answered_on_the_loop_large_ones_in_a_thread(predictor, monkeypatch):
    """A drawing or 28x28 pixels costs less than a thread hand-off; a photo must not hold up the loop."""
    import mnist_nn.apps.serve.app as app_module

    handed_off = []

    async def counting_run_sync(function, *args, **kwargs):
        handed_off.append(args[2][:4])
        return function(*args)

    monkeypatch.setattr(app_module, "run_sync", counting_run_sync)
    photo = drawn_one(600).convert("RGB").resize((600, 600))  # 360,000 pixels
    with TestClient(create_app(predictor)) as test_client:
        answers = [
            test_client.post("/api/predict", **upload(png_bytes(drawn_one()))),
            test_client.post("/api/predict", json={"pixels": [[0] * 28] * 28}),
            test_client.post("/api/predict", **upload(b"not an image at all")),
            test_client.post("/api/predict", **upload(png_bytes(photo))),
        ]
    assert [a.status_code for a in answers] == [200, 200, 422, 200]
    assert handed_off == [png_bytes(photo)[:4]]  # only the photo went to a worker thread


def test_the_api_and_the_cli_read_through_the_same_method(client, predictor, monkeypatch):
    """Both answer from Predictor.read_image's halves (the server batches between them): one reading each."""
    calls = []
    original = Predictor.reading_of

    def spy(self, *args, **options):
        reading = original(self, *args, **options)
        calls.append(reading)
        return reading

    monkeypatch.setattr(Predictor, "reading_of", spy)
    data = png_bytes(drawn_one())
    body = client.post("/api/predict", **upload(data)).json()
    cli = predictor.predict(data)
    assert len(calls) == 2
    served, read = calls
    assert body["label"] == served.digits[0].label == cli.label == read.digits[0].label
    assert body["confidence"] == cli.confidence and body["top"] == cli.top
    assert list(body["probabilities"].values()) == served.probabilities[0].tolist()
    assert body["seen"] == served.seen[0].tolist() == read.seen[0].tolist()


def test_explain_answers_the_map_of_the_digit_seen(client, predictor, monkeypatch):
    """explain=true adds `explanation`: explain.py's map of the answer for the pixels in `seen`, -1 to 1."""
    import mnist_nn.apps.serve.app as app_module
    from mnist_nn.lab.explain import attributions, normalized

    handed_off = []
    original_run_sync = app_module.run_sync

    async def counting_run_sync(function, *args, **kwargs):
        handed_off.append(args[-1])
        return await original_run_sync(function, *args, **kwargs)

    monkeypatch.setattr(app_module, "run_sync", counting_run_sync)
    data = png_bytes(drawn_one())
    plain = client.post("/api/predict", **upload(data)).json()
    body = client.post("/api/predict", params={"explain": "true"}, **upload(data)).json()
    assert handed_off == [True]  # only the explanation went to a worker thread: 32 passes are not for the loop
    assert plain["explanation"] is None
    same = [key for key in plain if key not in ("explanation", "latency_ms")]
    assert {key: body[key] for key in same} == {key: plain[key] for key in same} and set(body) == set(plain)
    explanation = np.array(body["explanation"])
    assert explanation.shape == (28, 28) and np.abs(explanation).max() == 1.0
    seen = np.array(body["seen"], dtype=np.float32)
    label = int(body["label"])
    expected = normalized(attributions(predictor, predictor.prepare(data)[0].pixels, targets=[label]))[0]
    assert np.allclose(explanation, expected, atol=1e-4)
    assert (explanation[seen == 0] == 0).all()  # the map lies on the ink
    blank = client.post("/api/predict", params={"explain": "true"}, json={"pixels": [[0] * 28] * 28}).json()
    assert blank["status"] == "no digit found" and blank["explanation"] is None


def test_explain_without_captum_is_501_saying_so(client, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "captum" else real(name, *a))
    response = client.post("/api/predict", params={"explain": "true"}, **upload(png_bytes(drawn_one())))
    assert response.status_code == 501
    assert response.json() == {
        "detail": 'this server cannot explain: explanations need Captum: pip install "mnist-nn[lab]"'
    }
    assert client.post("/api/predict", **upload(png_bytes(drawn_one()))).status_code == 200  # answers still work


def test_blank_image_is_no_digit_not_an_error(client):
    for request in (upload(png_bytes(Image.new("L", (112, 112), 255))), {"json": {"pixels": [[0] * 28] * 28}}):
        response = client.post("/api/predict", **request)
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "no digit found" and body["label"] is None and body["seen"] is None
        assert body["reason"].startswith("no ink")


def test_page_and_its_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    for needle in (
        '<canvas id="pad"',
        'id="clear"',
        'id="upload"',
        'type="file"',
        'id="bars"',
        'id="seen"',
        'id="why"',
    ):
        assert needle in html
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        response = client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"]
        html += response.text
    assert "http://" not in html and "https://" not in html  # no CDN: works offline


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/api/predict", "/api/health", "/api/model"}
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    # Every status each operation answers, every error with the one body shape it really has.
    statuses = {path: set(next(iter(item.values()))["responses"]) for path, item in spec["paths"].items()}
    assert statuses == {
        "/api/predict": {"200", "400", "413", "415", "422", "500", "501"},
        "/api/health": {"200", "400", "413", "422", "500"},
        "/api/model": {"200", "400", "413", "422", "500"},
    }
    for item in spec["paths"].values():
        for status, response in next(iter(item.values()))["responses"].items():
            schema = response["content"]["application/json"]["schema"]["$ref"]
            assert status == "200" or schema == "#/components/schemas/ErrorResponse"
    assert spec["components"]["schemas"]["ErrorResponse"]["properties"] == {
        "detail": {"type": "string", "title": "Detail"}
    }
    docs = client.get("/docs")
    assert docs.status_code == 200
    # Swagger UI's own scripts come from this server, not a CDN: the docs page works offline.
    assert "cdn.jsdelivr.net" not in docs.text and "unpkg.com" not in docs.text
    scripts = [part.split('"')[0] for part in docs.text.split('src="')[1:]]
    assert scripts and all(client.get(src).status_code == 200 for src in scripts)


def test_no_request_can_make_the_server_load_a_checkpoint(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a request loaded a checkpoint")

    monkeypatch.setattr("mnist_nn.models.checkpoint.load_checkpoint", refuse)
    monkeypatch.setattr(Predictor, "from_checkpoint", refuse)
    pixels = [[0] * 28] * 28
    response = client.post("/api/predict", json={"pixels": pixels, "checkpoint": "/etc/passwd"})
    assert response.status_code == 200
    # A query parameter the API does not take is refused, not ignored as if it had been obeyed.
    refused = client.post("/api/predict", params={"checkpoint": "model.pt"}, json={"pixels": pixels})
    assert refused.status_code == 422
    assert refused.json() == {
        "detail": "unknown query parameter 'checkpoint': /api/predict takes only 'preprocess', 'explain'"
    }


@pytest.mark.realdata
def test_trained_model_reads_real_mnist_digits_through_the_api(trained_checkpoint, mnist_dir):
    from mnist_nn.data.datasets import load_dataset

    splits = load_dataset("mnist", mnist_dir, allow_download=False)
    images, labels = splits.test_images[:100].numpy(), splits.test_labels[:100].tolist()
    trained = Predictor.from_checkpoint(trained_checkpoint)
    with TestClient(create_app(trained)) as api:
        answers = [
            api.post("/api/predict", params={"preprocess": "false"}, json={"pixels": image.tolist()}).json()["label"]
            for image in images
        ]
        drawn = api.post("/api/predict", **upload(png_bytes(drawn_one()))).json()
    expected = trained.probabilities(images).argmax(1).tolist()
    assert answers == [str(i) for i in expected]  # the API and the Predictor agree digit for digit
    assert sum(a == str(y) for a, y in zip(answers, labels, strict=True)) >= 90
    assert drawn["label"] == "1"


# --------------------------------------------------------------------------- limits


def test_declared_body_over_5_mb_is_413(client):
    big = b"0" * (MAX_BODY_BYTES + 1)
    for request in ({"content": big, "headers": {"content-type": "application/json"}}, upload(big)):
        response = client.post("/api/predict", **request)
        assert response.status_code == 413 and "too large" in response.json()["detail"]
    assert client.post("/api/predict", **upload(b"0" * (MAX_BODY_BYTES - 1024))).status_code == 422  # under: read


def test_streamed_body_is_cut_off_without_reading_it_whole(predictor):
    """A chunked body (no Content-Length) is counted as it arrives; the server stops at the limit."""
    app = create_app(predictor)
    chunks_read = 0

    async def endless_receive():
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b"x" * MB, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/predict",
        "raw_path": b"/api/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    import anyio

    anyio.run(app, scope, endless_receive, send)
    assert sent[0]["status"] == 413
    assert chunks_read <= MAX_BODY_BYTES // MB + 1


def test_chunked_upload_over_the_limit_is_413_on_a_real_server(predictor):
    with live_server(create_app(predictor)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"%x\r\n%s\r\n" % (MB, b"x" * MB)
            try:
                for _ in range(8):  # 8 MB offered; the server answers once it has seen 5 MB
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels: a decompression bomb's header, with no real data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_pixel_bombs_are_refused_before_decoding(client):
    for width, height in ((100_000, 100_000), (5_000, 4_000)):  # over Pillow's own limit; over the server's 16 MP
        response = client.post("/api/predict", **upload(_png_header_only(width, height), "bomb.png"))
        assert response.status_code == 413, response.text
        assert "bomb.png: image too large" in response.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "text/plain"}, {"content-type": "image/png"}, {"content-type": "application/xml"}, {}],
)
def test_wrong_content_type_is_415(client, headers):
    response = client.post("/api/predict", content=png_bytes(drawn_one()), headers=headers)
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


def test_too_many_pixels_is_413_by_its_type_not_its_words(client, monkeypatch):
    """ImageTooLarge is raised wherever the pixel count is refused; the status follows the type alone."""
    for width, height in ((100_000, 100_000), (5_000, 4_000)):  # refused by Pillow's limit; by ours
        with pytest.raises(ImageTooLarge, match="image too large"):
            load_grayscale(_png_header_only(width, height), max_pixels=MAX_PIXELS)

    def refuse(error):
        def find_digits(self, source, **options):  # the first half of read_image, where images are refused
            raise error

        monkeypatch.setattr(Predictor, "find_digits", find_digits)
        return client.post("/api/predict", **upload(png_bytes(drawn_one()), "x.png"))

    assert refuse(ImageTooLarge("<bytes>: 30,000 x 30,000")).status_code == 413
    answer = refuse(ImageError("<bytes>: image too large, says the message of a plain ImageError"))
    assert answer.status_code == 422 and answer.json()["detail"].startswith("x.png: image too large")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"pixels": [[0, 1, ', "malformed JSON"),
        (b"\xff\xfe\x00garbage", "malformed JSON"),
        (b"[1, 2, 3]", '"pixels" field'),
        (b'{"pixel": []}', '"pixels" field'),
        (json.dumps({"pixels": [[0] * 28] * 27}).encode(), "must be 28x28, got shape [27, 28]"),
        (json.dumps({"pixels": [[0] * 28] * 27 + [[0] * 27]}).encode(), "28 rows of 28 numbers"),
        (json.dumps({"pixels": [[[0, 0, 0]] * 28] * 28}).encode(), "must be 28x28"),
        (json.dumps({"pixels": [["0"] * 28] * 28}).encode(), "28 rows of 28 numbers"),
        (json.dumps({"pixels": [[None] * 28] * 28}).encode(), "28 rows of 28 numbers"),
        (json.dumps({"pixels": [[256] * 28] * 28}).encode(), "0 to 255"),
        (json.dumps({"pixels": [[-1] * 28] * 28}).encode(), "0 to 255"),
        (b'{"pixels": [' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]}", "finite"),
        (b'{"pixels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", ""),
        (b'{"pixels": 7}', "must be 28x28"),
    ],
)
def test_malformed_json_or_wrong_shape_is_422_with_a_message(client, body, message):
    response = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        (upload(b"a shopping list", "notes.txt", "text/plain"), "notes.txt: not an image"),
        (upload(b"", "empty.png"), "empty.png: empty file"),
        (upload(png_bytes(drawn_one())[:60], "cut.png"), "cut.png:"),
        (
            {"files": {"note": (None, "no file here")}},
            'no file in the upload: send the image in the multipart field "file"',
        ),
        (
            {"content": b"--x\r\nnot a part", "headers": {"content-type": "multipart/form-data; boundary=x"}},
            "malformed multipart body",
        ),
        ({"content": b"whatever", "headers": {"content-type": "multipart/form-data"}}, "malformed multipart body"),
        (
            {"files": {"image": ("digit.png", png_bytes(drawn_one()), "image/png")}},
            'the file came in the multipart field "image": send the image in the multipart field "file"',
        ),
        (
            {"files": {"file": (None, "not a file part")}},
            'the multipart field "file" holds text, not a file',
        ),
        (
            {"files": [("file", ("a.png", b"1", "image/png")), ("file", ("b.png", b"2", "image/png"))]},
            "malformed multipart body: Too many files",
        ),
        (
            {"files": {"file": ("digit.png", png_bytes(drawn_one()), "image/png"), "note": (None, "a 7")}},
            'unexpected multipart field "note": send the image alone, in the multipart field "file"',
        ),
    ],
)
def test_bad_uploads_are_422_with_a_message(client, request_kwargs, message):
    response = client.post("/api/predict", **request_kwargs)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_bad_query_and_unknown_routes_are_4xx_json(client):
    response = client.post("/api/predict", params={"preprocess": "maybe"}, json={"pixels": [[0] * 28] * 28})
    assert response.status_code == 422 and "detail" in response.json()
    # One line, like every other error of this API (FastAPI's own answer is a list of objects).
    assert response.json() == {
        "detail": "query parameter preprocess: Input should be a valid boolean, unable to interpret input"
    }
    for path in ("/api/health", "/api/model"):
        unknown = client.get(path, params={"verbose": "1"})
        assert unknown.status_code == 422
        assert unknown.json() == {"detail": f"unknown query parameter 'verbose': {path} takes no query parameters"}
    assert client.get("/api/predict").status_code == 405
    missing = client.get("/api/nothing")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}


def test_garbage_never_gives_a_500(client):
    rng = random.Random(0)
    png = png_bytes(drawn_one())
    bodies = [bytes(rng.randrange(256) for _ in range(rng.choice((1, 17, 300, 5000)))) for _ in range(12)]
    bodies += [png[:n] + bytes(rng.randrange(256) for _ in range(64)) for n in (8, 33, 100, len(png) - 20)]
    bodies += [b"GIF89a" + bytes(40), b"BM" + bytes(60), b"\xff\xd8\xff" + bytes(100), b"II*\x00" + bytes(50)]
    kinds = ["application/json", "multipart/form-data; boundary=zz", "application/json; charset=latin-1"]
    statuses = []
    for body in bodies:
        statuses.append(client.post("/api/predict", **upload(body, "garbage.bin")).status_code)
        for kind in kinds:
            statuses.append(client.post("/api/predict", content=body, headers={"content-type": kind}).status_code)
    values = [
        "null",
        "true",
        '"x"',
        "1e400",
        "[]",
        "{}",
        "[[[]]]",
        "[" + ",".join(["[" + ",".join(["1e400"] * 28) + "]"] * 28) + "]",
    ]
    values += [json.dumps([[True] * 28] * 28), json.dumps([[10**30] * 28] * 28), json.dumps([[10**400] * 28] * 28)]
    for value in values:
        body = b'{"pixels": ' + value.encode() + b"}"
        statuses.append(client.post("/api/predict", content=body, headers={"content-type": kinds[0]}).status_code)
    assert all(status < 500 for status in statuses), statuses
    assert 422 in statuses and set(statuses) <= {200, 413, 415, 422}


def test_inference_does_not_block_the_event_loop(predictor, monkeypatch):
    """While one prediction of a large image is stuck in its worker thread, the server still answers others."""
    import httpx

    release, entered = threading.Event(), threading.Event()
    original = Predictor.prepare

    def slow_prepare(self, *args, **kwargs):
        entered.set()
        release.wait(30)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "prepare", slow_prepare)
    results = {}
    with live_server(create_app(predictor)) as url:

        def stuck_request():
            # Larger than what is answered on the loop itself (see test_small_requests_are_answered_on_the_loop...).
            photo = Image.new("L", (400, 400), 255)
            ImageDraw.Draw(photo).line([(200, 60), (200, 340)], fill=0, width=30)
            files = {"file": ("photo.png", png_bytes(photo), "image/png")}
            results["stuck"] = httpx.post(f"{url}/api/predict", files=files, timeout=60)

        thread = threading.Thread(target=stuck_request)
        thread.start()
        assert entered.wait(30)
        assert httpx.get(f"{url}/api/health", timeout=20).status_code == 200  # answered while the other waits
        assert thread.is_alive()
        release.set()
        thread.join(60)
    assert results["stuck"].status_code == 200


def test_middleware_passes_other_scopes_through():
    calls = []

    async def inner(scope, receive, send):
        calls.append(scope["type"])

    import anyio

    anyio.run(BodyLimitMiddleware(inner), {"type": "lifespan"}, None, None)
    assert calls == ["lifespan"]


# --------------------------------------------------------------------------- the CLI


def test_serve_missing_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist-nn: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_serve_port_in_use_is_one_line_exit_2(random_checkpoint, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(random_checkpoint), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--port", "70000"], "--port must be from 1 to 65535"), (["--host", "no.such.host.invalid"], "cannot listen")],
)
def test_serve_bad_port_or_host_is_exit_2(random_checkpoint, capsys, argv, message):
    assert main(["serve", str(random_checkpoint), *argv]) == 2
    assert message in capsys.readouterr().err


def test_serve_without_the_extra_says_how_to_install_it(random_checkpoint, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", str(random_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "uvicorn missing" in err and 'pip install "mnist-nn[serve]"' in err and err.count("\n") == 1


# --------------------------------------------------------------------------- the load script


def test_load_script_runs_end_to_end(random_checkpoint, tmp_path):
    """Plumbing only (the figures are measured by running it): it starts `mnist-nn serve`, counts, writes JSON."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "load.py"),
            str(random_checkpoint),
            "--clients",
            "4",
            "--requests",
            "40",
            "--malformed",
            "0.25",
            "--warmup",
            "2",
            "--repeats",
            "2",
            "--workers",
            "2",
            "--results",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    data = json.loads((tmp_path / "load-malformed.json").read_text())
    assert data["requests"] == 40 and data["malformed"] == 10 and data["valid"] == 30
    assert data["errors"] == 0 and data["status_counts"]["200"] == 30
    assert sum(v for k, v in data["status_counts"].items() if k.startswith("4")) == 10
    assert data["throughput_rps"] > 0 and {"p50", "p99"} <= set(data["latency_ms"])
    assert data["repeats"] == 2 and len(data["runs"]) == 2 and data["server_workers"] == 2
    assert data["latency_ms"]["p99"] == sorted(run["p99"] for run in data["runs"])[1]  # the worse of two
    assert "run 2/2" in done.stdout and "on 2 worker processes" in done.stdout
