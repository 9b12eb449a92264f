"""Scoring through real HTTP (a uvicorn server) with every ingest form."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import torch

from models import signal
from service.api import create_app
from service.decode import Limits, sample_frames
from service.ingest import RawFrames
from tests import videos
from tests.conftest import start_server, test_settings

DIMS = [f"signal.{d}" for d in signal.SPEC.dimension_names]


def expected_scores(frames: np.ndarray, fps: float = 16.0) -> dict[str, float]:
    clip = sample_frames(RawFrames(frames, fps), signal.SPEC, Limits(10**9, 10**6, 10**6)).frames.numpy()
    out = signal.forward(torch.from_numpy(clip[None]), torch.tensor([len(clip)]))[0]
    return dict(zip(DIMS, out.tolist()))


def test_health_ready_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and "signal" in ready.json()["models"]
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert [d["name"] for d in models["signal"]["dimensions"]] == signal.SPEC.dimension_names
    assert all(d["range"] == [0.0, 1.0] and d["higher_is_better"] for d in models["signal"]["dimensions"])


def test_openapi_documents_the_score_endpoint(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "ScoreRequest" in spec["components"]["schemas"] and "VideoRef" in spec["components"]["schemas"]


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_multipart_upload(client, clean_frames, clean_mp4, clean_webm, fmt):
    data = clean_mp4 if fmt == "mp4" else clean_webm
    # refresh: computed here even when another test already scored this session-wide clip
    r = client.post("/v1/score", data={"cache": "refresh"}, files={"video": (f"clip.{fmt}", data, f"video/{fmt}")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["models"] == [{"name": "signal", "version": signal.SPEC.version}]
    (result,) = body["results"]
    assert set(result["scores"]) == set(DIMS) and result["cached"] is False
    assert result["overall"] == pytest.approx(np.mean(list(result["scores"].values())), abs=1e-9)
    # A lossy encode barely moves the scores from those of the source frames.
    for key, value in expected_scores(clean_frames).items():
        assert result["scores"][key] == pytest.approx(value, abs=0.05), key


def test_multipart_empty_fields_count_as_not_sent(client, clean_mp4):
    """What an HTML form sends for its unfilled fields (schemathesis sent these: 422 before)."""
    empty = {name: "" for name in ("request", "prompt", "model", "weights", "preset", "fps")}
    r = client.post(
        "/v1/score", data=empty | {"cache": "bypass"}, files={"video": ("clip.mp4", clean_mp4, "video/mp4")}
    )
    assert r.status_code == 200, r.text
    assert [m["name"] for m in r.json()["models"]] == ["signal"]


def test_raw_frames_equal_the_model_on_the_same_frames(client, clean_frames):
    payload = {"frames": base64.b64encode(videos.npy_bytes(clean_frames)).decode(), "fps": 16}
    r = client.post("/v1/score", json={"items": [{"video": payload}]})
    assert r.status_code == 200, r.text
    got = r.json()["results"][0]["scores"]
    for key, value in expected_scores(clean_frames).items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_base64_container_many_items_and_weights(client, clean_frames, clean_mp4):
    blurred = videos.encode(videos.blur(clean_frames))
    items = [{"video": {"data": base64.b64encode(v).decode()}} for v in (clean_mp4, blurred)]
    weights = {"signal.sharpness": 2.0, "signal.exposure": 1.0}
    r = client.post("/v1/score", json={"items": items, "weights": weights})
    assert r.status_code == 200, r.text
    clean, blur = r.json()["results"]
    assert [clean["index"], blur["index"]] == [0, 1]
    assert blur["scores"]["signal.sharpness"] < clean["scores"]["signal.sharpness"]
    for res in (clean, blur):
        assert res["overall"] == pytest.approx(2 * res["scores"]["signal.sharpness"] + res["scores"]["signal.exposure"])


def test_multipart_with_request_field_and_prompts(client, clean_mp4, clean_webm):
    request = {
        "models": ["signal", "prompt-probe"],
        "items": [{"video": {"file": "a"}, "prompt": "a cat"}, {"video": {"file": "b"}, "prompt": "a red car"}],
    }
    r = client.post("/v1/score", data={"request": json.dumps(request)}, files={"a": clean_mp4, "b": clean_webm})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["scores"]["prompt-probe.length"] == pytest.approx(len("a cat") + 0.033)
    assert second["scores"]["prompt-probe.length"] == pytest.approx(len("a red car") + 0.033)
    assert "signal.sharpness" in first["scores"]


def test_url_ingest_and_redirect(client, origin, clean_frames):
    direct = client.post("/v1/score", json={"items": [{"video": {"url": f"{origin}/clip.mp4"}}]})
    assert direct.status_code == 200, direct.text
    hop = f"{origin}/redirect?to={origin}/clip.mp4"
    redirected = client.post("/v1/score", json={"items": [{"video": {"url": hop}}]})
    assert redirected.status_code == 200, redirected.text
    assert redirected.json()["results"][0]["scores"] == direct.json()["results"][0]["scores"]


def test_an_unexpected_error_is_a_500_that_closes_its_connection():
    """A bug answers 500 ``internal`` (no details) and says ``Connection: close``: the server drops
    the connection after an unhandled error, and a client that reused it got a reset on its next
    request (found by a probe: a ZeroDivisionError in /v1/rank, since fixed)."""
    app = create_app(test_settings())

    @app.get("/boom")
    async def boom():
        raise ZeroDivisionError("a bug")

    running = start_server(app)
    try:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            answer = client.get("/boom")
            assert answer.status_code == 500 and answer.json()["error"] == {
                "code": "internal",
                "message": "internal error",
                "item": None,
            }
            assert answer.headers["connection"] == "close"
            assert client.get("/healthz").status_code == 200  # on a new connection
    finally:
        running.stop()
