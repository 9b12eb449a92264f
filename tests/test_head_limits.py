"""Request heads (service/head_limits.py), against real uvicorn gateways over raw sockets: connections
that trickle their request line and headers (slowloris), or send nothing, are closed once the header
timeout runs out, and endless heads once they pass the size limit, while normal clients, keep-alive
connections idle between requests, and bodies that arrive after a prompt head are unaffected.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.api import create_app
from service.head_limits import HeadLimits
from tests.conftest import start_server, test_settings
from tests.test_body_limits import ServeProcess, _response

HEADER_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 16 * 1024
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 500  # never finished


@pytest.fixture(scope="module")
def gateway():
    running = start_server(
        create_app(test_settings(header_timeout_s=HEADER_TIMEOUT_S, max_header_bytes=MAX_HEADER_BYTES))
    )
    yield running
    running.stop()


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _trickle(url: str, n: int, head: bytes, during, give_up_s: float = 30.0) -> list[bytes | None]:
    """Open ``n`` connections and send ``head`` on each, one byte per connection every 0.3 s, until
    the server has closed them all (or ``give_up_s``). Calls ``during()`` once all are open and
    trickling. Returns, per connection, what the server sent before closing, or None if still open."""
    socks = [socket.create_connection(_address(url)) for _ in range(n)]
    received: list[bytes] = [b""] * n
    closed = [False] * n
    started = time.monotonic()
    try:
        for sock in socks:
            sock.setblocking(False)
        for i in range(len(head)):
            if all(closed) or time.monotonic() - started > give_up_s:
                break
            for k, sock in enumerate(socks):
                if closed[k]:
                    continue
                try:
                    sock.send(head[i : i + 1])
                    while chunk := sock.recv(65536):
                        received[k] += chunk
                    closed[k] = True  # recv returned b"": closed by the server
                except BlockingIOError:
                    pass
                except OSError:  # reset, or broken pipe: closed by the server
                    closed[k] = True
            if i == 1:
                during()
            time.sleep(0.3)
        return [received[k] if closed[k] else None for k in range(n)]
    finally:
        for sock in socks:
            sock.close()


def test_trickled_heads_get_408_and_are_closed_while_others_are_served(gateway):
    """50 connections trickling a request head a byte every 0.3 s (the head never completes) are
    each answered 408 header_timeout and closed; a normal request meanwhile gets 200."""
    statuses = []
    results = _trickle(
        gateway.url, 50, SLOW_HEAD, during=lambda: statuses.append(httpx.get(f"{gateway.url}/healthz").status_code)
    )
    assert statuses == [200]
    still_open = sum(r is None for r in results)
    assert still_open == 0, f"{still_open} of 50 trickling connections still open after 30 s"
    for received in results:
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert b"connection: close" in received.lower() and b'"code": "header_timeout"' in received
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


def test_silent_connections_are_closed_without_an_answer(gateway):
    """Connections that send nothing at all are closed too (nothing to answer, so no 408)."""
    socks = [socket.create_connection(_address(gateway.url)) for _ in range(5)]
    try:
        for sock in socks:
            sock.settimeout(30)
            assert sock.recv(65536) == b""  # closed by the server, without a response
    finally:
        for sock in socks:
            sock.close()


def _request(sock: socket.socket, path: str = "/healthz") -> bytes:
    """Send a GET with its head at once and read one response (Content-Length framed)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return _response(sock)


def test_keep_alive_idle_between_requests_is_governed_by_keep_alive_timeout(gateway):
    """Idle between requests for twice the header timeout (below uvicorn's 5 s keep-alive), the
    connection still serves its next request; it is then closed silently by the keep-alive timeout."""
    sock = socket.create_connection(_address(gateway.url))
    sock.settimeout(30)
    try:
        assert _request(sock).startswith(b"HTTP/1.1 200")
        time.sleep(2 * HEADER_TIMEOUT_S)
        assert _request(sock).startswith(b"HTTP/1.1 200")
        assert sock.recv(65536) == b""  # the keep-alive timeout closes it, with no 408
    finally:
        sock.close()


def test_a_later_request_trickled_on_a_kept_alive_connection_gets_408(gateway):
    """The clock starts again at the first byte of each later request on a kept-alive connection."""
    sock = socket.create_connection(_address(gateway.url))
    received = b""
    try:
        sock.settimeout(30)
        assert _request(sock).startswith(b"HTTP/1.1 200")
        sock.settimeout(0.3)
        for i in range(100):  # 30 s at most
            try:
                sock.send(SLOW_HEAD[i : i + 1])
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
        else:
            pytest.fail("the trickled second request's connection is still open after 30 s")
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 408") and b"header_timeout" in received, received[:300]


