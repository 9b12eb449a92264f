"""ASGI middleware guarding request bodies: size, bytes read at once, and how slowly they arrive.

- A body over ``max_bytes`` (declared by Content-Length, or counted as it streams) gets 413.
- ``budget`` (a ``ByteBudget``) caps the bytes of all requests being read or processed at once:
  a request reserves its declared length before its body is read (a chunked body reserves as
  it streams) and releases it when its answer is sent. The engine charges the videos it
  downloads for URL items to the same budget (``Holding``). A request that would push the total
  over the cap gets 429 ``overloaded`` at once, with ``Retry-After``, rather than waiting:
  a waiting request still holds its connection and the client's half-sent body, and clients
  (trainers) already retry on 429. Its body is then read and dropped (no memory held), as is
  the unread body of any request the app answered without reading it (an early 429), because
  HTTP/1.1 clients send the whole body before reading the answer and would otherwise see a
  reset connection instead of the 429. An idle server always takes one body, however large, up to
  ``max_bytes``. Memory held per body is up to ~3x its bytes for JSON with base64 videos
  (raw body, decoded text, decoded bytes).
- Slow senders (slowloris): the body must arrive at ``min_rate`` bytes/s on average after a
  grace of ``read_timeout_s`` (deadline = start + read_timeout_s + received / min_rate). Past
  the deadline the request gets 408 ``body_timeout`` with ``Connection: close``, so the
  connection is closed. The clock starts when the request's headers are complete (how long
  those may take is below ASGI: ``service/head_limits.py``).

Failures are raised as ``ServiceError`` from ``receive`` when the route is reading the body,
so the app's one error handler answers them; before the route runs they are answered here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from service.errors import Overloaded, ServiceError, TooLarge


class BodyTimeout(ServiceError):
    status, code = 408, "body_timeout"


class ByteBudget:
    """Bytes that requests hold at once (bodies being read or processed, videos downloaded for URL
    items), capped at ``limit``; event-loop only. A holder may always grow while it is the only
    one, so an idle server still takes one request, however large (up to the per-request limits)."""

    def __init__(self, limit: int, retry_after_s: Callable[[], float] = lambda: 1.0) -> None:
        self.limit = limit
        self.used = 0
        self.retry_after_s = retry_after_s

    def take(self, n: int, held: int = 0) -> bool:
        """Add ``n`` bytes for a holder that has ``held`` already; False (nothing taken) if that would
        pass the limit while others hold bytes too."""
        if self.used > held and self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give_back(self, n: int) -> None:
        self.used -= n

    def overloaded(self, wanted: int) -> Overloaded:
        return Overloaded(
            f"{self.used} bytes of requests are in progress; {wanted} more would exceed "
            f"max_inflight_body_bytes={self.limit}",
            retry_after_s=max(1.0, self.retry_after_s()),
        )


class Holding:
    """One request's share of a ``ByteBudget`` for the bytes it downloads (URL items): taken chunk by
    chunk, at most ``limit`` in all (413 past it, 429 when the budget is spent), all given back by
    ``release`` when the request ends."""

    def __init__(self, budget: ByteBudget, limit: int) -> None:
        self.budget = budget
        self.limit = limit
        self.held = 0

    def make_room(self, n: int) -> None:
        """413 now if ``n`` more bytes would pass the request's own cap (a declared length)."""
        if self.held + n > self.limit:
            raise TooLarge(f"the videos this request downloads exceed {self.limit} bytes in all")

    def take(self, n: int) -> None:
        self.make_room(n)
        if not self.budget.take(n, self.held):
            raise self.budget.overloaded(n)
        self.held += n

    def release(self) -> None:
        self.budget.give_back(self.held)
        self.held = 0


class BodyLimits:
    """The middleware; bodies are charged to ``budget``, which the app's engine shares."""

    def __init__(
        self,
        app,
        *,
        max_bytes: int,
        budget: ByteBudget,
        read_timeout_s: float,
        min_rate: float,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget
        self.read_timeout_s = read_timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared_header = dict(scope["headers"]).get(b"content-length", b"")
        declared = int(declared_header) if declared_header.isdigit() else 0
        start = time.monotonic()
        if declared > self.max_bytes:
            return await _answer(send, TooLarge(f"request body exceeds {self.max_bytes} bytes"))
        if declared and not self.budget.take(declared):
            await _answer(send, self.budget.overloaded(declared))
            return await self._drain(receive, start, 0)

        reserved = declared
        received = 0
        body_done = False
        timed_out = False
        status = 0

        async def guarded_receive():
            nonlocal reserved, received, body_done, timed_out
            if body_done:
                return await receive()
            try:
                message = await self._receive_by_deadline(receive, start, received)
            except BodyTimeout:
                timed_out = True
                raise
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            if received > self.max_bytes:
                raise TooLarge(f"request body exceeds {self.max_bytes} bytes")
            if received > reserved:  # chunked, or longer than declared
                if not self.budget.take(received - reserved, reserved):
                    raise self.budget.overloaded(received)
                reserved = received
            return message

        async def closing_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if timed_out:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, closing_send)
        finally:
            self.budget.give_back(reserved)
        if not body_done and not timed_out and status not in (0, 413):
            # answered before reading the body (e.g. 429): read the rest and drop it, so the client,
            # which sends its whole body before reading, gets the answer rather than a reset
            await self._drain(receive, start, received)

    async def _receive_by_deadline(self, receive, start: float, received: int):
        """``receive()``, or ``BodyTimeout`` once the body has fallen behind the minimum rate."""
        timeout = start + self.read_timeout_s + received / self.min_rate - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                return await receive()
        except TimeoutError:
            raise BodyTimeout(
                f"request body arrived too slowly ({received} bytes in {time.monotonic() - start:.0f} s; "
                f"at least {self.min_rate:g} bytes/s after {self.read_timeout_s:g} s)"
            ) from None

    async def _drain(self, receive, start: float, received: int) -> None:
        """Read and discard the rest of a body (up to ``max_bytes``, at the minimum rate)."""
        try:
            while received <= self.max_bytes:
                message = await self._receive_by_deadline(receive, start, received)
                if message["type"] != "http.request":
                    return
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
        except BodyTimeout:
            return  # the server closes the connection


async def _answer(send, error: ServiceError) -> None:
    """Answer without the app."""
    body = json.dumps({"error": error.to_dict()}).encode()
    headers = [(b"content-type", b"application/json")]
    if isinstance(error, Overloaded):
        headers.append((b"retry-after", str(round(error.retry_after_s)).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
