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

Failures are typed (``models.judges.spec``): connection errors, timeouts, 429 and 5xx are retried
with exponential backoff and jitter, honouring ``Retry-After`` (seconds or an HTTP date, capped
at ``max_backoff_s``), and end as ``UpstreamUnavailable`` after ``max_attempts`` (carrying the
last ``Retry-After``, if any); other 4xx and answers that are not chat completions end at once as
``UpstreamRejected``. At most
``max_concurrency`` requests are in flight to the upstream at a time (the upstream batches
continuously, so there is no micro-batching here); a request waiting out a backoff holds no slot.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import random
import time
from typing import Any, Self

import httpx
import numpy as np
from PIL import Image

from models.judges.runner import ChatRequest
from models.judges.spec import Generation, TokenLogprob, UpstreamRejected, UpstreamUnavailable

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
PATH = "/v1/chat/completions"


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
    """A chat-completion JSON body -> ``Generation``; ``UpstreamRejected`` if it is not one."""
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
        tokens = []
        for e in entries:
            top: dict[str, float] = {}
            for alt in e.get("top_logprobs") or []:
                top.setdefault(alt["token"], float(alt["logprob"]))
            top.setdefault(e["token"], float(e["logprob"]))
            tokens.append(TokenLogprob(token=e["token"], logprob=float(e["logprob"]), top=top))
        return Generation(text=text, tokens=tuple(tokens))
    except UpstreamRejected:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamRejected(f"not a chat completion ({type(exc).__name__}: {exc}): {str(data)[:300]}") from exc


def retry_after_s(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


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
        jpeg_quality: int = 95,
    ) -> None:
        if max_concurrency < 1 or max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be >= 1")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")  # the OpenAI SDK's base URL ends in /v1
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.jpeg_quality = jpeg_quality
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._slots = asyncio.Semaphore(max_concurrency)

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
            try:
                async with self._slots:
                    response = await self._client.post(PATH, json=body)
            except httpx.TransportError as exc:  # connect/read errors and timeouts
                failure = UpstreamUnavailable(f"{where}: {type(exc).__name__}: {exc}", attempts=attempt)
                delay = self._backoff(attempt)
            else:
                status = response.status_code
                if status == 200:
                    try:
                        data = response.json()
                    except ValueError as exc:
                        raise UpstreamRejected(
                            f"{where}: answer is not JSON: {response.text[:300]!r}", status=status
                        ) from exc
                    return parse_completion(data, request.params.wants_logprobs)
                if status not in RETRYABLE:
                    raise UpstreamRejected(
                        f"{where}: HTTP {status}: {response.text[:500]}", status=status, attempts=attempt
                    )
                hinted = retry_after_s(response)
                failure = UpstreamUnavailable(
                    f"{where}: HTTP {status}: {response.text[:200]}",
                    status=status,
                    attempts=attempt,
                    retry_after_s=hinted,
                )
                delay = min(hinted, self.max_backoff_s) if hinted is not None else self._backoff(attempt)
            if attempt < self.max_attempts:
                await asyncio.sleep(delay)
        assert failure is not None
        raise UpstreamUnavailable(
            f"{failure} (gave up after {self.max_attempts} attempts)",
            status=failure.status,
            attempts=self.max_attempts,
            retry_after_s=failure.retry_after_s,
        )
