"""Bad input to weights, presets, normalisation, /v1/compare and /v1/rank: 4xx naming the field."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.test_bad_input import assert_error


@pytest.fixture(scope="module")
def http(scoring_gateway):
    with httpx.Client(base_url=scoring_gateway.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def refs(group_mp4) -> list[dict]:
    return [{"data": base64.b64encode(v).decode()} for v in group_mp4]


# (endpoint, request fields, status, code, item, message fragment naming the field)
CASES = {
    "unknown-dimension": (
        "rank",
        {"weights": {"signal.nope": 1.0}},
        400,
        "bad_weights",
        None,
        "weights: unknown dimension 'signal.nope'",
    ),
    "negative-weight": (
        "compare",
        {"weights": {"signal.sharpness": -1}},
        400,
        "bad_weights",
        None,
        "weights: 'signal.sharpness' must be",
    ),
    "all-zero-weights": (
        "score",
        {"weights": {"signal.sharpness": 0, "signal.exposure": 0}},
        400,
        "bad_weights",
        None,
        "weights: at least one",
    ),
    "unknown-preset": ("rank", {"preset": "nope"}, 400, "unknown_preset", None, "preset: unknown preset 'nope'"),
    "preset-and-weights": (
        "rank",
        {"preset": "signal-spatial", "weights": {"signal.sharpness": 1}},
        422,
        "invalid_request",
        None,
        "preset: value error, give weights or preset",
    ),
    "preset-for-other-models": (
        "rank",
        {"preset": "signal-spatial", "models": ["signal-rk"]},
        400,
        "bad_weights",
        None,
        "preset 'signal-spatial': unknown dimension",
    ),
    "normalise-without-stats": (
        "compare",
        {"normalise": True},
        400,
        "cannot_normalise",
        None,
        "normalise: no mean/std in the model spec for signal.sharpness",
    ),
    "rank-one-video": (
        "rank",
        {"videos": 1},
        422,
        "invalid_request",
        None,
        "videos: list should have at least 2 items",
    ),
    "compare-three-videos": (
        "compare",
        {"videos": 3},
        422,
        "invalid_request",
        None,
        "videos: list should have at most 2 items",
    ),
    "compare-one-video": (
        "compare",
        {"videos": 1},
        422,
        "invalid_request",
        None,
        "videos: list should have at least 2 items",
    ),
    "mismatched-prompts": (
        "rank",
        {"videos": 3, "prompts": ["a", "b"]},
        422,
        "invalid_request",
        None,
        "prompts: value error, 2 prompts for 3 videos",
    ),
    "prompt-and-prompts": (
        "compare",
        {"prompt": "a", "prompts": ["a", "b"]},
        422,
        "invalid_request",
        None,
        "prompts: value error, give prompt or prompts",
    ),
    "empty-prompt": (
        "compare",
        {"models": ["prompt-probe"], "prompt": "  "},
        400,
        "missing_prompt",
        None,
        "prompt: model 'prompt-probe' needs a non-empty prompt",
    ),
    "no-prompt": (
        "rank",
        {"models": ["signal", "prompt-probe"]},
        400,
        "missing_prompt",
        None,
        "prompt: model 'prompt-probe'",
    ),
    "empty-prompt-of-one-video": (
        "rank",
        {"models": ["prompt-probe"], "prompts": ["a", ""]},
        400,
        "missing_prompt",
        1,
        "needs a prompt",
    ),
    "top-k-zero": (
        "rank",
        {"top_k": 0},
        422,
        "invalid_request",
        None,
        "top_k: input should be greater than or equal to 1",
    ),
    "top-k-over-n": (
        "rank",
        {"videos": 3, "top_k": 4},
        422,
        "invalid_request",
        None,
        "top_k: value error, top_k 4 is more than the 3 videos",
    ),
    "negative-eps": (
        "rank",
        {"advantage_eps": -1},
        422,
        "invalid_request",
        None,
        "advantage_eps: input should be greater than or equal to 0",
    ),
    "unknown-std": (
        "rank",
        {"advantage_std": "biased"},
        422,
        "invalid_request",
        None,
        "advantage_std: input should be 'sample' or 'population'",
    ),
    "unknown-model": ("compare", {"models": ["nope"]}, 400, "unknown_model", None, "unknown model 'nope'"),
    "unknown-field": ("rank", {"k": 2}, 422, "invalid_request", None, "k: extra inputs are not permitted"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_scoring_input(http, refs, name):
    endpoint, fields, status, code, item, fragment = CASES[name]
    fields = dict(fields)
    videos = refs[: fields.pop("videos", 2)]
    if endpoint == "score":
        body = {"items": [{"video": v} for v in videos]} | fields
    else:
        body = {"videos": videos} | fields
    assert_error(http.post(f"/v1/{endpoint}", json=body), status, code, item, fragment)


def test_bad_video_in_a_group_names_its_index(http, refs):
    videos = refs[:2] + [{"data": base64.b64encode(b"not a video at all" * 100).decode()}]
    assert_error(http.post("/v1/rank", json={"videos": videos}), 415, "unsupported_media", 2, "not a video")
    malformed = http.post("/v1/compare", json={"videos": [refs[0], {"url": "https://x/a.mp4", "data": "AAAA"}]})
    error = assert_error(malformed, 422, "invalid_request", 1, "exactly one of")
    assert error["message"].startswith("videos.1")


def test_bad_weights_in_multipart_fields(http, group_mp4):
    files = {"a": ("a.mp4", group_mp4[0]), "b": ("b.mp4", group_mp4[1])}
    r = http.post("/v1/rank", files=files, data={"weights": "{not json"})
    assert_error(r, 400, "bad_weights", None, "weights: not JSON")
    r = http.post("/v1/compare", files={"a": ("a.mp4", group_mp4[0])})
    assert_error(r, 422, "invalid_request", None, "videos: list should have at least 2 items")


def test_the_gateway_still_serves(http, refs):
    assert http.post("/v1/rank", json={"videos": refs}).status_code == 200
