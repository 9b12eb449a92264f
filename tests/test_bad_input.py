"""Bad input: a clear 4xx JSON error naming the item and the reason; the server keeps serving.

Policy (see README): any bad item fails the whole request. The error names the first bad
item; `others` lists the rest, so a client can fix them all at once.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
from collections.abc import Iterator

import av
import httpx
import numpy as np
import pytest

from service.api import create_app
from tests import videos
from tests.conftest import ORIGIN_HOST, start_server, test_settings


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def zero_frame_avi() -> bytes:
    """An AVI with a 64x64 MPEG-4 video stream and no frames."""
    buf = io.BytesIO()
    container = av.open(buf, mode="w", format="avi")
    stream = container.add_stream("mpeg4", rate=16)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()
    return buf.getvalue()


@pytest.fixture(scope="module")
def silent_url() -> Iterator[str]:
    """A TCP port on 127.0.0.2 that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind((ORIGIN_HOST, 0))
        listener.listen(16)
        yield f"http://{ORIGIN_HOST}:{listener.getsockname()[1]}/clip.mp4"


@pytest.fixture(scope="module")
def bad_videos(clean_mp4, clean_webm) -> dict[str, bytes]:
    header_garbage = bytearray(clean_mp4)
    header_garbage[:64] = bytes(64)
    return {
        "truncated_mp4": clean_mp4[: len(clean_mp4) // 2],
        "truncated_webm": clean_webm[: len(clean_webm) // 2],
        "corrupt_header": bytes(header_garbage),
        "random_bytes": np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
        "audio_only": videos.audio_only(),
        "zero_frames": zero_frame_avi(),
        "huge_header": videos.lying_header_avi(16000, 16000),
        "overlong": videos.encode(videos.moving_scene(130, 32, 32), fps=1),  # 130 s; test limit is 120 s
    }


# name -> (status, error code, item index, message fragment)
UPLOAD_CASES = {
    "truncated_mp4": (415, "unsupported_media", "truncated"),
    "truncated_webm": (422, "truncated_video", "truncated"),
    "corrupt_header": (415, "unsupported_media", "corrupt"),
    "random_bytes": (415, "unsupported_media", "not a video"),
    "audio_only": (415, "no_video_stream", "audio"),
    "zero_frames": (422, "no_frames", "no frames"),
    "huge_header": (413, "too_large", "pixels"),
    "overlong": (413, "too_large", "lasts"),
}


def assert_error(response, status: int, code: str, item: int | None, fragment: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["item"] == item
    assert fragment.lower() in error["message"].lower(), error["message"]
    return error


@pytest.fixture(autouse=True)
def server_still_serves(client, clean_mp4):
    """After every bad request the same server answers a good one."""
    yield
    assert client.get("/healthz").status_code == 200
    ok = client.post("/v1/score", files={"video": ("ok.mp4", clean_mp4, "video/mp4")})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("name", list(UPLOAD_CASES))
def test_bad_upload_as_second_item_of_multipart(client, bad_videos, clean_mp4, name):
    status, code, fragment = UPLOAD_CASES[name]
    r = client.post("/v1/score", files=[("good", ("a.mp4", clean_mp4)), ("bad", ("b.bin", bad_videos[name]))])
    assert_error(r, status, code, 1, fragment)


@pytest.mark.parametrize("name", ["truncated_webm", "random_bytes", "huge_header"])
def test_bad_base64_container_item(client, bad_videos, clean_mp4, name):
    status, code, fragment = UPLOAD_CASES[name]
    items = [{"video": {"data": b64(clean_mp4)}}] * 2 + [{"video": {"data": b64(bad_videos[name])}}]
    assert_error(client.post("/v1/score", json={"items": items}), status, code, 2, fragment)


def test_every_bad_item_is_listed(client, bad_videos, clean_mp4):
    items = [
        {"video": {"data": b64(bad_videos["random_bytes"])}},
        {"video": {"data": b64(clean_mp4)}},
        {"video": {"data": b64(bad_videos["audio_only"])}},
    ]
    error = assert_error(client.post("/v1/score", json={"items": items}), 415, "unsupported_media", 0)
    assert [(o["item"], o["code"]) for o in error["others"]] == [(2, "no_video_stream")]
    # The same bad video twice is decoded once, and both items are named (the second was not).
    error = assert_error(client.post("/v1/score", json={"items": items + items[:1]}), 415, "unsupported_media", 0)
    assert [(o["item"], o["code"]) for o in error["others"]] == [(2, "no_video_stream"), (3, "unsupported_media")]


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"data": "not base64 !!"}, "base64"),
        ({"frames": "%%%%", "fps": 16}, "base64"),
    ],
    ids=["data", "frames"],
)
def test_bad_base64(client, payload, fragment):
    r = client.post("/v1/score", json={"items": [{"video": payload}]})
    assert_error(r, 400, "bad_base64", 0, fragment)


