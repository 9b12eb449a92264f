"""Graceful shutdown: drain on SIGTERM, then exit.

Contract: on the first SIGTERM (or SIGINT) the gateway stops admitting work, while it still
listens, so that a load balancer that has not yet noticed gets a clear answer instead of a
refused connection:

- ``/readyz`` answers 503 (``draining``), so Kubernetes takes the pod out of its Service;
- every new request other than ``/healthz``, ``/readyz`` and ``/metrics`` answers 503
  (``shutting_down``, with ``Retry-After``), so clients retry on another replica;
- requests already admitted run to completion, for at most ``grace_s`` seconds
  (``VRS_SHUTDOWN_GRACE_S``); those still running then are cancelled and answered the same 503
  ``shutting_down`` (unless their answer had begun), not uvicorn's plain-text 500; then uvicorn
  stops, and the engine stops with the app's lifespan.

A second signal exits at once. :class:`DrainGate` is the ASGI middleware that keeps the count
and answers the 503s; :class:`DrainingServer` is the uvicorn server that starts the drain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from types import FrameType

import uvicorn

from service.head_limits import uvicorn_config

log = logging.getLogger(__name__)

ALWAYS_OPEN = frozenset({"/healthz", "/metrics"})  # liveness and scrapes keep working while draining


class Drain:
    """Shared state: whether the gateway is draining, and how many requests are in flight."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self.expired = False  # the grace is over: requests still in flight are cut
        self.in_flight = 0
        self.tasks: set[asyncio.Task] = set()  # the requests in flight (DrainGate keeps it)

    def begin(self) -> None:
        if not self.draining:
            log.info("draining: no new requests; waiting for %d in flight (grace %.1fs)", self.in_flight, self.grace_s)
        self.draining = True

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no request is in flight, at most ``timeout_s`` (default ``grace_s``); True when all finished."""
        deadline = time.monotonic() + (self.grace_s if timeout_s is None else timeout_s)
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight

    def expire(self) -> None:
        """End the grace: cancel every request still in flight; ``DrainGate`` answers each 503."""
        log.warning("drain grace of %.1fs over with %d requests in flight; cutting them", self.grace_s, self.in_flight)
        self.expired = True
        for task in self.tasks:
            task.cancel()


class DrainGate:
    """ASGI middleware: counts admitted requests; while draining, 503 for ``/readyz`` and new work."""

    def __init__(self, app, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in ALWAYS_OPEN:
            return await self.app(scope, receive, send)
        if self.drain.draining:
            if scope["path"] == "/readyz":
                return await _unavailable(send, "draining", "the gateway is shutting down", retry=False)
            return await _unavailable(send, "shutting_down", "the gateway is shutting down; retry on another replica")
        task = asyncio.current_task()
        assert task is not None  # an ASGI app runs in a task
        answered = False

        async def watching_send(message):
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        self.drain.in_flight += 1
        self.drain.tasks.add(task)
        try:
            await self.app(scope, receive, watching_send)
        except asyncio.CancelledError:
            if not self.drain.expired or answered:
                raise
            task.uncancel()  # cut by the end of the grace (Drain.expire): the client is told to retry
            await _unavailable(send, "shutting_down", "the gateway is shutting down; retry on another replica")
        finally:
            self.drain.tasks.discard(task)
            self.drain.in_flight -= 1


async def _unavailable(send, code: str, message: str, retry: bool = True) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "item": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains (see the module docstring) before
    uvicorn's own shutdown; the process then exits with status 0."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_task: asyncio.Future | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining or self._loop is None or sig not in (signal.SIGTERM, signal.SIGINT):
            self.should_exit = self.force_exit = True  # a second signal: stop now
            return
        self.drain.begin()
        self._loop.call_soon_threadsafe(self._start_exit_when_idle)

    def _start_exit_when_idle(self) -> None:
        self._exit_task = asyncio.ensure_future(self._exit_when_idle())  # held: the loop keeps only weak refs

    async def _exit_when_idle(self) -> None:
        if not await self.drain.wait_idle():
            self.drain.expire()
            await self.drain.wait_idle(timeout_s=2.0)  # the cut requests' clean-up and 503s
        self.should_exit = True


def serve(app, host: str, port: int) -> None:
    """Run ``app`` (built by ``service.api.create_app``) with draining shutdown, in the foreground."""
    drain: Drain = app.state.drain
    # After the drain, connections still open are idle keep-alives: uvicorn closes them at once.
    config = uvicorn_config(app, host, port, log_config=None, access_log=False, timeout_graceful_shutdown=1)
    DrainingServer(config, drain).run()
