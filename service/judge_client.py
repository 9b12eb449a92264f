"""A judge runner over an OpenAI-compatible chat-completions server (vLLM, SGLang, ...).

``OpenAIChatRunner(base_url).generate(ChatRequest)`` posts ``/v1/chat/completions`` (``base_url``
with or without the ``/v1`` the OpenAI SDK puts there) with

- the system text (if any) and one user message: the frames, then the text. Images go as
  ``image_url`` parts with ``data:image/jpeg;base64,...`` URLs; a video goes as one
  ``video_url`` part ``data:video/jpeg;base64,<frame>,<frame>,...`` (vLLM's form for a video
  as JPEG frames; vLLM keeps at most ``--media-io-kwargs '{"video": {"num_frames": N}}'``
  frames, 32 by default);
- ``temperature``, ``max_tokens``, and ``logprobs`` + ``top_logprobs`` when the judge wants soft
  scores (vLLM answers at most ``--max-logprobs`` alternatives, 20 by default).

Credentials in the URL (``http://user:password@host:8001/v1``) are taken out of it and sent as
HTTP basic auth; the base URL the runner keeps, and every message it writes, hold none.

Failures are typed (``models.judges.spec``): connection errors, timeouts, 429 and 5xx are retried
with exponential backoff and jitter, honouring ``Retry-After`` (seconds or an HTTP date, capped
at ``max_backoff_s``), and end as ``UpstreamUnavailable`` after ``max_attempts`` (carrying the
last ``Retry-After``, if any), or at once when the wait before the next try would end past the
caller's deadline (``answer_by``); other 4xx and answers that are not chat completions end at
once as ``UpstreamRejected``. A try is bounded as a whole by ``timeout_s`` (sending, waiting and
reading, however slowly the bytes trickle in); an answer is read up to ``max_answer_bytes``
(past it: ``UpstreamRejected``), an error answer up to ``ERROR_BODY_BYTES``. At most
``max_concurrency`` requests are in flight to the upstream at a time (the upstream batches
continuously, so there is no micro-batching here); a request waiting out a backoff holds no slot.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import email.utils
import io
import json
import math
import random
import time
from contextvars import ContextVar
from typing import Any, Self
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import numpy as np
from PIL import Image

from models.judges.runner import ChatRequest
from models.judges.spec import Generation, TokenLogprob, UpstreamRejected, UpstreamUnavailable

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
PATH = "/v1/chat/completions"
MAX_ANSWER_BYTES = 16 * 1024**2  # default cap on an answer's (decoded) body
ERROR_BODY_BYTES = 1024  # what is read of an error answer, for its message
MAX_RETRY_AFTER_S = 3600.0  # a longer Retry-After is read as this
LOGPROB_SLACK = 1e-6  # a logprob up to this above 0 is rounding, read as 0

answer_by: ContextVar[float | None] = ContextVar("judge_answer_by", default=None)
"""``time.monotonic()`` by which the caller needs its answer (the gateway sets its request's
deadline; tasks started under it inherit it). A retry whose wait (the upstream's ``Retry-After``,
else the backoff) ends past it is not waited for: the runner gives up at once."""


def split_url(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """``url`` -> (the base URL without credentials, trailing ``/`` or the ``/v1`` the OpenAI SDK
    puts there; the credentials it held as HTTP basic auth, or None). Two URLs of one server
    written differently (``/v1`` or not, a trailing ``/``) give the same base URL."""
    parts = urlsplit(url)
    base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    base = base.rstrip("/").removesuffix("/v1").rstrip("/")
    if parts.username is None and parts.password is None:
        return base, None
    return base, httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))


def jpeg_base64(frame: np.ndarray, quality: int = 95) -> str:
    """uint8 [H, W, 3] -> base64 JPEG (PIL, 4:2:0 chroma as PIL's default)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="JPEG", quality=quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_payload(request: ChatRequest, jpeg_quality: int = 95) -> dict:
    """The JSON body for ``request`` (CPU work: JPEG-encodes every frame)."""
    content: list[dict] = [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + jpeg_base64(image, jpeg_quality)}}
        for image in request.images
    ]
    if request.video is not None:
        frames = ",".join(jpeg_base64(frame, jpeg_quality) for frame in request.video)
        content.append({"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + frames}})
    content.append({"type": "text", "text": request.text})
    messages: list[dict] = [{"role": "system", "content": request.system}] if request.system is not None else []
    messages.append({"role": "user", "content": content})
    body = {
        "model": request.model,
        "messages": messages,
        "temperature": request.params.temperature,
        "max_tokens": request.params.max_tokens,
    }
    if request.params.wants_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = request.params.top_logprobs
    return body


def parse_completion(data: Any, wants_logprobs: bool) -> Generation:
    """A chat-completion JSON body -> ``Generation``; ``UpstreamRejected`` if it is not one.

    With ``wants_logprobs`` the answer must carry them: a list with an entry per generated token
    (none only for an empty answer), each token and alternative a string with a logprob that is a
    finite number <= 0 (up to ``LOGPROB_SLACK`` above 0 is rounding, read as 0), so the parsers
    get only probabilities in [0, 1]."""
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
        if not isinstance(text, str):
            raise TypeError("message.content is not a string")
        if not wants_logprobs:
            return Generation(text=text)
        entries = (choice.get("logprobs") or {}).get("content")
        if entries is None:
            raise UpstreamRejected("asked for logprobs and got none (does the upstream support logprobs?)")
        if not isinstance(entries, list):
            raise TypeError("logprobs.content is not a list")
        if not entries and text:
            raise UpstreamRejected("asked for logprobs and got none for a non-empty answer")
        tokens = []
        for e in entries:
            token, logprob = _token(e)
            top: dict[str, float] = {}
            alternatives = e.get("top_logprobs") or []
            if not isinstance(alternatives, list):
                raise TypeError("top_logprobs is not a list")
            for alt in alternatives:
                top.setdefault(*_token(alt))
            top.setdefault(token, logprob)
            tokens.append(TokenLogprob(token=token, logprob=logprob, top=top))
        return Generation(text=text, tokens=tuple(tokens))
    except UpstreamRejected:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamRejected(f"not a chat completion ({type(exc).__name__}: {exc}): {str(data)[:300]}") from exc


def _token(entry: Any) -> tuple[str, float]:
    """One logprobs entry (a token or an alternative) -> (token, logprob); ``UpstreamRejected``
    unless the token is a string and the logprob a finite number <= ``LOGPROB_SLACK``."""
    token, logprob = entry["token"], entry["logprob"]
    if not isinstance(token, str):
        raise UpstreamRejected(f"a logprobs token is not a string: {shown(token)}")
    if isinstance(logprob, bool) or not isinstance(logprob, int | float):
        raise UpstreamRejected(f"the logprob of token {shown(token)} is not a number: {shown(logprob)}")
    try:
        value = float(logprob)
    except OverflowError:  # an integer past float's range
        value = math.inf
    if not (math.isfinite(value) and value <= LOGPROB_SLACK):
        raise UpstreamRejected(f"the logprob of token {shown(token)} is {shown(logprob)}, not a finite number <= 0")
    return token, min(value, 0.0)


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def retry_after_s(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), if any: at least 0, at
    most ``MAX_RETRY_AFTER_S``; None when absent, unreadable, negative or not finite."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, OverflowError):
            return None
    if not (math.isfinite(seconds) and seconds >= 0.0):
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


class OpenAIChatRunner:
    """One upstream (one base URL). Reuse it: it holds the connection pool and the concurrency bound."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 300.0,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        jpeg_quality: int = 95,
    ) -> None:
        if max_concurrency < 1 or max_attempts < 1 or max_answer_bytes < 1:
            raise ValueError("max_concurrency, max_attempts and max_answer_bytes must be >= 1")
        self.base_url, credentials = split_url(base_url)
        if credentials is not None and api_key:
            raise ValueError("credentials in the URL and an api_key: give one of them")
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.max_answer_bytes = max_answer_bytes
        self.jpeg_quality = jpeg_quality
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            auth=credentials,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._slots = asyncio.Semaphore(max_concurrency)

    def sharing(self, *, max_attempts: int, timeout_s: float, max_answer_bytes: int) -> OpenAIChatRunner:
        """A runner with these per-request settings that shares this one's connections and
        concurrency bound (judges on one server). Closing either closes both."""
        if max_attempts < 1 or max_answer_bytes < 1:
            raise ValueError("max_attempts and max_answer_bytes must be >= 1")
        other = copy.copy(self)
        other.max_attempts, other.timeout_s, other.max_answer_bytes = max_attempts, timeout_s, max_answer_bytes
        return other

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    async def generate(self, request: ChatRequest) -> Generation:
        body = await asyncio.to_thread(chat_payload, request, self.jpeg_quality)
        where = f"{self.base_url}{PATH} (model {request.model!r})"
        failure: UpstreamUnavailable | None = None
        for attempt in range(1, self.max_attempts + 1):
            hinted: float | None = None
            try:
                async with self._slots, asyncio.timeout(self.timeout_s):  # the slot's wait is not the try's
                    status, content, hinted = await self._post(body, where)
            except TimeoutError:  # ours; the caller's own timeout cancels instead
                failure = UpstreamUnavailable(f"{where}: no answer within {self.timeout_s:g} s", attempts=attempt)
                delay = self._backoff(attempt)
            except httpx.TransportError as exc:  # connect/read errors and httpx's own timeouts
                failure = UpstreamUnavailable(f"{where}: {type(exc).__name__}: {exc}", attempts=attempt)
                delay = self._backoff(attempt)
            else:
                text = content.decode("utf-8", "replace")
                if status == 200:
                    try:
                        data = json.loads(content)
                    except ValueError as exc:
                        raise UpstreamRejected(f"{where}: answer is not JSON: {text[:300]!r}", status=status) from exc
                    return parse_completion(data, request.params.wants_logprobs)
                if status not in RETRYABLE:
                    raise UpstreamRejected(f"{where}: HTTP {status}: {text[:500]}", status=status, attempts=attempt)
                failure = UpstreamUnavailable(
                    f"{where}: HTTP {status}: {text[:200]}", status=status, attempts=attempt, retry_after_s=hinted
                )
                delay = min(hinted, self.max_backoff_s) if hinted is not None else self._backoff(attempt)
            if attempt == self.max_attempts:
                break
            deadline = answer_by.get()
            wait = hinted if hinted is not None else delay
            if deadline is not None and time.monotonic() + wait > deadline:
                raise UpstreamUnavailable(
                    f"{failure} (gave up after {attempt} of {self.max_attempts} attempts: "
                    f"the next would start after the request's deadline)",
                    status=failure.status,
                    attempts=attempt,
                    retry_after_s=failure.retry_after_s,
                )
            await asyncio.sleep(delay)
        assert failure is not None
        raise UpstreamUnavailable(
            f"{failure} (gave up after {self.max_attempts} attempts)",
            status=failure.status,
            attempts=self.max_attempts,
            retry_after_s=failure.retry_after_s,
        )

    async def _post(self, body: dict, where: str) -> tuple[int, bytes, float | None]:
        """One try: (status, body, Retry-After). A 200's body is read whole up to ``max_answer_bytes``
        (past it: ``UpstreamRejected``); another status's only up to ``ERROR_BODY_BYTES``."""
        async with self._client.stream("POST", PATH, json=body) as response:
            status = response.status_code
            limit = self.max_answer_bytes if status == 200 else ERROR_BODY_BYTES
            content, more = await _read_at_most(response, limit)
            if more and status == 200:
                raise UpstreamRejected(
                    f"{where}: the answer is longer than max_answer_bytes ({self.max_answer_bytes} bytes)",
                    status=status,
                )
            return status, content, retry_after_s(response)


async def _read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the (decoded) body, and whether it has more; stops reading there."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False
