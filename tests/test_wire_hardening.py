"""Wire-level hardening: strict types, finite numbers, bounded echoes, `others` for ingest errors,
and 200 responses that validate against the app's own OpenAPI schema (edge cases included)."""

from __future__ import annotations

import base64

import httpx
import jsonschema
import numpy as np
import pytest
import torch

from tests import videos
from tests.test_bad_input import assert_error


@pytest.fixture(scope="module")
def http(scoring_gateway):
    with httpx.Client(base_url=scoring_gateway.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def refs(group_mp4) -> list[dict]:
    return [{"data": base64.b64encode(v).decode()} for v in group_mp4]


@pytest.fixture(scope="module")
def openapi(http) -> dict:
    return http.get("/openapi.json").json()


def assert_matches_schema(openapi: dict, response: httpx.Response, component: str) -> None:
    """A 200 body validates against ``#/components/schemas/<component>`` of the app's OpenAPI document."""
    assert response.status_code == 200, response.text
    schema = {"$ref": f"#/components/schemas/{component}", "components": openapi["components"]}
    jsonschema.Draft202012Validator(schema).validate(response.json())


def post_raw(http: httpx.Client, path: str, text: str) -> httpx.Response:
    """JSON text as written (``Infinity`` is not valid JSON, but parsers accept it; so must we refuse it)."""
    return http.post(path, content=text.encode(), headers={"content-type": "application/json"})


def test_non_finite_numbers_are_refused(http, refs):
    frames = base64.b64encode(videos.npy_bytes(videos.unique_clip(4, 32, 32))).decode()
    data = refs[0]["data"]
    cases = {
        "items.0.video.fps": f'{{"items": [{{"video": {{"frames": "{frames}", "fps": Infinity}}}}]}}',
        "advantage_eps": f'{{"videos": [{{"data": "{data}"}}, {{"data": "{data}"}}], "advantage_eps": Infinity}}',
        "weights.signal.sharpness": f'{{"items": [{{"video": {{"data": "{data}"}}}}], "weights": {{"signal.sharpness": NaN}}}}',
    }
    for field, text in cases.items():
        path = "/v1/rank" if "videos" in text else "/v1/score"
        item = 0 if field.startswith("items.0") else None
        error = assert_error(post_raw(http, path, text), 422, "invalid_request", item, "finite number")
        assert error["message"].startswith(field), error


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"top_k": "2"}, "top_k"),
        ({"advantage_eps": "0.1"}, "advantage_eps"),
        ({"normalise": "true"}, "normalise"),
        ({"top_k": 2.0}, "top_k"),
    ],
)
def test_types_are_strict(http, refs, fields, field):
    error = assert_error(http.post("/v1/rank", json={"videos": refs[:2]} | fields), 422, "invalid_request", None, "")
    assert error["message"].startswith(field), error


def test_huge_finite_weights_are_refused_naming_the_weight(http, refs):
    for endpoint, body in [
        ("score", {"items": [{"video": refs[0]}]}),
        ("compare", {"videos": refs[:2]}),
        ("rank", {"videos": refs[:3]}),
    ]:
        r = http.post(f"/v1/{endpoint}", json=body | {"weights": {"signal.sharpness": 1.0, "signal.exposure": 1e300}})
        assert_error(r, 400, "bad_weights", None, "weights: 'signal.exposure' must be a number in [0, 1e+06]")


def test_echoed_names_are_cut(http, refs):
    name = "m" * 1_000_000
    r = http.post("/v1/score", json={"items": [{"video": refs[0]}], "models": [name]})
    error = assert_error(r, 400, "unknown_model", None, "unknown model 'mmm")
    assert len(r.content) < 2000 and "1000002 characters" in error["message"]
    r = http.post("/v1/score", json={"items": [{"video": refs[0]}], "weights": {name: 1.0}})
    assert len(r.content) < 3000
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_model"  # the model part of "m...m"