@pytest.mark.parametrize(
    "array, code, fragment",
    [
        (np.zeros((4, 16, 16, 3), dtype=np.float32), "bad_frames", "dtype uint8"),
        (np.zeros((4, 16, 16), dtype=np.uint8), "bad_frames", "shape"),
        (np.zeros((4, 16, 16, 4), dtype=np.uint8), "bad_frames", "shape"),
        (np.zeros((0, 16, 16, 3), dtype=np.uint8), "no_frames", "empty"),
    ],
    ids=["float32", "no-channels", "rgba", "zero-frames"],
)
def test_bad_npy_frames(client, array, code, fragment):
    r = client.post("/v1/score", json={"items": [{"video": {"frames": b64(videos.npy_bytes(array)), "fps": 16}}]})
    assert_error(r, 400, code, 0, fragment)


def _npy_claiming(shape: tuple, data: bytes) -> bytes:
    """A version 1.0 .npy header stating ``shape`` (numpy itself cannot write these), then ``data``."""
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape!r}, }}".ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data


@pytest.mark.parametrize(
    "shape, status, code",
    [
        ((2**32, 2**32, 1, 3), 413, "too_large"),  # its int64 product wrapped to 0 and passed the size check: 500
        ((2**64, 1, 1, 3), 413, "too_large"),
        ((-1, 16, 16, 3), 400, "bad_frames"),  # was scored (reshape inferred the -1)
        ((-1, -1, 16, 3), 400, "bad_frames"),
    ],
    ids=["wraps-int64", "past-int64", "negative", "two-negative"],
)
def test_npy_headers_claiming_impossible_shapes(client, shape, status, code):
    frames = _npy_claiming(shape, bytes(4 * 16 * 16 * 3))
    r = client.post("/v1/score", json={"items": [{"video": {"frames": b64(frames), "fps": 16}}]})
    assert_error(r, status, code, 0, "frames")


@pytest.mark.parametrize("weights", ["[" * 50_000 + "]" * 50_000, '{"signal.sharpness": ' + "9" * 5000 + "}"])
def test_a_multipart_weights_field_python_cannot_parse_is_bad_weights(client, clean_mp4, weights):
    """Nested past the recursion limit, or an integer past Python's 4300 digits: were 500s."""
    r = client.post("/v1/score", files={"v": ("a.mp4", clean_mp4, "video/mp4")}, data={"weights": weights})
    assert_error(r, 400, "bad_weights", None, "weights")


def test_npy_that_is_not_npy(client):
    r = client.post("/v1/score", json={"items": [{"video": {"frames": b64(b"hello"), "fps": 16}}]})
    assert_error(r, 400, "bad_frames", 0, ".npy")


def test_unknown_model(client, clean_mp4):
    r = client.post("/v1/score", json={"models": ["nope"], "items": [{"video": {"data": b64(clean_mp4)}}]})
    assert_error(r, 400, "unknown_model", None, "nope")


