"""Operational behaviour of a real gateway: draining shutdown of a real ``vrs serve`` process on
SIGTERM, API-key auth, process metrics, and ``/docs`` rendered by a real headless Chromium with
no network at all (gateway and browser in a loopback-only network namespace)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from vrs_client.videos import video_ref

from models.registry import builtin_models
from service.api import create_app
from tests import videos
from tests.conftest import ORIGIN_HOST, RunningServer, free_port, start_server, test_settings
from tests.deploy_tools import chromium
from tests.test_admission import COST_S, SLOW

VRS = Path(sys.executable).with_name("vrs")


def start_vrs_serve(port: int, stderr=None, **env: str) -> subprocess.Popen:
    """``vrs serve`` as its own process (the command the container runs), ready when this returns;
    its log (JSON lines) goes to ``stderr`` (a file) if given."""
    environ = os.environ | {"VRS_PORT": str(port), "VRS_MAX_WAIT_MS": "5"} | env
    process = subprocess.Popen([str(VRS), "serve", "--log-level", "warning"], env=environ, stderr=stderr)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("vrs serve did not become ready")


class SlowOrigin:
    """An HTTP origin on 127.0.0.2 whose video answers only once ``release`` is set."""

    def __init__(self, body: bytes) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()

        async def slow(request):
            self.arrived.set()
            await asyncio.to_thread(self.release.wait, 60)
            return Response(body, media_type="video/mp4")

        self.server: RunningServer = start_server(Starlette(routes=[Route("/slow.mp4", slow)]), host=ORIGIN_HOST)
        self.url = f"{self.server.url}/slow.mp4"

    def stop(self) -> None:
        self.release.set()
        self.server.stop()


@pytest.fixture
def slow_origin() -> Iterator[SlowOrigin]:
    origin = SlowOrigin(videos.encode(videos.moving_scene(9, 64, 96)))
    yield origin
    origin.stop()


def _serve_with_origin(port: int, grace_s: float) -> subprocess.Popen:
    return start_vrs_serve(port, VRS_URL_ALLOW_NETWORKS=f'["{ORIGIN_HOST}/32"]', VRS_SHUTDOWN_GRACE_S=str(grace_s))


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(slow_origin: SlowOrigin):
    port, grace_s = free_port(), 20.0
    process = _serve_with_origin(port, grace_s)
    base = f"http://127.0.0.1:{port}"
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                httpx.post, f"{base}/v1/score", json={"items": [{"video": {"url": slow_origin.url}}]}, timeout=60
            )
            assert slow_origin.arrived.wait(30), "the gateway never fetched the video"
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()

            deadline = time.monotonic() + 10
            while (ready := httpx.get(f"{base}/readyz", timeout=5)).status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
            refused = httpx.post(
                f"{base}/v1/score", json={"items": [{"video": video_ref(videos.unique_clip(), fps=16)}]}
            )
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "shutting_down" and refused.headers["retry-after"] == "1"
            assert httpx.get(f"{base}/healthz").status_code == 200  # liveness holds: no restart mid-drain
            assert "vrs_requests_total" in httpx.get(f"{base}/metrics").text
            assert process.poll() is None, "exited with a request still in flight"

            slow_origin.release.set()
            answered = in_flight.result(timeout=60)
        assert answered.status_code == 200, answered.text
        assert len(answered.json()["results"]) == 1
        assert process.wait(timeout=grace_s) == 0
        assert time.monotonic() - sent < grace_s
    finally:
        process.kill()


def test_sigterm_exits_after_the_grace_period_when_a_request_hangs(slow_origin: SlowOrigin):
    port, grace_s = free_port(), 2.0
    process = _serve_with_origin(port, grace_s)
    try:
        with ThreadPoolExecutor(1) as pool:
            hung = pool.submit(
                httpx.post, f"http://127.0.0.1:{port}/v1/score",
                json={"items": [{"video": {"url": slow_origin.url}}]}, timeout=60,
            )  # fmt: skip
            assert slow_origin.arrived.wait(30)
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            process.wait(timeout=grace_s + 15)  # the grace, uvicorn's 1 s for idle connections, engine stop
            waited = time.monotonic() - sent
            assert grace_s <= waited < grace_s + 5, waited  # not before the grace; promptly after it
            cut = hung.result(timeout=30)  # cut at the end of the grace, and told to retry elsewhere
            assert cut.status_code == 503, cut.text  # was uvicorn's plain-text 500 "Internal Server Error"
            assert cut.json()["error"]["code"] == "shutting_down" and cut.headers["retry-after"] == "1"
    finally:
        process.kill()


# --- clients that go away ---------------------------------------------------------------------


def _send_head_and(port: int, path: str, content_type: str, body: bytes, send: int) -> socket.socket:
    """Open a connection and send a POST whose Content-Length is ``len(body)``, but only ``send``
    bytes of its body; the caller closes the socket (the client going away)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.encode() + body[:send])
    return sock


