"""Request bodies: concurrent body bytes are capped (memory measured as the RSS of a real
``vrs serve`` process), multipart uploads stay spooled on disk, prompts are bounded, and slow
senders (slowloris, raw sockets trickling bytes) are answered 408 and disconnected in bounded time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.api import create_app
from tests import videos
from tests.conftest import free_port, start_server, test_settings

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024**2


class ServeProcess:
    """``vrs serve`` in its own process (so its RSS is its own), with VRS_* settings."""

    def __init__(self, **settings: str) -> None:
        self.port = free_port()
        env = os.environ | {f"VRS_{k.upper()}": v for k, v in settings.items()} | {"VRS_PORT": str(self.port)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("vrs serve did not start")
            time.sleep(0.2)

    def status(self, field: str) -> int:
        """A /proc/<pid>/status memory field (VmRSS, VmHWM) in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def serve_process():
    started: list[ServeProcess] = []

    def start(**settings: str) -> ServeProcess:
        started.append(ServeProcess(**settings))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def test_concurrent_body_bytes_are_capped_by_rss(serve_process):
    """Six 30 MB JSON bodies at once against a 40 MB in-flight cap: one is read at a time, the
    others are refused 429 with Retry-After; the server's peak RSS grows by about one body's
    worth (raw, text and decoded copies), not six."""
    server = serve_process(max_inflight_body_bytes=str(40 * MiB))
    data = base64.b64encode(os.urandom(22 * MiB)).decode()  # ~30 MB of base64, not a video
    body = ('{"items": [{"video": {"data": "' + data + '"}}]}').encode()
    rss_before = server.status("VmRSS")

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            headers = {"content-type": "application/json"}
            return await asyncio.gather(*(client.post("/v1/score", content=body, headers=headers) for _ in range(6)))

    responses = asyncio.run(send_all())
    growth = server.status("VmHWM") - rss_before
    statuses = sorted(r.status_code for r in responses)
    assert 429 in statuses, statuses
    assert all(s in (415, 429) for s in statuses), statuses  # 415: the bytes are not a video container
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1
    assert growth < 250 * MiB, f"peak RSS grew {growth / MiB:.0f} MiB"


def test_multipart_uploads_are_spooled_not_read_into_memory(serve_process):
    """A 150 MB file part (not a video) is refused without the server's RSS growing by its size."""
    server = serve_process()
    blob = os.urandom(150 * MiB)
    rss_before = server.status("VmRSS")
    response = httpx.post(f"{server.url}/v1/score", files={"video": ("big.mp4", blob, "video/mp4")}, timeout=120)
    growth = server.status("VmHWM") - rss_before
    assert response.status_code == 415, response.text
    assert growth < 60 * MiB, f"peak RSS grew {growth / MiB:.0f} MiB for a 150 MiB upload"


@pytest.mark.parametrize(
    "body",
    [
        b'{"items":[' + b'{"video":{"url":"http://a"}},' * 700_000 + b'{"video":{"url":"http://a"}}]}',
        b'{"items":[{"video":{"url":"http://a"}}],"models":[' + b"[]," * 6_000_000 + b"[]]}",
    ],
    ids=["700k-items", "6M-empty-arrays"],
)
def test_a_json_body_of_tiny_values_is_refused_before_it_is_built(serve_process, body):
    """20 MB of tiny JSON values, which pydantic would build at about 400 bytes each before it
    validates (loadtests/bench_json_values.py): refused 413 unparsed, the RSS flat."""
    server = serve_process()
    rss_before = server.status("VmRSS")
    response = httpx.post(
        f"{server.url}/v1/score", content=body, headers={"content-type": "application/json"}, timeout=120
    )
    growth = server.status("VmHWM") - rss_before
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large", response.text
    assert "values" in response.json()["error"]["message"]
    assert growth < 3 * len(body) + 30 * MiB, (
        f"peak RSS grew {growth / MiB:.0f} MiB for a {len(body) / MiB:.0f} MiB body"
    )


def test_a_request_with_long_prompts_full_of_separators_is_not_refused_for_its_values():
    """The value count skips strings: 64 prompts of commas and brackets count as 64 strings."""
    from vrs_wire.schemas import ScoreRequest

    from service import ingest

    items = [{"video": {"url": "http://a/x.mp4"}, "prompt": '[{,"\\' * 1600} for _ in range(64)]
    raw = json.dumps({"items": items}).encode()
    assert raw.count(b",") > ingest.json_budget(64)  # the quick count alone would refuse it
    assert len(ingest.parse_json(ScoreRequest, raw).items) == 64


@pytest.fixture(scope="module")
def strict_gateway():
    settings = test_settings(body_read_timeout_s=1.0, body_min_bytes_per_s=1000.0, max_prompt_chars=100)
    running = start_server(create_app(settings))
    yield running
    running.stop()


