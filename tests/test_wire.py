"""The binary wire and content addressing, through a real gateway (uvicorn) and the real client.

- raw frames as multipart ``application/x-npy`` parts: the client's default, the same scores as
  base64 JSON, and the .npy safety checks on a binary part (header checked before allocation);
- ``{"sha256"}`` references: scored from the cache, ``not_cached`` (404) naming the items otherwise,
  and the client's ``reuse=True`` resending only then;
- the .npy header and digests of ``vrs_wire.npy`` against numpy's own writer.
"""

from __future__ import annotations

import hashlib
import io
import json

import httpx
import numpy as np
import pytest
from vrs_client import Client, Frames
from vrs_wire import npy
from vrs_wire.schemas import NPY_MEDIA_TYPE

from tests import videos
from tests.test_api import expected_scores
from tests.test_bad_input import assert_error
from tests.videos import unique_clip


def npy_part(array: np.ndarray) -> tuple[str, bytes, str]:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return ("frames.npy", buf.getvalue(), NPY_MEDIA_TYPE)


def multipart(client: httpx.Client, parts: dict, request: dict) -> httpx.Response:
    return client.post("/v1/score", data={"request": json.dumps(request)}, files=parts)


@pytest.mark.parametrize("shape", [(1, 8, 8, 3), (9, 64, 48, 3), (33, 240, 416, 3)])
def test_npy_header_and_digest_match_numpys_writer(shape):
    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, frames)
    written = buf.getvalue()
    assert npy.header(shape) == written[: len(written) - frames.nbytes]
    assert npy.frames_digest(frames) == hashlib.sha256(written).hexdigest()
    reader = npy.NpyReader(frames)
    assert reader.size == len(written) and reader.read() == written
    reader.seek(0)
    assert b"".join(iter(lambda: reader.read(1000), b"")) == written


def test_frames_as_binary_parts_score_as_base64_json_does(gateway):
    clips = [unique_clip(), unique_clip(17, 64, 96)]
    sent: list[str] = []
    with Client(gateway.url) as client:
        client._http.event_hooks["request"].append(lambda r: sent.append(r.headers["content-type"]))
        binary = client.score(clips, fps=16, cache="bypass")
        with Client(gateway.url, transport="json") as json_client:
            base64 = json_client.score(clips, fps=16, cache="bypass")
    assert sent[0].startswith("multipart/form-data")
    for clip, a, b in zip(clips, binary.results, base64.results):
        assert a.scores == b.scores
        assert a.scores == pytest.approx(expected_scores(clip), abs=1e-5)


def test_plain_form_fields_with_an_npy_part(client):
    clip = unique_clip()
    r = client.post("/v1/score", data={"fps": "16"}, files={"a": npy_part(clip)})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["scores"] == pytest.approx(expected_scores(clip), abs=1e-5)


def test_an_npy_part_gets_the_npy_checks(client):
    clip = unique_clip()
    ok = ("ok", npy_part(clip))
    request = {"items": [{"video": {"file": "ok", "fps": 16}}, {"video": {"file": "bad", "fps": 16}}]}
    cases = [
        (np.array([{"pickled": 1}], dtype=object), 400, "bad_frames", "dtype uint8"),
        (np.zeros((4, 16, 16, 3), np.float32), 400, "bad_frames", "dtype uint8"),
        (np.zeros((4, 16, 16), np.uint8), 400, "bad_frames", "shape"),
        (np.asfortranarray(clip), 400, "bad_frames", "C-ordered"),
        (np.zeros((0, 16, 16, 3), np.uint8), 400, "no_frames", "empty"),
    ]
    for array, status, code, fragment in cases:
        r = multipart(client, dict([ok, ("bad", npy_part(array))]), request)
        assert_error(r, status, code, 1, fragment)
    # A header that claims 100 GB: refused from the header alone, nothing allocated.
    huge = npy.header((100_000, 1000, 1000, 3)) + b"\0" * 100
    r = multipart(client, dict([ok, ("bad", ("x.npy", huge, NPY_MEDIA_TYPE))]), request)
    assert_error(r, 413, "too_large", 1, "bytes of frames")
    truncated = npy_part(clip)[1][:-10]
    r = multipart(client, dict([ok, ("bad", ("x.npy", truncated, NPY_MEDIA_TYPE))]), request)
    assert_error(r, 400, "bad_frames", 1, "truncated")
    no_fps = {"items": [{"video": {"file": "ok"}}]}
    assert_error(multipart(client, dict([ok]), no_fps), 400, "bad_frames", 0, "fps")
    r = multipart(
        client, {"ok": ("a.mp4", videos.encode(clip), "video/mp4")}, request | {"items": request["items"][:1]}
    )
    assert_error(r, 400, "bad_frames", 0, "application/x-npy")  # fps given for a container part
    assert multipart(client, dict([ok]), {"items": request["items"][:1]}).status_code == 200


