"""HTTP clients for the service: ``Client`` (sync) and ``AsyncClient``: score / compare / rank, bounded
retries on 429/503 and refused connections honouring Retry-After, timeouts, and a GRPO group helper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypedDict, TypeVar, Unpack

import httpx
import numpy as np
from pydantic import BaseModel

from vrs_wire.schemas import CompareResponse, RankResponse, ScoreResponse
from vrs_client.retry import Retry
from vrs_client.videos import Video, video_ref

R = TypeVar("R", bound=BaseModel)
Prompt = str | Sequence[str] | None
OnRetry = Callable[[int, float, str], None]
"""Called before each wait with (failed tries so far, seconds it will wait, why: ``HTTP 429`` or the exception)."""


class Options(TypedDict, total=False):
    """Scoring options of every call (the server's defaults apply to those left out)."""

    models: Sequence[str]
    weights: Mapping[str, float]
    preset: str
    normalise: bool
    cache: Literal["use", "refresh", "bypass"]
    fps: float  # frame rate of numpy frames given without Frames(...)


class RankOptions(Options, total=False):
    top_k: int
    advantage_eps: float
    advantage_std: Literal["sample", "population"]


class APIError(Exception):
    """The service answered with an error: HTTP status plus the body's ``{code, message, item}``."""

    def __init__(self, status: int, code: str, message: str, item: int | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}" + (f" (item {item})" if item is not None else ""))
        self.status, self.code, self.message, self.item = status, code, message, item

    @classmethod
    def from_response(cls, response: httpx.Response) -> "APIError":
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"], error.get("item"))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, "http_error", response.text[:500])


@dataclass(frozen=True)
class GroupAdvantages:
    """One GRPO group scored; arrays follow the order the videos were given."""

    advantages: np.ndarray  # float64 [N]: advantage of the weighted overall
    rewards: np.ndarray  # float64 [N]: the weighted overall
    dimensions: dict[str, np.ndarray]  # model.dimension -> float64 [N] advantages
    response: RankResponse

    @classmethod
    def from_rank(cls, response: RankResponse) -> "GroupAdvantages":
        results = response.results
        return cls(
            advantages=np.array([r.advantage for r in results]),
            rewards=np.array([r.overall for r in results]),
            dimensions={k: np.array([r.advantages[k] for r in results]) for k in results[0].advantages},
            response=response,
        )


@dataclass(frozen=True)
class _Call(Generic[R]):
    """One API call: where it goes, how to build its JSON body (may be slow: files, base64), what comes back."""

    path: str
    build: Callable[[], dict[str, Any]]
    kind: type[R]


def _body(videos: Sequence[Video], prompt: Prompt, options: Mapping[str, Any], group: bool) -> dict[str, Any]:
    """JSON body: ``items`` for /v1/score, ``videos`` + ``prompt``/``prompts`` for compare and rank."""
    options = dict(options)
    fps = options.pop("fps", None)
    for key in ("models", "weights"):
        if key in options:
            options[key] = list(options[key]) if key == "models" else dict(options[key])
    refs = [video_ref(v, fps) for v in videos]
    one = prompt is None or isinstance(prompt, str)
    if group:
        return options | {"videos": refs, ("prompt" if one else "prompts"): prompt if one else list(prompt)}
    prompts = [prompt] * len(refs) if one else list(prompt)
    if len(prompts) != len(refs):
        raise ValueError(f"{len(prompts)} prompts for {len(refs)} videos; give one prompt or one per video")
    return options | {"items": [{"video": r, "prompt": p} for r, p in zip(refs, prompts)]}


def _score(videos: Sequence[Video], prompt: Prompt, options: Options) -> _Call[ScoreResponse]:
    return _Call("/v1/score", lambda: _body(videos, prompt, options, group=False), ScoreResponse)


def _compare(a: Video, b: Video, prompt: str | None, options: Options) -> _Call[CompareResponse]:
    return _Call("/v1/compare", lambda: _body([a, b], prompt, options, group=True), CompareResponse)


def _rank(videos: Sequence[Video], prompt: Prompt, options: RankOptions) -> _Call[RankResponse]:
    return _Call("/v1/rank", lambda: _body(videos, prompt, options, group=True), RankResponse)


class _Base:
    """What both clients share: where, how long, and when to retry."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout_s: float = 180.0,
        connect_timeout_s: float = 10.0,
        retry: Retry = Retry(),
        on_retry: OnRetry | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.retry = retry
        self.on_retry = on_retry

    def _wait_or_raise(self, failures: int, response: httpx.Response | None, error: Exception | None) -> float:
        """After a failed try: the seconds to wait before the next, or raise when it is final."""
        if response is not None and not self.retry.should_retry(response):
            raise APIError.from_response(response)
        if failures >= self.retry.attempts:
            raise error or APIError.from_response(response)  # type: ignore[arg-type]
        wait = self.retry.delay(failures, response)
        if self.on_retry is not None:
            self.on_retry(failures, wait, f"HTTP {response.status_code}" if response is not None else repr(error))
        return wait


class Client(_Base):
    """Synchronous client: ``Client("http://host:8000").rank([a, b, c], "a cat surfing")``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def score(self, videos: Sequence[Video], prompt: Prompt = None, **options: Unpack[Options]) -> ScoreResponse:
        """Pointwise scores; ``prompt`` is one prompt for every video or one per video."""
        return self._send(_score(videos, prompt, options))

    def compare(self, a: Video, b: Video, prompt: str | None = None, **options: Unpack[Options]) -> CompareResponse:
        """P(A>B), P(B>A), P(tie) and the winner, per dimension and overall."""
        return self._send(_compare(a, b, prompt, options))

    def rank(self, videos: Sequence[Video], prompt: Prompt = None, **options: Unpack[RankOptions]) -> RankResponse:
        """Ranking (best first), scores and group advantages."""
        return self._send(_rank(videos, prompt, options))

    def grpo_advantages(
        self, videos: Sequence[Video], prompt: str | None = None, **options: Unpack[RankOptions]
    ) -> GroupAdvantages:
        """Score one GRPO group (the rollouts of one prompt): advantages as arrays, in input order."""
        return GroupAdvantages.from_rank(self.rank(videos, prompt, **options))

    def _send(self, call: _Call[R]) -> R:
        body, failures = call.build(), 0
        while True:
            try:
                response = self._http.post(call.path, json=body)
            except httpx.ConnectError as exc:
                failures += 1
                time.sleep(self._wait_or_raise(failures, None, exc))
                continue
            if response.is_success:
                return call.kind.model_validate_json(response.content)
            failures += 1
            time.sleep(self._wait_or_raise(failures, response, None))


class AsyncClient(_Base):
    """Asynchronous client with the same methods as ``Client``; bodies are built off the event loop."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def score(self, videos: Sequence[Video], prompt: Prompt = None, **options: Unpack[Options]) -> ScoreResponse:
        """As ``Client.score``."""
        return await self._send(_score(videos, prompt, options))

    async def compare(
        self, a: Video, b: Video, prompt: str | None = None, **options: Unpack[Options]
    ) -> CompareResponse:
        """As ``Client.compare``."""
        return await self._send(_compare(a, b, prompt, options))

    async def rank(
        self, videos: Sequence[Video], prompt: Prompt = None, **options: Unpack[RankOptions]
    ) -> RankResponse:
        """As ``Client.rank``."""
        return await self._send(_rank(videos, prompt, options))

    async def grpo_advantages(
        self, videos: Sequence[Video], prompt: str | None = None, **options: Unpack[RankOptions]
    ) -> GroupAdvantages:
        """As ``Client.grpo_advantages``."""
        return GroupAdvantages.from_rank(await self.rank(videos, prompt, **options))

    async def _send(self, call: _Call[R]) -> R:
        body, failures = await asyncio.to_thread(call.build), 0
        while True:
            try:
                response = await self._http.post(call.path, json=body)
            except httpx.ConnectError as exc:
                failures += 1
                await asyncio.sleep(self._wait_or_raise(failures, None, exc))
                continue
            if response.is_success:
                return call.kind.model_validate_json(response.content)
            failures += 1
            await asyncio.sleep(self._wait_or_raise(failures, response, None))