def test_missing_prompt_where_the_model_needs_one(client, clean_mp4):
    items = [{"video": {"data": b64(clean_mp4)}, "prompt": "a cat"}, {"video": {"data": b64(clean_mp4)}}]
    r = client.post("/v1/score", json={"models": ["prompt-probe"], "items": items})
    assert_error(r, 400, "missing_prompt", 1, "needs a prompt")
    r = client.post(
        "/v1/score", json={"models": ["prompt-probe"], "items": items + items + [items[0] | {"prompt": "x" * 10**5}]}
    )
    error = assert_error(r, 400, "missing_prompt", 1, "needs a prompt")  # every bad prompt is named
    assert [(o["item"], o["code"]) for o in error["others"]] == [(3, "missing_prompt"), (4, "prompt_too_long")]


def test_malformed_request_names_the_field_and_item(client):
    r = client.post("/v1/score", json={"items": [{"video": {"url": "https://x/y"}}, {"video": {}}]})
    error = assert_error(r, 422, "invalid_request", 1, "exactly one of")
    assert "items.1.video" in error["message"]
    assert client.post("/v1/score", content=b"{", headers={"content-type": "application/json"}).status_code == 422
    r = client.post("/v1/score", content=b"x", headers={"content-type": "text/plain"})
    assert_error(r, 415, "bad_content_type", None)


def test_multipart_errors_use_the_error_shape(client, clean_mp4):
    """The parser's limits answer as JSON's do (413 ``too_large`` for 65 parts, as for 65 items),
    a malformed body 400 ``bad_multipart``."""
    too_many = [(f"v{i}", (f"{i}.mp4", b"x")) for i in range(70)]  # max_items is 64
    assert_error(client.post("/v1/score", files=too_many), 413, "too_large", None, "Too many files")
    r = client.post("/v1/score", content=b"--nope\r\n", headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(r, 400, "bad_multipart", None, "multipart body")
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"modle": "signal"}, "'modle': not a form field"),  # a typo is not silently ignored
        ({"top_k": "1"}, "'top_k': not a form field"),  # /v1/score has no top_k
        ({"normalise": "ture"}, "normalise"),
        ({"cache": "sometimes"}, "cache"),
    ],
)
def test_multipart_fields_are_checked_as_json_keys_are(client, clean_mp4, fields, fragment):
    r = client.post("/v1/score", data=fields, files={"video": ("clip.mp4", clean_mp4, "video/mp4")})
    assert_error(r, 422, "invalid_request", None, fragment)


def test_multipart_rank_takes_its_own_fields(client, clean_mp4, clean_webm):
    files = {"a": ("a.mp4", clean_mp4, "video/mp4"), "b": ("b.webm", clean_webm, "video/webm")}
    ranked = client.post(
        "/v1/rank", data={"top_k": "1", "advantage_eps": "0", "advantage_std": "population"}, files=files
    )
    assert ranked.status_code == 200, ranked.text
    assert len(ranked.json()["ranking"]) == 1
    assert sorted(abs(r["advantage"]) for r in ranked.json()["results"]) == pytest.approx(
        [1.0, 1.0]
    )  # eps 0, population
    assert_error(client.post("/v1/rank", data={"top_k": "many"}, files=files), 422, "invalid_request", None, "top_k")


def test_a_large_request_field_is_accepted(client, clean_mp4):
    """The ``request`` JSON is a plain form field: it may be as large as a JSON body (it was cut
    at Starlette's 1 MiB part limit: 64 items with a 3000-character CJK prompt each)."""
    prompt = "一只猫在日落时冲浪" * 340  # 3060 characters, 9 KB as UTF-8, 18 KB as JSON escapes
    request = {"items": [{"video": {"file": "v"}, "prompt": prompt} for _ in range(64)], "cache": "bypass"}
    body = json.dumps(request)
    assert len(body) > 1 << 20
    r = client.post("/v1/score", data={"request": body}, files={"v": ("clip.mp4", clean_mp4, "video/mp4")})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 64


def test_an_empty_models_list_is_refused(client, clean_mp4):
    r = client.post("/v1/score", json={"items": [{"video": {"data": b64(clean_mp4)}}], "models": []})
    assert_error(r, 422, "invalid_request", None, "models")