def test_prompt_length_is_bounded(strict_gateway):
    ref = {"frames": base64.b64encode(videos.npy_bytes(videos.unique_clip())).decode(), "fps": 8}
    body = {"items": [{"video": ref, "prompt": "ok"}, {"video": ref, "prompt": "x" * 101}]}
    response = httpx.post(f"{strict_gateway.url}/v1/score", json=body, timeout=60)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "prompt_too_long" and error["item"] == 1 and "100" in error["message"]


def _trickle(url: str, stop_after_s: float) -> tuple[bytes, float]:
    """Open a raw connection, send headers for a 10 kB body, then one byte every 0.2 s until the
    server answers or closes; return what it sent and when the connection ended."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(0.2)
    sock.sendall(
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n{"
    )
    started = time.monotonic()
    received = b""
    try:
        while time.monotonic() - started < stop_after_s:
            try:
                chunk = sock.recv(65536)
                if not chunk:  # closed by the server
                    return received, time.monotonic() - started
                received += chunk
            except TimeoutError:
                try:
                    sock.sendall(b" ")
                except OSError:
                    return received, time.monotonic() - started
            except OSError:
                return received, time.monotonic() - started
        return received, float("inf")
    finally:
        sock.close()


def test_slow_bodies_get_408_and_are_disconnected(strict_gateway):
    """20 raw connections trickling a byte every 0.2 s (5 B/s against a 1000 B/s minimum after a
    1 s grace): each gets 408 body_timeout and is closed, well before the 15 s the test waits."""
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: _trickle(strict_gateway.url, 15.0), range(20)))
    for received, ended in results:
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert b"body_timeout" in received
        assert ended < 5.0, f"connection still open after {ended:.1f} s"
    # the server still answers normal requests
    assert httpx.get(f"{strict_gateway.url}/healthz", timeout=5).status_code == 200


def test_a_fast_body_within_the_rate_is_not_cut(strict_gateway):
    ref = {"frames": base64.b64encode(videos.npy_bytes(videos.unique_clip())).decode(), "fps": 8}
    response = httpx.post(f"{strict_gateway.url}/v1/score", json={"items": [{"video": ref}]}, timeout=60)
    assert response.status_code == 200, response.text


# Byte budget and early answers, over raw sockets: small limits so that a few MiB exercise them.


@pytest.fixture(scope="module")
def tight_gateway():
    """Bodies up to 1.5 MiB, 2 MiB of them at once, at 1000 bytes/s after a 1 s grace."""
    settings = test_settings(
        max_request_bytes=3 * MiB // 2,
        max_inflight_body_bytes=2 * MiB,
        body_read_timeout_s=1.0,
        body_min_bytes_per_s=1000.0,
    )
    running = start_server(create_app(settings))
    yield running
    running.stop()


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(30)
    return sock


def _head(path: bytes, length: int | None, content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    """A POST head with ``Content-Length: length``, or chunked when None; ``extra`` more header lines."""
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n%s\r\n%s\r\n" % (path, content_type, framing, extra)


def _response(sock: socket.socket) -> bytes:
    """Read one Content-Length framed response, head and body, as bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-body: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def _answer(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """Read one Content-Length framed response (``_response``): status, headers (lower-case names), body."""
    head, _, body = _response(sock).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _score_one_clip(url: str) -> httpx.Response:
    ref = {"frames": base64.b64encode(videos.npy_bytes(videos.unique_clip())).decode(), "fps": 8}
    return httpx.post(f"{url}/v1/score", json={"items": [{"video": ref}]}, timeout=120)


def test_slow_uploads_hold_only_the_bytes_they_sent(tight_gateway):
    """Two uploads that declare 1 MiB each but have sent 20 kB (slow clients, or an attack that
    trickles just above the minimum rate) hold 40 kB of the 2 MiB in-flight budget, not the 2 MiB
    they declared, so a normal request meanwhile is served rather than refused 429."""
    budget = tight_gateway.app.state.engine.bytes_in_flight
    holders = [_connect(tight_gateway.url) for _ in range(2)]
    try:
        for sock in holders:
            sock.sendall(_head(b"/v1/score", MiB) + b'{"items": [' + b" " * 20_000)
        _wait_for(lambda: budget.used >= 40_000)
        response = _score_one_clip(tight_gateway.url)
        assert response.status_code == 200, response.text
    finally:
        for sock in holders:
            sock.close()
    _wait_for(lambda: budget.used == 0)


@pytest.mark.parametrize("connection", [b"", b"Connection: close\r\n"], ids=["keep-alive", "connection-close"])
def test_a_body_that_outgrows_the_budget_part_way_gets_429(tight_gateway, connection):
    """With 1.2 MiB of another body held, a 1 MiB body is refused 429 (with Retry-After) when its
    bytes no longer fit. The client sends its whole body before it reads, and gets the answer, not
    a reset, also with ``Connection: close``; a kept-alive connection then serves its next request.
    The refused request gives back what it held."""
    budget = tight_gateway.app.state.engine.bytes_in_flight
    holder = _connect(tight_gateway.url)
    sock = _connect(tight_gateway.url)
    try:
        holder.sendall(_head(b"/v1/score", 3 * MiB // 2) + b'{"items": [' + b" " * (6 * MiB // 5))
        _wait_for(lambda: budget.used >= 6 * MiB // 5)
        body = b'{"items": [' + b" " * MiB + b"]}"
        sock.sendall(_head(b"/v1/score", len(body), extra=connection) + body)
        status, headers, answer = _answer(sock)
        assert status == 429, answer
        assert json.loads(answer)["error"]["code"] == "overloaded" and int(headers[b"retry-after"]) >= 1
        if connection:
            assert sock.recv(65536) == b""  # closed once the body was in: no reset
        else:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _answer(sock)[0] == 200
    finally:
        holder.close()
        sock.close()
    _wait_for(lambda: budget.used == 0)


@pytest.mark.parametrize(
    "head, size, expected",
    [
        (_head(b"/nope", MiB), MiB, 404),
        (_head(b"/v1/score", MiB, content_type=b"text/plain"), MiB, 415),
        (_head(b"/v1/score", 2 * MiB), 2 * MiB, 413),  # over the 1.5 MiB limit, within its drain slack
    ],
    ids=["404", "415", "413"],
)
def test_an_early_answer_reaches_a_client_that_sends_connection_close(tight_gateway, head, size, expected):
    """Answered before its body is read, a ``Connection: close`` client (which sends the whole body,
    then reads) gets the answer and a clean close; the server no longer closes with the body
    unread, which made the kernel reset the connection and the answer was lost. A body somewhat
    over the request limit is drained too (a 22 KB file over a 16 KB limit was a reset, not a 413)."""
    head = head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    sock = _connect(tight_gateway.url)
    try:
        sock.sendall(head + b" " * size)
        time.sleep(0.5)  # read late, as a busy client does: a reset by then would discard the answer
        assert _answer(sock)[0] == expected
        assert sock.recv(65536) == b""
    finally:
        sock.close()


def _trickle_after_answer(url: str, head: bytes, first: bytes, give_up_s: float = 20.0) -> tuple[int, float]:
    """Send ``head`` and ``first``, read the answer, then send a byte every 0.3 s of a body nobody reads;
    return the answer's status and how long the server kept the connection after it (inf: open)."""
    sock = _connect(url)
    try:
        sock.sendall(head + first)
        status = _answer(sock)[0]
        answered = time.monotonic()
        while time.monotonic() - answered < give_up_s:
            time.sleep(0.3)
            try:
                sock.sendall(b"x")
            except OSError:  # reset, or broken pipe: closed by the server
                return status, time.monotonic() - answered
        return status, float("inf")
    finally:
        sock.close()


@pytest.mark.parametrize(
    "head, first, expected",
    [
        (_head(b"/nope", MiB), b"", 404),
        (_head(b"/v1/score", None, content_type=b"text/plain"), b"100000\r\n", 415),
        (_head(b"/v1/score", 10 * MiB), b"", 413),  # declared over the limit
    ],
    ids=["404", "415-chunked", "413"],
)
def test_the_unread_rest_of_an_answered_body_has_the_body_deadline(tight_gateway, head, first, expected):
    """After an answer sent before the body was read, the rest of the body must still arrive at
    the minimum rate after the grace (1000 bytes/s after 1 s): a byte every 0.3 s is cut within a
    few seconds. Before, each byte kept the connection open, for ever."""
    status, kept_s = _trickle_after_answer(tight_gateway.url, head, first)
    assert status == expected
    assert kept_s < 10, f"connection still open {kept_s:.1f} s after the answer"
    assert httpx.get(f"{tight_gateway.url}/healthz", timeout=5).status_code == 200


def test_an_answered_body_that_never_ends_is_cut_at_the_size_limit(tight_gateway):
    """A chunked body sent as fast as the server drops it after a 415 is cut once the body passes
    the request limit (1.5 MiB), not read for ever."""
    sock = _connect(tight_gateway.url)
    sent = 0
    try:
        sock.sendall(_head(b"/v1/score", None, content_type=b"text/plain"))
        assert _answer(sock)[0] == 415
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)
        try:
            while sent < 64 * MiB:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # reset, or broken pipe: closed by the server
            pass
    finally:
        sock.close()
    assert sent < 16 * MiB, f"{sent / MiB:.0f} MiB dropped and the connection still open"


def test_a_connection_idle_after_an_answered_body_is_closed_by_the_keep_alive_timeout(tight_gateway):
    """Once the rest of an answered body is in, the connection is idle as after any answer, and
    uvicorn's keep-alive timeout (5 s) closes it; before, the body's bytes had cancelled that timer
    and the connection stayed open for ever."""
    sock = _connect(tight_gateway.url)
    try:
        sock.sendall(_head(b"/nope", 1000))
        assert _answer(sock)[0] == 404
        sock.sendall(b"x" * 1000)
        sent = time.monotonic()
        sock.settimeout(20)
        try:
            assert sock.recv(65536) == b""
        except TimeoutError:
            pytest.fail("connection still open 20 s after the body came in")
        assert time.monotonic() - sent < 15
    finally:
        sock.close()
