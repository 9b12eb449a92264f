"""Per-request telemetry: a request id, one JSON log line, and the request metrics.

The request id comes from the client's ``X-Request-ID`` header when it is a sane token, or
is generated; it is returned in the response's ``X-Request-ID`` header and attached to
every log record written while the request runs (a context variable), so one grep finds a
request's whole story. Every response also says how long it was in this server, from the
request's arrival at the app to its answer's headers: ``Server-Timing: app;dur=<ms>`` (W3C
Server Timing), so a client can tell server time from network and client-side queueing.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

from service.metrics import Metrics

log = logging.getLogger("service.access")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

ENDPOINTS = frozenset({"/v1/score", "/v1/compare", "/v1/rank", "/v1/models", "/healthz", "/readyz", "/metrics"})
_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: logged at debug only
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
        return True


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for every logger (ours, uvicorn's), each carrying ``request_id``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class RequestTelemetry:
    """ASGI middleware: request id in and out, in-flight gauge, request counter and latency
    histogram by endpoint (unknown paths are ``other``, so labels stay bounded), bytes received,
    and one access-log line. Routes may set ``request.state.models`` for the model label."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        status, received = 500, 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                took = f"app;dur={1000 * (time.perf_counter() - start):.1f}".encode()  # ms in this server so far
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", rid.encode()),
                    (b"server-timing", took),
                ]
            await send(message)

        in_flight = self.metrics.in_flight.labels(endpoint)
        in_flight.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, counting_receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            in_flight.dec()
            models = scope.get("state", {}).get("models", "")
            self.metrics.requests.labels(endpoint, models, str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(seconds)
            self.metrics.received_bytes.labels(endpoint).inc(received)
            log.log(
                logging.DEBUG if path in _QUIET else logging.INFO,
                "request",
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_s": round(seconds, 6),
                    "models": models,
                    "bytes_received": received,
                },
            )
            request_id.reset(token)
