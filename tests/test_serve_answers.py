"""The server's answers are its declared response models: every field, in the model's order, of the model's types.

/api/predict builds its answer unvalidated (``app.answer_of``: validating 784 pixels on every request
costs throughput), so this is where an answer that drifts from PredictResponse fails.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from pydantic import BaseModel

from mnist_nn.apps.serve.app import ErrorResponse, Health, ModelInfo, PredictResponse, answer_of, create_app
from mnist_nn.inference.predictor import Predictor


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawn_one() -> bytes:
    image = Image.new("L", (112, 112), 255)
    ImageDraw.Draw(image).line([(56, 14), (56, 98)], fill=0, width=8)
    return png(image)


ONE = np.zeros((28, 28), dtype=int)
ONE[4:24, 13:16] = 255


@pytest.fixture(scope="module")
def client(random_checkpoint):
    with TestClient(create_app(Predictor.from_checkpoint(random_checkpoint))) as test_client:
        yield test_client


def assert_is_a(model: type[BaseModel], body: bytes) -> None:
    """``body`` is exactly a ``model``: its fields in order, none more, each of its type (no coercion)."""
    answer = json.loads(body)
    assert list(answer) == list(model.model_fields), f"{model.__name__}: {list(answer)}"
    assert model.model_validate_json(body, strict=True).model_dump(mode="json") == answer


REQUESTS = {
    "upload": ({"files": {"file": ("one.png", drawn_one(), "image/png")}}, "ok"),
    "pixels": ({"json": {"pixels": ONE.tolist()}}, "ok"),
    "pixels as they are": ({"json": {"pixels": ONE.tolist()}, "params": {"preprocess": "false"}}, "ok"),
    "large upload (in a thread)": (
        {"files": {"file": ("big.png", png(Image.open(io.BytesIO(drawn_one())).resize((600, 600))), "image/png")}},
        "ok",
    ),
    "blank": ({"files": {"file": ("blank.png", png(Image.new("L", (60, 60), 255)), "image/png")}}, "no digit found"),
    "explained": ({"json": {"pixels": ONE.tolist()}, "params": {"explain": "true"}}, "ok"),
}


@pytest.mark.parametrize("name", REQUESTS)
def test_every_kind_of_prediction_is_a_predict_response(client, name):
    if name == "explained":
        pytest.importorskip("captum")
    request, status = REQUESTS[name]
    response = client.post("/api/predict", **request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert_is_a(PredictResponse, response.content)
    assert response.json()["status"] == status
    assert (response.json()["explanation"] is not None) == (name == "explained")


def test_the_other_answers_are_their_models(client):
    assert_is_a(Health, client.get("/api/health").content)
    assert_is_a(ModelInfo, client.get("/api/model").content)
    for response in (
        client.post("/api/predict", content=b"{", headers={"content-type": "application/json"}),
        client.post("/api/predict", params={"preprocess": "maybe"}, json={"pixels": 1}),
        client.post("/api/predict", content=b"x", headers={"content-type": "text/plain"}),
        client.get("/api/nothing"),
    ):
        assert response.status_code >= 400
        assert_is_a(ErrorResponse, response.content)


def test_an_answer_missing_a_field_or_naming_another_is_refused():
    fields = {"status": "ok", "model": "m", "pretrained": None, "version": "1"}
    assert answer_of(Health, **fields) == Health(**fields)
    with pytest.raises(TypeError, match=r"Health: fields missing \['version'\], unknown \[\]"):
        answer_of(Health, status="ok", model="m", pretrained=None)
    with pytest.raises(TypeError, match=r"fields missing \['version'\], unknown \['versoin'\]"):
        answer_of(Health, status="ok", model="m", pretrained=None, versoin="1")
    with pytest.raises(TypeError, match=r"fields missing \['reason'\]"):  # a field with a default is no exception
        answer_of(PredictResponse, **{name: None for name in PredictResponse.model_fields if name != "reason"})