def test_sha256_references_score_from_the_cache(client):
    clip = unique_clip()
    mp4 = videos.encode(clip)
    first = client.post("/v1/score", files={"v": ("a.mp4", mp4)}).json()["results"][0]
    frames_first = client.post("/v1/score", data={"fps": "16"}, files={"f": npy_part(clip)}).json()["results"][0]

    items = [
        {"video": {"sha256": hashlib.sha256(mp4).hexdigest()}},
        {"video": {"sha256": npy.frames_digest(clip), "fps": 16}},
    ]
    r = client.post("/v1/score", json={"items": items})
    assert r.status_code == 200, r.text
    by_digest = r.json()["results"]
    assert [x["cached"] for x in by_digest] == [True, True]
    assert by_digest[0]["scores"] == first["scores"] and by_digest[1]["scores"] == frames_first["scores"]

    unknown = {"video": {"sha256": hashlib.sha256(b"never sent").hexdigest()}}
    other_fps = {"video": {"sha256": npy.frames_digest(clip), "fps": 24}}  # fps is part of the address
    r = client.post("/v1/score", json={"items": [items[0], unknown, other_fps]})
    error = assert_error(r, 404, "not_cached", 1, "send the video")
    assert [o["item"] for o in error["others"]] == [2]
    r = client.post("/v1/score", json={"items": items[:1], "cache": "refresh"})
    assert_error(r, 400, "bad_input", 0, "cache only")
    r = client.post("/v1/score", json={"items": [{"video": {"sha256": "ABC"}}]})
    assert_error(r, 422, "invalid_request", 0, "sha256")


def test_client_reuse_sends_digests_and_uploads_only_when_not_cached(gateway):
    clip, mp4 = unique_clip(), videos.encode(unique_clip())
    sent: list[str] = []
    with Client(gateway.url, reuse=True) as client:
        client._http.event_hooks["request"].append(lambda r: sent.append(r.headers["content-type"]))
        first = client.rank([Frames(clip, 16), mp4])
        assert [s.split(";")[0] for s in sent] == ["application/json", "multipart/form-data"]  # not_cached, resent
        sent.clear()
        again = client.rank([Frames(clip, 16), mp4])
        assert sent == ["application/json"]  # digests only: nothing uploaded
    assert [r.cached for r in first.results] == [False, False] and [r.cached for r in again.results] == [True, True]
    assert [r.scores for r in first.results] == [r.scores for r in again.results]


def test_video_ref_schema_states_exactly_what_validation_accepts():
    """The published JSON schema of a video reference and the service's own validation agree on
    every combination of sources and fps (each absent, null or given): 729 documents."""
    import itertools

    import jsonschema
    from vrs_wire.schemas import VideoRef

    schema = VideoRef.model_json_schema()
    values = {"url": "https://x/v.mp4", "data": "AAAA", "frames": "AAAA", "file": "a", "sha256": "0" * 64, "fps": 16.0}
    disagree = []
    for combo in itertools.product(("absent", None, "given"), repeat=len(values)):
        doc = {k: (values[k] if c == "given" else None) for k, c in zip(values, combo) if c != "absent"}
        try:
            jsonschema.validate(doc, schema)
            by_schema = True
        except jsonschema.ValidationError:
            by_schema = False
        try:
            VideoRef.model_validate(doc)
            by_service = True
        except ValueError:
            by_service = False
        if by_schema != by_service:
            disagree.append((doc, by_schema, by_service))
    assert not disagree, disagree[:5]