def _requests_total(base: str) -> dict[str, float]:
    """vrs_requests_total of /v1/score by status."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith('vrs_requests_total{endpoint="/v1/score"'):
            status = line.split('status="')[1].split('"')[0]
            out[status] = out.get(status, 0) + float(line.split()[-1])
    return out


def test_a_client_leaving_mid_body_is_not_a_server_error(tmp_path: Path):
    """A client that disconnects while sending its body was a 500 with two ERROR tracebacks (the
    app's handler of unexpected errors, then uvicorn's "Exception in ASGI application"), counted as
    a 5xx: any client could inflate the error rate. It is recorded as 499 and logged at INFO."""
    port, log = free_port(), tmp_path / "serve.log"
    mp4 = videos.encode(videos.moving_scene(9, 64, 96))
    with log.open("wb") as stderr:
        process = start_vrs_serve(port, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        as_json = json.dumps({"items": [{"video": {"data": base64.b64encode(mp4).decode()}}]}).encode()
        boundary = "vrs-test-boundary"
        multipart = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n'
            f"Content-Type: video/mp4\r\n\r\n".encode()
            + mp4
            + f"\r\n--{boundary}--\r\n".encode()
        )
        for content_type, body in (
            ("application/json", as_json),
            (f"multipart/form-data; boundary={boundary}", multipart),
        ):
            sock = _send_head_and(port, "/v1/score", content_type, body, send=len(body) // 2)
            time.sleep(0.3)  # the app is reading the body
            sock.close()
        deadline = time.monotonic() + 30
        while (counts := _requests_total(base)).get("499", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counts == {"499": 2.0}, counts
        assert httpx.post(f"{base}/v1/score", json=json.loads(as_json), timeout=60).status_code == 200  # still serving
    finally:
        process.terminate()
        process.wait(timeout=30)
    errors = [line for line in log.read_text().splitlines() if '"level": "ERROR"' in line]
    assert not errors, errors


@pytest.fixture
def sleepy_gateway() -> Iterator[RunningServer]:
    """A gateway whose model takes a known 0.25 s per video, one video per batch."""
    settings = test_settings(models=["slow"], default_model="slow", max_batch_size=1, max_wait_ms=0.0)
    running = start_server(create_app(settings, models=builtin_models() | {"slow": SLOW}))
    yield running
    running.stop()


def _until(predicate, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s  # a safety net against hanging, not a speed check
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _score_body(clips: list[np.ndarray], cache: str = "use") -> bytes:
    return json.dumps({"items": [{"video": video_ref(c, fps=8)} for c in clips], "cache": cache}).encode()


def test_scoring_stops_when_its_client_disconnects(sleepy_gateway: RunningServer):
    """The work of a client that has gone used to run to its end (4 s here), holding admission and
    the model; it is cancelled: at most the batch running at the disconnect finishes."""
    engine = sleepy_gateway.app.state.engine
    batches = engine.batchers["slow"].batch_sizes
    port = int(sleepy_gateway.url.rsplit(":", 1)[1])
    body = _score_body([videos.unique_clip() for _ in range(16)], cache="bypass")  # 16 x 0.25 s = 4 s
    sock = _send_head_and(port, "/v1/score", "application/json", body, send=len(body))
    _until(lambda: batches.total() >= 1, "the first batch")
    sock.close()
    _until(lambda: engine.admission.pending_pairs == 0, "the request to end")
    time.sleep(4 * COST_S)  # what was still going to run has run
    assert batches.total() <= 6, batches  # not 16
    assert _requests_total(sleepy_gateway.url) == {"499": 1.0}


def test_a_request_following_work_whose_client_left_still_gets_its_scores(sleepy_gateway: RunningServer):
    """Single flight: a request for a video another request is computing waits for that result. When
    the leader's client leaves and its work is cancelled, the follower computes the video itself."""
    engine = sleepy_gateway.app.state.engine
    port = int(sleepy_gateway.url.rsplit(":", 1)[1])
    shared = videos.unique_clip()
    leader = _score_body([videos.unique_clip() for _ in range(5)] + [shared])
    sock = _send_head_and(port, "/v1/score", "application/json", leader, send=len(leader))
    _until(lambda: engine.cache.stats["misses"] >= 6, "the leader's cache lookups")
    with ThreadPoolExecutor(1) as pool:
        follower = pool.submit(
            httpx.post, f"{sleepy_gateway.url}/v1/score", content=_score_body([shared]),
            headers={"content-type": "application/json"}, timeout=60,
        )  # fmt: skip
        _until(lambda: engine.cache.stats["misses"] >= 7, "the follower's cache lookup")
        sock.close()
        answer = follower.result(timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["scores"]
    assert _requests_total(sleepy_gateway.url) == {"200": 1.0, "499": 1.0}


# --- API keys -------------------------------------------------------------------------------

KEYS = ["first-key-0123456789", "second-key-abcdefghij"]


@pytest.fixture(scope="module")
def keyed_gateway() -> Iterator[RunningServer]:
    running = start_server(create_app(test_settings(api_keys=KEYS)))
    yield running
    running.stop()


def test_api_keys_guard_the_api_but_not_probes_or_metrics(keyed_gateway: RunningServer):
    body = {"items": [{"video": video_ref(videos.unique_clip(), fps=16)}]}
    with httpx.Client(base_url=keyed_gateway.url, timeout=60) as c:
        missing = c.post("/v1/score", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        for header in (f"Bearer {KEYS[0]}x", "Bearer", f"Basic {KEYS[0]}", KEYS[0], f"Bearer {KEYS[0][:-1]}"):
            wrong = c.post("/v1/score", json=body, headers={"Authorization": header})
            assert wrong.status_code == 401, header
        assert c.get("/v1/models").status_code == 401
        for doubled in ([KEYS[0], "wrong"], ["wrong", KEYS[0]], [KEYS[0], KEYS[1]]):  # none is picked: refused
            headers = [("Authorization", f"Bearer {key}") for key in doubled]
            twice = c.get("/v1/models", headers=headers)
            assert twice.status_code == 401 and "more than one" in twice.json()["error"]["message"], doubled
        for key in KEYS:
            right = c.post("/v1/score", json=body, headers={"Authorization": f"Bearer {key}"})
            assert right.status_code == 200, right.text
            assert right.json()["results"][0]["scores"]
        for open_path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
            assert c.get(open_path).status_code == 200, open_path
        assert 'vrs_requests_total{endpoint="/v1/score",model="",status="401"}' in c.get("/metrics").text


def test_openapi_declares_the_bearer_scheme_on_protected_operations(keyed_gateway: RunningServer):
    schema = httpx.get(f"{keyed_gateway.url}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "One of the keys in VRS_API_KEYS.",
    }  # fmt: skip
    for path in ("/v1/score", "/v1/compare", "/v1/rank"):
        assert schema["paths"][path]["post"]["security"] == [{"bearer": []}]
        assert "401" in schema["paths"][path]["post"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert httpx.get(f"{keyed_gateway.url}/openapi.json").json() == schema  # built once, not re-wrapped per call


def test_without_keys_the_api_is_open_and_undeclared(client: httpx.Client):
    assert client.get("/v1/models").status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_process_metrics_are_exported(client: httpx.Client):
    text = client.get("/metrics").text
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        line = next((row for row in text.splitlines() if row.startswith(name + " ")), None)
        assert line is not None, name
        assert float(line.split()[1]) > 0


# --- /docs offline ----------------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update "
    "--disable-sync --no-first-run --disable-dev-shm-usage --virtual-time-budget=15000"
)


def test_docs_render_offline_in_headless_chromium(tmp_path: Path):
    """The gateway and Chromium share a network namespace with only a loopback interface, so any
    asset the page tried to take from the internet would fail to load and the UI would stay blank."""
    browser = chromium()
    port = free_port()
    script = tmp_path / "docs.sh"
    script.write_text(
        f"""set -e
ip link set lo up
VRS_PORT={port} {VRS} serve --log-level warning &
gateway=$!
for i in $(seq 600); do {sys.executable} -c "import httpx; httpx.get('http://127.0.0.1:{port}/readyz').raise_for_status()" 2>/dev/null && break; sleep 0.2; done
{browser} {CHROMIUM_FLAGS} --user-data-dir={tmp_path}/profile-dom --dump-dom http://127.0.0.1:{port}/docs > {tmp_path}/dom.html 2>/dev/null
{browser} {CHROMIUM_FLAGS} --user-data-dir={tmp_path}/profile-shot --window-size=1280,1600 --screenshot={tmp_path}/docs.png http://127.0.0.1:{port}/docs 2>/dev/null
kill -TERM $gateway; wait $gateway
"""
    )
    subprocess.run(["unshare", "-n", "bash", str(script)], check=True, timeout=300)

    dom = (tmp_path / "dom.html").read_text()
    assert 'class="swagger-ui' in dom
    for path in ("/v1/score", "/v1/compare", "/v1/rank", "/v1/models", "/healthz"):
        assert f'data-path="{path}"' in dom, path  # each operation rendered as an opblock
    assert "Video reward-model service" in dom
    assert "Failed to load API definition" not in dom

    with av.open(str(tmp_path / "docs.png")) as container:
        pixels = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert pixels.shape[:2] == (1600, 1280)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50 and pixels.std() > 10  # text, the coloured method badges: not a blank page
    # the green of POST badges (#49cc90) is on the page
    assert np.any(np.all(np.abs(pixels.astype(int) - (0x49, 0xCC, 0x90)) < 8, axis=-1))


def test_the_client_sends_its_api_key(keyed_gateway: RunningServer):
    from vrs_client import APIError, Client

    clip = videos.unique_clip()
    with Client(keyed_gateway.url, api_key=KEYS[1]) as client:
        assert client.score([clip], fps=16).results[0].scores
    with Client(keyed_gateway.url, api_key="not-a-key") as client, pytest.raises(APIError) as refused:
        client.score([clip], fps=16)
    assert refused.value.status == 401