def test_schema_errors_name_every_bad_item(client):
    items = [
        {"video": {"url": "https://x/y"}},
        {"video": {}},
        {"video": {"url": "https://x/z"}},
        {"video": {"fps": -1}},
    ]
    error = assert_error(client.post("/v1/score", json={"items": items}), 422, "invalid_request", 1, "items.1.video")
    assert [o["item"] for o in error["others"]] == [3]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "TRACE"])
def test_wrong_method_is_405_with_allow(client, method):
    """RFC 9110: a 405 lists the methods the resource supports (schemathesis found it missing)."""
    r = client.request(method, "/v1/score")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", r.text
    assert r.headers["allow"] == "POST"
    r = client.post("/healthz")
    assert r.status_code == 405 and "GET" in r.headers["allow"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/clip.mp4",
        "http://localhost/clip.mp4",
        "http://10.0.0.1/clip.mp4",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://[::ffff:10.1.2.3]/x",
    ],
)
def test_urls_into_private_networks_are_refused(client, url):
    r = client.post("/v1/score", json={"items": [{"video": {"url": url}}]})
    assert_error(r, 400, "url_forbidden", 0, "a public address")  # names: "does not resolve to a public address"


@pytest.mark.parametrize("target", ["http://127.0.0.1:9/x", "http://10.0.0.1/x", "http://169.254.169.254/latest/"])
def test_redirect_into_private_networks_is_refused(client, origin, target):
    r = client.post("/v1/score", json={"items": [{"video": {"url": f"{origin}/redirect?to={target}"}}]})
    assert_error(r, 400, "url_forbidden", 0, "not a public address")


def test_non_http_urls_are_refused(client):
    for url in ["file:///etc/passwd", "ftp://example.com/a.mp4", "gopher://x"]:
        assert_error(client.post("/v1/score", json={"items": [{"video": {"url": url}}]}), 400, "bad_url", 0)


def test_url_that_never_answers_times_out(client, silent_url):
    r = client.post("/v1/score", json={"items": [{"video": {"url": silent_url}}]})
    assert_error(r, 400, "url_timeout", 0)


@pytest.fixture(scope="module")
def small_gateway() -> Iterator[str]:
    """A second gateway with a 1 MB request-body limit and room for one video in flight."""
    running = start_server(create_app(test_settings(max_request_bytes=1_000_000, max_pending=1)))
    yield running.url
    running.stop()


def test_request_body_over_the_limit_is_refused(small_gateway, clean_mp4):
    big = b"x" * 2_000_000
    declared = httpx.post(f"{small_gateway}/v1/score", files={"video": ("a.mp4", big)})
    assert_error(declared, 413, "too_large", None, "exceeds")

    def chunks():  # no content-length: the limit is enforced while streaming
        for _ in range(20):
            yield b"y" * 100_000

    streamed = httpx.post(f"{small_gateway}/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert_error(streamed, 413, "too_large", None, "exceeds")
    ok = httpx.post(f"{small_gateway}/v1/score", files={"video": ("a.mp4", clean_mp4)})
    assert ok.status_code == 200, ok.text


async def test_overload_gets_429_with_retry_after_and_nothing_else_fails(small_gateway, clean_mp4):
    video = {"data": b64(clean_mp4)}
    async with httpx.AsyncClient(base_url=small_gateway, timeout=60) as client:
        two = await client.post("/v1/score", json={"items": [{"video": video}] * 2})
        assert_error(two, 413, "too_large", None, "max_pending")
        responses = await asyncio.gather(
            *(client.post("/v1/score", json={"items": [{"video": video}]}) for _ in range(8))
        )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"


def test_too_many_items_are_refused_before_any_is_decoded(client):
    """65 items (max_items is 64) are a 413 at once: no item's base64 is decoded first (a probe
    sent 1000 base64 .npy items: 2.1 s and +380 MB of decoding before the 413)."""
    items = [{"video": {"data": "not base64 at all!"}} for _ in range(65)]
    assert_error(client.post("/v1/score", json={"items": items}), 413, "too_large", None, "65 items")
