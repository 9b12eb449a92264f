"""Request heads (request line and headers): how long and how large they may be, below ASGI.

uvicorn times out only idle keep-alive connections between requests, and its httptools protocol
does not bound a head's size: a client that opens a connection and sends nothing, or trickles a
head a byte at a time (slowloris), holds its connection forever, and one that streams an endless
header grows the server's memory (by about twice what it sent, with quadratic copying). This is
below ASGI, so ``service/body_limits.py`` cannot see it. :class:`HeadLimitsProtocol` is uvicorn's
httptools protocol with both limits; :func:`uvicorn_config` builds every server the project starts
(``vrs serve``, the tests', the benchmarks') with it.

Contract, per connection, with :class:`HeadLimits` (``VRS_HEADER_TIMEOUT_S``, ``VRS_MAX_HEADER_BYTES``):

- Time: the clock starts when the connection is made (for its first request), or when the first
  byte of a later request arrives on a kept-alive connection (between requests uvicorn's
  keep-alive timeout governs, as before). It stops when the head is complete; the body's pace is
  then ``body_limits``' business. When it runs out after part of a head arrived, the answer is
  ``408`` ``header_timeout``; when nothing arrived the connection is closed without an answer,
  as the keep-alive timeout does. A head that arrives while an earlier request on the connection
  is still being answered (pipelining) waits on the server, not the client: the clock does not
  cut the connection then, and restarts when that answer is complete.
- Size: a head still incomplete after more than ``max_bytes`` is answered ``431``
  ``header_too_large``. The bytes are counted per read once the head has begun, so a head
  may run past ``max_bytes`` by up to the read in which it began (at most 256 KiB); a head under
  ``max_bytes`` is never refused.
- A request the HTTP parser refuses (malformed, smuggling-shaped, or past the parser's own
  bounds such as a request line over 64 KiB) is answered ``400`` ``bad_http``, where uvicorn
  answers plain text.
- Answers carry the gateway's JSON error body and ``Connection: close``; the connection is then
  closed.

The unread rest of a body, per request (``HeadLimits.body_*``, from ``VRS_BODY_READ_TIMEOUT_S``,
``VRS_BODY_MIN_BYTES_PER_S``, ``VRS_MAX_REQUEST_BYTES``): an answer may be complete while its
request's body is still arriving (a 401, 404, 413, 415 or 429 sent before the body was read, a
multipart 400 part way). uvicorn then drops the rest of the body as it arrives, and each byte
would keep the connection open (a read cancels its keep-alive timer), so a client sending a byte
now and then held it forever. Here:

- The rest must arrive by the body's deadline (``service/body_limits.py``'s rule: headers
  complete + ``body_read_timeout_s`` + bytes received / ``body_min_bytes_per_s``), and the whole
  body may pass ``max_body_bytes`` by at most ``DRAIN_SLACK_BYTES`` or the limit itself, whichever
  is smaller (a body a little over the limit is read and dropped, so its client reads the 413
  rather than a reset); past either, the connection is closed. When the rest is in, a kept-alive
  connection serves its next request, or waits for one under uvicorn's keep-alive timeout as
  after any answer.
- A connection that is to close after the answer (the client sent ``Connection: close``, or the
  answer did) is not closed while the body is still arriving: closing a socket with unread data
  makes the kernel send a reset, and the client, which sends its whole body before it reads,
  would lose the answer. The server ends its side (``write_eof``), reads and drops the rest
  under the same limits, and then closes.

The number of connections is not bounded here: uvicorn's ``limit_concurrency`` does not refuse
connections, it answers 503 to complete requests once that many connections are open, so slow
clients holding connections would turn it against good clients. The deadline bounds how long
each slow connection lives instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger(__name__)


DRAIN_SLACK_BYTES = 64 * 1024**2  # an answered body may pass the request limit by this much (at most
# the limit itself) and still be read and dropped


@dataclass(frozen=True)
class HeadLimits:
    """Per request head: seconds to arrive (``VRS_HEADER_TIMEOUT_S``), bytes (``VRS_MAX_HEADER_BYTES``);
    per body, the limits on an unread rest (``VRS_BODY_READ_TIMEOUT_S``, ``VRS_BODY_MIN_BYTES_PER_S``,
    ``VRS_MAX_REQUEST_BYTES``: the rules ``service/body_limits.py`` applies to bodies that are read)."""

    timeout_s: float = 10.0
    max_bytes: int = 64 * 1024
    body_read_timeout_s: float = 30.0
    body_min_bytes_per_s: float = 32 * 1024
    max_body_bytes: int = 512 * 1024**2


class _ClosesAfterBody:
    """A request's view of the connection (``RequestResponseCycle.transport``): the transport, except
    that ``close`` waits for the rest of a body still arriving (``HeadLimitsProtocol._close_after_body``)."""

    def __init__(self, protocol: HeadLimitsProtocol) -> None:
        self._protocol = protocol

    def close(self) -> None:
        self._protocol._close_after_body()

    def __getattr__(self, name: str):
        return getattr(self._protocol.transport, name)


class HeadLimitsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; :func:`protocol` sets ``limits``."""

    limits = HeadLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_started = False  # part of a head has arrived, not yet all of it
        self._heads_begun = 0
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_open = False  # the latest request's head is complete, not yet all of its body
        self._body_start = 0.0
        self._body_bytes = 0
        self._rest_timer: asyncio.TimerHandle | None = None  # set while an answered body's rest arrives
        self._close_when_body_in = False  # the answer is out, the connection closes once the body is in
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        inside, begun = self._head_started, self._heads_begun
        super().data_received(data)
        if inside and self._head_started and self._heads_begun == begun:  # the whole read is in one head
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_bytes and not self.transport.is_closing():
                log.info(
                    "%s: request head over %d bytes; answering 431 and closing", self.client, self.limits.max_bytes
                )
                self._answer(431, "header_too_large", f"the request head exceeds {self.limits.max_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        """The parser refused the request: uvicorn's 400, in the gateway's error shape."""
        self._answer(400, "bad_http", f"{msg.rstrip('.')}: the request line or headers are malformed or too long")

    def on_message_begin(self) -> None:
        self._unset_keepalive_if_required()  # also when the rest of an answered body came in the same read
        super().on_message_begin()
        self._head_started = True
        self._heads_begun += 1
        self._head_bytes = 0
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_started = False
        if self.transport.is_closing():  # a request behind one whose body ended a closing connection
            return
        self._body_open, self._body_start, self._body_bytes = True, self.loop.time(), 0
        super().on_headers_complete()
        if self.cycle is not None and not isinstance(self.cycle.transport, _ClosesAfterBody):
            self.cycle.transport = _ClosesAfterBody(self)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)  # dropped if the answer is complete
        if self._rest_timer is not None and self._body_bytes > self._drain_limit:
            self._check_rest()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_open = False
        if self._rest_timer is not None:  # the rest of an answered body is in
            self._rest_timer.cancel()
            self._rest_timer = None
            if self._close_when_body_in:
                self.transport.close()
            else:  # idle from now on, as after any answer (uvicorn armed this, but each read cancels it)
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_timer is not None:  # a pipelined head waited on this answer
            self._arm()
        if self._body_open and self.cycle.response_complete and not self.transport.is_closing():
            self._unset_keepalive_if_required()  # answered before its body was in: the body's limits govern
            self._check_rest()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._rest_timer is not None:
            self._rest_timer.cancel()
            self._rest_timer = None
        super().connection_lost(exc)

    @property
    def _drain_limit(self) -> int:
        """Bytes of an answered body read and dropped before the connection is closed instead."""
        return self.limits.max_body_bytes + min(self.limits.max_body_bytes, DRAIN_SLACK_BYTES)

    def _close_after_body(self) -> None:
        """The answer's ``close``: at once, unless the answered request's body is still arriving;
        then end our side now and close once the rest is in (or late, or too large)."""
        if self._body_open and self.cycle.response_complete and not self.transport.is_closing():
            self._close_when_body_in = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
        else:
            self.transport.close()

    def _check_rest(self) -> None:
        """Close the connection if the rest of an answered body is past its deadline or the body past
        its drain limit; else check again at the deadline (later as more bytes arrive)."""
        if self._rest_timer is not None:
            self._rest_timer.cancel()
            self._rest_timer = None
        if self.transport.is_closing():
            return
        limits = self.limits
        deadline = self._body_start + limits.body_read_timeout_s + self._body_bytes / limits.body_min_bytes_per_s
        if self._body_bytes > self._drain_limit or self.loop.time() >= deadline:
            log.info(
                "%s: body still arriving after its answer (%d bytes), too slowly or over %d bytes; closing",
                self.client,
                self._body_bytes,
                self._drain_limit,
            )
            self.transport.close()
        else:
            self._rest_timer = self.loop.call_at(deadline, self._check_rest)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.limits.timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._answering():
            self._arm()  # waiting on the server's answer, not on the client; re-armed when it is complete
        elif self._head_started:
            timeout_s = self.limits.timeout_s
            log.info("%s: request head not complete after %g s; answering 408 and closing", self.client, timeout_s)
            self._answer(408, "header_timeout", f"the request line and headers did not arrive within {timeout_s:g} s")
        else:
            self.transport.close()

    def _answering(self) -> bool:
        """Whether an earlier request on this connection is still being answered (pipelining)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _answer(self, status: int, code: str, message: str) -> None:
        """Answer the incomplete head with an error and close; just close if an earlier answer is
        still being written (ours would land inside it), or one is out and the connection closing."""
        if self._answering() or self._close_when_body_in:
            self.transport.close()
            return
        body = json.dumps({"error": {"code": code, "message": message, "item": None}}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def protocol(limits: HeadLimits) -> type[HeadLimitsProtocol]:
    """The protocol class (uvicorn ``Config(http=...)``) with ``limits``."""
    return type("HeadLimitsProtocol", (HeadLimitsProtocol,), {"limits": limits})


def uvicorn_config(app, host: str, port: int, **options) -> uvicorn.Config:
    """``uvicorn.Config`` for ``app`` with the head limits; ``options`` are other Config arguments.

    The limits are ``app.state.head_limits`` (``service.api.create_app`` sets them from the
    settings), else the defaults (other ASGI apps, such as the tests' origins)."""
    limits = getattr(getattr(app, "state", None), "head_limits", HeadLimits())
    return uvicorn.Config(app, host=host, port=port, http=protocol(limits), **options)
