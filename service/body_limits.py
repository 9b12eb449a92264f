"""ASGI middleware guarding request bodies: size, bytes held at once, and how slowly they arrive.

- A body over ``max_bytes`` (declared by Content-Length, or counted as it streams) gets 413; a
  declared length over it is answered at once, with ``Connection: close``.
- ``budget`` (a ``ByteBudget``) caps the bytes of all requests being read or processed at once.
  A body is charged for the bytes that have actually arrived, chunk by chunk as the app reads
  them (a ``Holding``), not for its declared length, and gives them back when its answer is sent;
  the engine charges the videos it downloads for URL items to the same budget the same way. So
  a client that declares a large body and sends it slowly holds only what it has sent, and
  cannot lock others out with the length it promises. A chunk that would push the total over
  the cap gets 429 ``overloaded`` then, with ``Retry-After``, even part way through a body (the
  request gives back what it held, and the client, which retries on 429, sends it again),
  rather than waiting: a waiting request would still hold its bytes, its connection and the
  client's half-sent body, and requests part way could wait on each other. An idle server (no
  other holder) always takes one body, however large, up to ``max_bytes``. Memory held per body
  is up to ~3x its bytes for JSON with base64 videos (raw body, decoded text, decoded bytes).
- Slow senders (slowloris): the body must arrive at ``min_rate`` bytes/s on average after a
  grace of ``read_timeout_s`` (deadline = start + read_timeout_s + received / min_rate). Past
  the deadline the request gets 408 ``body_timeout`` with ``Connection: close``, so the
  connection is closed. The clock starts when the request's headers are complete (how long
  those may take is below ASGI: ``service/head_limits.py``).
- The unread rest of a body that was answered before it was read (a 404, 413, 415, 429 or a
  multipart 400 part way) is below ASGI too: once the answer is complete, uvicorn's ``receive``
  only says ``http.disconnect``. ``service/head_limits.py`` reads and drops it, under the same
  deadline and up to ``max_bytes``, so that the client, which sends its whole body before it
  reads, gets the answer (also with ``Connection: close``) rather than a reset connection.

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
    items), capped at ``limit``; event-loop only. Holders take bytes as they arrive (``Holding``).
    A holder may always grow while it is the only one, so an idle server still takes one request,
    however large (up to the per-request limits)."""

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
    """One request's share of a ``ByteBudget``: its body's bytes (``BodyLimits``) or the bytes it
    downloads (URL items), taken chunk by chunk as they arrive, at most ``limit`` in all (413 past
    it, 429 when the budget is spent), all given back by ``release`` when the request ends."""

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
        if declared > self.max_bytes:  # it cannot be read, so the connection cannot be used again
            return await _answer(send, TooLarge(f"request body exceeds {self.max_bytes} bytes"), close=True)

        body = Holding(self.budget, self.max_bytes)
        received = 0
        body_done = False
        timed_out = False

        async def guarded_receive():
            nonlocal received, body_done, timed_out
            if body_done:
                return await receive()
            try:
                message = await self._receive_by_deadline(receive, start, received)
            except BodyTimeout:
                timed_out = True
                raise
            if message["type"] != "http.request":
                return message
            chunk = len(message.get("body", b""))
            received += chunk
            body_done = not message.get("more_body", False)
            if received > self.max_bytes:
                raise TooLarge(f"request body exceeds {self.max_bytes} bytes")
            body.take(chunk)  # 429 when the budget cannot take it
            return message

        async def closing_send(message):
            if message["type"] == "http.response.start" and timed_out:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, closing_send)
        finally:
            body.release()

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


async def _answer(send, error: ServiceError, close: bool = False) -> None:
    """Answer without the app (and with ``Connection: close`` if ``close``)."""
    body = json.dumps({"error": error.to_dict()}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
