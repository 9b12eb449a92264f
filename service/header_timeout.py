"""Header timeout (slowloris on request heads): uvicorn's HTTP/1.1 protocol with a deadline on each head.

uvicorn times out only idle keep-alive connections between requests; a client that opens a
connection and sends nothing, or trickles the request line and headers a byte at a time, holds
its connection (and file descriptor) forever. This is below ASGI, so ``service/body_limits.py``
cannot see it. :func:`protocol` makes the uvicorn protocol class that closes such connections;
:func:`uvicorn_config` builds every server the project starts (``vrs serve`` and the tests') with it.

Contract, per connection, with ``timeout_s`` (``VRS_HEADER_TIMEOUT_S``):

- The clock starts when the connection is made (for its first request), or when the first byte of
  a later request arrives on a kept-alive connection (between requests uvicorn's keep-alive
  timeout governs, as before). It stops when the request's head (request line and headers) is
  complete; the body's pace is then ``body_limits``' business.
- When it runs out after part of a head arrived, the server answers ``408`` (``header_timeout``,
  the gateway's JSON error body) with ``Connection: close`` and closes the connection. When
  nothing arrived it closes the connection without an answer, as the keep-alive timeout does.
- A head that arrives while an earlier request on the connection is still being answered
  (pipelining) waits on the server, not the client: the clock does not cut the connection then,
  and restarts when that answer is complete.

The number of connections is not bounded here: uvicorn's ``limit_concurrency`` does not refuse
connections, it answers 503 to complete requests once that many connections are open, so slow
clients holding connections would turn it against good clients. The deadline bounds how long
each slow connection lives instead.
"""

from __future__ import annotations

import asyncio
import json
import logging

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadline above; :func:`protocol` sets ``timeout_s``."""

    timeout_s: float = DEFAULT_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_started = False
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_started = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_timer is not None:  # a pipelined head waited on this answer
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            self._arm()  # waiting on the server's answer, not on the client; re-armed when it is complete
            return
        if self._head_started:
            log.info("%s: request head not complete after %g s; answering 408 and closing", self.client, self.timeout_s)
            self._send_408()
        self.transport.close()

    def _send_408(self) -> None:
        message = f"the request line and headers did not arrive within {self.timeout_s:g} s"
        body = json.dumps({"error": {"code": "header_timeout", "message": message, "item": None}}).encode()
        head = [STATUS_LINE[408]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)


def protocol(timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class (uvicorn ``Config(http=...)``) with a head deadline of ``timeout_s``."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"timeout_s": timeout_s})


def uvicorn_config(app, host: str, port: int, **options) -> uvicorn.Config:
    """``uvicorn.Config`` for ``app`` with the header timeout; ``options`` are other Config arguments.

    The timeout is ``app.state.header_timeout_s`` (``service.api.create_app`` sets it from the
    settings), else :data:`DEFAULT_TIMEOUT_S` (other ASGI apps, such as the tests' origins)."""
    timeout_s = getattr(getattr(app, "state", None), "header_timeout_s", DEFAULT_TIMEOUT_S)
    return uvicorn.Config(app, host=host, port=port, http=protocol(timeout_s), **options)