def test_every_bad_item_of_the_ingest_stage_is_listed(http, refs):
    body = {
        "items": [
            {"video": {"data": "not base64!"}},
            {"video": refs[0]},
            {"video": {"url": "http://0177.0.0.1/a.mp4"}},
            {"video": {"frames": "%%%", "fps": 8}},
            {"video": {"url": "gopher://x/"}},
        ]
    }
    error = assert_error(http.post("/v1/score", json=body), 400, "bad_base64", 0, "data is not valid base64")
    assert [(o["item"], o["code"]) for o in error["others"]] == [(2, "bad_url"), (3, "bad_base64"), (4, "bad_url")]


EDGE_SCORES = [
    {},  # default weights
    {"weights": {"signal.sharpness": 1e6, "signal.exposure": 0.0}},  # the largest weight allowed
    {"models": ["signal-rk"], "normalise": True},
    {"models": ["signal", "signal-rk"], "cache": "bypass"},
]


@pytest.mark.parametrize("options", EDGE_SCORES)
def test_responses_match_the_openapi_schema(http, refs, openapi, options):
    same = [refs[0], refs[0]]  # equal videos: ties in compare and rank, zero advantages
    assert_matches_schema(
        openapi, http.post("/v1/score", json={"items": [{"video": r} for r in refs]} | options), "ScoreResponse"
    )
    for videos_ in (refs[:2], same):
        assert_matches_schema(openapi, http.post("/v1/compare", json={"videos": videos_} | options), "CompareResponse")
        rank = {"videos": videos_ + refs[2:], "top_k": 1, "advantage_eps": 0.0}
        assert_matches_schema(openapi, http.post("/v1/rank", json=rank | options), "RankResponse")


def test_raw_frames_response_matches_the_schema(http, openapi):
    frames = np.repeat(videos.unique_clip(1, 32, 32), 4, axis=0)  # a still video
    ref = {"frames": base64.b64encode(videos.npy_bytes(frames)).decode(), "fps": 0.1}
    assert_matches_schema(openapi, http.post("/v1/score", json={"items": [{"video": ref}]}), "ScoreResponse")


def test_variable_frame_rate_video_is_scored(http, openapi):
    from tests.test_decode import VFR_TIMES

    data = videos.encode_vfr(videos.moving_scene(40, 64, 96), VFR_TIMES, "mkv")
    r = http.post("/v1/score", json={"items": [{"video": {"data": base64.b64encode(data).decode()}}]})
    assert_matches_schema(openapi, r, "ScoreResponse")


def _nan_for_some_prompts(frames, num_frames, prompts):
    """A real weight-free model whose score is NaN when the prompt says so (a model can misbehave)."""
    return torch.tensor([[float("nan") if p == "nan" else float(n)] for p, n in zip(prompts, num_frames.tolist())])


def test_non_finite_model_output_is_an_error_not_a_null(refs):
    from models import signal
    from models.registry import RewardModel, builtin_models
    from models.spec import Dimension
    from service.api import create_app
    from tests.conftest import start_server, test_settings

    spec = signal.SPEC.model_copy(
        update={"name": "nan-probe", "needs_prompt": True, "dimensions": (Dimension(name="n"),)}
    )
    models = builtin_models() | {"nan-probe": RewardModel(spec=spec, forward=_nan_for_some_prompts)}
    running = start_server(create_app(test_settings(models=["signal", "nan-probe"]), models=models))
    try:
        items = [{"video": refs[i], "prompt": p} for i, p in enumerate(["ok", "nan", "ok", "nan"])]
        r = httpx.post(f"{running.url}/v1/score", json={"items": items, "models": ["nan-probe"]}, timeout=60)
        error = assert_error(r, 422, "non_finite_score", 1, "nan-probe.n")
        assert [o["item"] for o in error["others"]] == [3]
        fine = httpx.post(f"{running.url}/v1/score", json={"items": items[:1], "models": ["nan-probe"]}, timeout=60)
        assert fine.status_code == 200 and fine.json()["results"][0]["scores"]["nan-probe.n"] > 0
        assert fine.json()["results"][0]["cached"]  # the failed request's good items were kept
        stats = running.app.state.engine.stats
        before = stats["inferences"]
        again = httpx.post(f"{running.url}/v1/score", json={"items": items[1:2], "models": ["nan-probe"]}, timeout=60)
        assert_error(again, 422, "non_finite_score", 0, "nan-probe.n")
        assert stats["inferences"] == before + 1  # computed again: a non-finite score is never cached
    finally:
        running.stop()