def _endless_head(url: str) -> tuple[bytes, int]:
    """Send a request head with one header that never ends, as fast as the server reads it, until
    the server closes (or 64 MiB); return what it answered and how many bytes were sent."""
    sock = socket.create_connection(_address(url))
    sock.settimeout(30)
    sent = 0
    received = b""
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            while sent < 64 * 1024**2:
                sock.sendall(b"a" * 4096)
                sent += 4096
        except OSError:  # reset, or broken pipe: the server has closed
            pass
        while True:  # what the server wrote before closing is still queued here
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    return received, sent


def test_an_endless_head_gets_431_and_is_closed():
    """A header streamed as fast as the client can send it is cut at the size limit (here with a
    header timeout of a minute, so the timeout does not end it first)."""

    async def ok(request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", ok)])
    app.state.head_limits = HeadLimits(timeout_s=60, max_bytes=MAX_HEADER_BYTES)
    running = start_server(app)
    try:
        received, sent = _endless_head(running.url)
    finally:
        running.stop()
    assert received.startswith(b"HTTP/1.1 431"), received[:300]
    assert b'"code": "header_too_large"' in received and b"connection: close" in received.lower()
    assert sent < 64 * 1024**2


def test_a_head_under_the_size_limit_is_served(gateway):
    """Headers adding up to just under the limit, sent in small pieces, are served."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    head += b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 900) for i in range((MAX_HEADER_BYTES - 1000) // 912))
    head += b"\r\n"
    assert MAX_HEADER_BYTES - 2000 < len(head) < MAX_HEADER_BYTES
    sock = socket.create_connection(_address(gateway.url))
    sock.settimeout(30)
    try:
        for i in range(0, len(head), 1000):
            sock.sendall(head[i : i + 1000])
            time.sleep(0.01)  # separate reads on the server
        response = _response(sock)
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:300]


def test_a_prompt_head_with_a_slower_body_is_not_cut(gateway):
    """The header clock stops when the head is complete: a body sent over twice the header timeout
    (well within the body rate) is read and answered."""
    body = b'{"items": []}'
    sock = socket.create_connection(_address(gateway.url))
    sock.settimeout(30)
    try:
        sock.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:5]
        )
        time.sleep(2 * HEADER_TIMEOUT_S)
        sock.sendall(body[5:])
        response = _response(sock)
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 422"), response[:300]  # no items: a schema error, not a timeout


def test_a_pipelined_head_waits_on_the_answer_before_it():
    """A head sent behind a slow request (pipelining) is not cut while that request is answered
    (2.7 header timeouts); its clock restarts when the answer is complete, so the client then has
    a whole header timeout to finish it (it takes half of one)."""
    timeout_s = 2.0

    async def slow(request):
        await asyncio.sleep(2.7 * timeout_s)
        return PlainTextResponse("slow")

    async def fast(request):
        return PlainTextResponse("fast")

    app = Starlette(routes=[Route("/slow", slow), Route("/fast", fast)])
    app.state.head_limits = HeadLimits(timeout_s=timeout_s)
    running = start_server(app)
    sock = socket.create_connection(_address(running.url))
    sock.settimeout(30)
    try:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\n")
        first = _response(sock)
        time.sleep(timeout_s / 2)
        sock.sendall(b"Host: x\r\n\r\n")
        second = _response(sock)
    finally:
        sock.close()
        running.stop()
    assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"slow"), first
    assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"fast"), second


def test_vrs_serve_limits_heads():
    """``vrs serve`` runs the same protocol, with ``VRS_HEADER_TIMEOUT_S`` and ``VRS_MAX_HEADER_BYTES``."""
    server = ServeProcess(header_timeout_s=str(HEADER_TIMEOUT_S), max_header_bytes=str(MAX_HEADER_BYTES))
    try:
        results = _trickle(server.url, 3, SLOW_HEAD, during=lambda: None)
        big, _ = _endless_head(server.url)
    finally:
        server.stop()
    assert all(r is not None and r.startswith(b"HTTP/1.1 408") for r in results), results
    assert big.startswith(b"HTTP/1.1 431"), big[:300]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # past the parser's own bound
        b"HELLO WORLD\r\n\r\n",
        # Content-Length and chunked together: the request smuggling shape
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["long-request-line", "not-http", "cl-and-te"],
)
def test_requests_the_parser_refuses_get_a_json_400(gateway, request_bytes):
    sock = socket.create_connection(_address(gateway.url))
    sock.settimeout(30)
    try:
        sock.sendall(request_bytes)
        response = _response(sock)
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 400"), response[:300]
    assert b'"code": "bad_http"' in response and b"content-type: application/json" in response.lower()
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
