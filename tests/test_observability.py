"""Metrics at /metrics, the X-Request-ID header, and JSON logs carrying the request id."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from vrs_client.videos import video_ref

from loadtests.loadgen.core import server_timing_s
from models.registry import builtin_models
from service.api import create_app
from tests import videos
from tests.conftest import free_port, start_server, test_settings


def frames_body(frames: np.ndarray, **extra) -> dict:
    return {"items": [{"video": video_ref(frames, fps=16)}], **extra}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: dict, name: str, **labels) -> float:
    return metrics[(name, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def fresh_gateway():
    """A gateway of its own, so every counter starts at zero."""
    running = start_server(create_app(test_settings(), models=builtin_models()))
    yield running
    running.stop()


def test_metrics_count_requests_stages_batches_cache_and_bytes(fresh_gateway):
    url = fresh_gateway.url
    clip = videos.moving_scene(9, 64, 64)
    body = frames_body(clip)
    assert httpx.post(f"{url}/v1/score", json=body).status_code == 200  # miss
    assert httpx.post(f"{url}/v1/score", json=body).status_code == 200  # hit
    assert httpx.post(f"{url}/v1/score", json={"items": []}).status_code == 422
    assert httpx.post(f"{url}/v1/score", json=frames_body(clip, models=["nope"])).status_code == 400
    sent = len(json.dumps(body)) * 2

    m = samples(httpx.get(f"{url}/metrics").text)
    assert value(m, "vrs_requests_total", endpoint="/v1/score", model="signal", status="200") == 2
    assert value(m, "vrs_requests_total", endpoint="/v1/score", model="", status="422") == 1
    assert value(m, "vrs_requests_total", endpoint="/v1/score", model="", status="400") == 1
    assert value(m, "vrs_request_duration_seconds_count", endpoint="/v1/score") == 4
    assert value(m, "vrs_received_bytes_total", endpoint="/v1/score") >= sent
    # Stages: the two valid requests were ingested and looked up (the bad ones stopped before);
    # one decode, one queue wait and one inference, for the miss only.
    assert value(m, "vrs_stage_duration_seconds_count", stage="ingest", model="") == 2
    assert value(m, "vrs_stage_duration_seconds_count", stage="cache", model="") == 2
    assert value(m, "vrs_stage_duration_seconds_count", stage="decode", model="") == 1
    assert value(m, "vrs_stage_duration_seconds_count", stage="queue", model="signal") == 1
    assert value(m, "vrs_stage_duration_seconds_count", stage="inference", model="signal") == 1
    assert value(m, "vrs_batch_size_count", model="signal") == 1 and value(m, "vrs_batch_size_sum", model="signal") == 1
    assert value(m, "vrs_cache_lookups_total", result="miss") == 1
    assert value(m, "vrs_cache_lookups_total", result="l1_hit") == 1
    assert value(m, "vrs_cache_errors_total", kind="error") == 0
    assert value(m, "vrs_videos_decoded_total") == 1 and value(m, "vrs_frames_decoded_total") == 9
    assert value(m, "vrs_inferences_total") == 1
    assert value(m, "vrs_queue_depth", model="signal") == 0
    assert value(m, "vrs_requests_in_flight", endpoint="/v1/score") == 0


def test_request_id_is_returned_and_generated_when_missing_or_unsafe(fresh_gateway):
    url = fresh_gateway.url
    assert httpx.get(f"{url}/healthz", headers={"X-Request-ID": "trainer-7:step-42"}).headers["x-request-id"] == (
        "trainer-7:step-42"
    )
    generated = httpx.get(f"{url}/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    for unsafe in ("has spaces", "x" * 200, "new\\nline"):
        replaced = httpx.get(f"{url}/healthz", headers={"X-Request-ID": unsafe}).headers["x-request-id"]
        assert replaced != unsafe and re.fullmatch(r"[0-9a-f]{32}", replaced)
    error = httpx.post(f"{url}/v1/score", json={"items": []}, headers={"X-Request-ID": "bad-one"})
    assert error.status_code == 422 and error.headers["x-request-id"] == "bad-one"


def test_vrs_serve_writes_json_logs_with_the_request_id():
    """The real `vrs serve` process: every stderr line is JSON; lines written while a request runs
    (here: Redis, configured but down, failing inside the request) carry its id."""
    port, dead_redis = free_port(), free_port()
    env = os.environ | {"VRS_REDIS_URL": f"redis://127.0.0.1:{dead_redis}/0", "VRS_REDIS_BREAKER_FAILURES": "100"}
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "vrs serve did not start"
            time.sleep(0.2)
        body = frames_body(videos.moving_scene(9, 64, 64))
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/score", json=body, headers={"X-Request-ID": "trace-42"}, timeout=60
        )
        assert response.status_code == 200 and response.headers["x-request-id"] == "trace-42"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)

    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    traced = [line for line in lines if line.get("request_id") == "trace-42"]
    access = [line for line in traced if line["name"] == "service.access"]
    assert len(access) == 1
    assert access[0] | {"duration_s": 0} == access[0] | {
        "message": "request",
        "method": "POST",
        "path": "/v1/score",
        "status": 200,
        "models": "signal",
        "duration_s": 0,
    }
    assert any(line["name"] == "service.cache" and "redis cache" in line["message"] for line in traced)
    # Server-Timing: the time in the server up to the answer's headers, within the logged duration
    in_server = server_timing_s(response.headers["server-timing"])
    assert in_server is not None and 0 < in_server <= access[0]["duration_s"]
    assert all({"time", "level", "name", "message"} <= set(line) for line in lines)
