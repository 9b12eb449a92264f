"""HTTP clients for the service: ``Client`` (sync) and ``AsyncClient``: score / compare / rank, bounded
retries on 429/503 and refused connections honouring Retry-After, timeouts, and a GRPO group helper.

Videos go as binary multipart parts by default (numpy frames as ``application/x-npy``, streamed from
the array); ``transport="json"`` sends base64 JSON instead. With ``reuse=True`` a call first sends
only the videos' digests and uploads them only when the server answers ``not_cached`` (a call with
``cache="refresh"`` or ``"bypass"`` uploads at once: the cache cannot answer it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Literal, Optional, TypeVar, Union

import httpx
import numpy as np
from pydantic import BaseModel
from typing_extensions import TypedDict, Unpack

from vrs_client import videos as wire_videos
from vrs_client.retry import Retry
from vrs_client.videos import Frames, Part, Video
from vrs_wire.schemas import CompareResponse, ErrorDetail, RankResponse, ScoreResponse

R = TypeVar("R", bound=BaseModel)
Prompt = Union[str, Sequence[str], None]
Transport = Literal["multipart", "json"]
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
    """The service answered with an error: HTTP status plus the body's ``{code, message, item}``;
    ``other_errors``: the further bad items of the same request, each with its own code, message
    and item; ``others``: their indices."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        item: Optional[int] = None,
        others: Sequence[int] = (),
        other_errors: Sequence[ErrorDetail] = (),
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {message}" + (f" (item {item})" if item is not None else ""))
        self.status, self.code, self.message, self.item = status, code, message, item
        self.others = list(others)
        self.other_errors = list(other_errors)

    @classmethod
    def from_response(cls, response: httpx.Response) -> APIError:
        try:
            error = response.json()["error"]
            details = [ErrorDetail.model_validate(o) for o in error.get("others") or ()]
            others = [d.item for d in details if d.item is not None]
            return cls(response.status_code, error["code"], error["message"], error.get("item"), others, details)
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(response.status_code, "http_error", response.text[:500])


@dataclass(frozen=True)
class GroupAdvantages:
    """One GRPO group scored; arrays follow the order the videos were given."""

    advantages: np.ndarray  # float64 [N]: advantage of the weighted overall
    rewards: np.ndarray  # float64 [N]: the weighted overall
    dimensions: dict[str, np.ndarray]  # model.dimension -> float64 [N] advantages
    response: RankResponse

    @classmethod
    def from_rank(cls, response: RankResponse) -> GroupAdvantages:
        results = response.results
        return cls(
            advantages=np.array([r.advantage for r in results]),
            rewards=np.array([r.overall for r in results]),
            dimensions={k: np.array([r.advantages[k] for r in results]) for k in results[0].advantages},
            response=response,
        )


@dataclass
class _Body:
    """One request body: JSON, or multipart (a ``request`` field holding the JSON, plus file parts).
    The JSON is UTF-8 as it is (no ``\\uXXXX`` escapes: a CJK prompt repeated per item stays 3 bytes
    a character, not 6, within the server's size of a multipart field)."""

    json: dict[str, Any]
    parts: list[tuple[str, Part]] = field(default_factory=list)

    def send_kwargs(self) -> dict[str, Any]:
        text = json.dumps(self.json, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if not self.parts:
            return {"content": text.encode(), "headers": {"content-type": "application/json"}}
        return {"data": {"request": text}, "files": self.parts}

    def close(self) -> None:
        wire_videos.close_parts(self.parts)


Form = Literal["multipart", "json", "digest"]


@dataclass(frozen=True)
class _Call(Generic[R]):
    """One API call: where it goes, its videos and options, what comes back."""

    path: str
    videos: Sequence[Video]
    prompt: Prompt
    options: Mapping[str, Any]
    group: bool  # compare/rank: ``videos`` + ``prompt(s)``; score: ``items``
    kind: type[R]

    def build(self, form: Form) -> _Body:
        """The body in one form (may be slow: hashing, base64; run off the event loop)."""
        options = dict(self.options)
        fps = options.pop("fps", None)
        for key in ("models", "weights"):
            if key in options:
                options[key] = list(options[key]) if key == "models" else dict(options[key])
        parts: list[tuple[str, Part]] = []
        refs = []
        for i, video in enumerate(self.videos):
            if form == "json":
                refs.append(wire_videos.video_ref(video, fps))
            elif form == "digest":
                refs.append(wire_videos.digest_ref(video, fps))
            else:
                ref, part = wire_videos.part(video, f"v{i}", fps)
                refs.append(ref)
                if part is not None:
                    parts.append((f"v{i}", part))
        return _Body(_json(refs, self.prompt, options, self.group), parts)


def _json(refs: list[dict[str, Any]], prompt: Prompt, options: dict[str, Any], group: bool) -> dict[str, Any]:
    """JSON body: ``items`` for /v1/score, ``videos`` + ``prompt``/``prompts`` for compare and rank."""
    one = prompt is None or isinstance(prompt, str)
    if group:
        return {**options, "videos": refs, ("prompt" if one else "prompts"): prompt if one else list(prompt)}  # type: ignore[arg-type]  # a sequence: not `one`
    prompts = [prompt] * len(refs) if one else list(prompt)  # type: ignore[arg-type]
    if len(prompts) != len(refs):
        raise ValueError(f"{len(prompts)} prompts for {len(refs)} videos; give one prompt or one per video")
    return {**options, "items": [{"video": r, "prompt": p} for r, p in zip(refs, prompts)]}


def _many(videos: Sequence[Video]) -> Sequence[Video]:
    """``videos`` when it is a list of videos (a uint8 [N, T, H, W, 3] array counts as N of them);
    TypeError for one video given alone (a path or bytes would be taken apart character by character)."""
    single = (str, bytes, bytearray, memoryview, os.PathLike, Frames)
    if isinstance(videos, single) or (isinstance(videos, np.ndarray) and videos.ndim != 5):
        raise TypeError(f"videos must be a list of videos, not one {type(videos).__name__}; give [video]")
    return videos


def _score(videos: Sequence[Video], prompt: Prompt, options: Options) -> _Call[ScoreResponse]:
    return _Call("/v1/score", _many(videos), prompt, options, False, ScoreResponse)


def _compare(a: Video, b: Video, prompt: Optional[str], options: Options) -> _Call[CompareResponse]:
    return _Call("/v1/compare", [a, b], prompt, options, True, CompareResponse)


def _rank(videos: Sequence[Video], prompt: Prompt, options: RankOptions) -> _Call[RankResponse]:
    return _Call("/v1/rank", _many(videos), prompt, options, True, RankResponse)


class _Base:
    """What both clients share: where, how long, and when to retry."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout_s: float = 180.0,
        connect_timeout_s: float = 10.0,
        retry: Retry = Retry(),
        on_retry: Optional[OnRetry] = None,
        transport: Transport = "multipart",
        reuse: bool = False,
        api_key: Optional[str] = None,
    ) -> None:
        """``transport``: how videos travel (binary ``multipart``, or base64 ``json``). ``reuse``: send
        digests first, uploading only when the server no longer has the scores (``not_cached``);
        calls with ``cache="refresh"`` or ``"bypass"`` upload at once.
        ``api_key``: sent as ``Authorization: Bearer`` (for a gateway with ``VRS_API_KEYS``)."""
        if transport not in ("multipart", "json"):
            raise ValueError(f"transport must be 'multipart' or 'json', not {transport!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.retry = retry
        self.on_retry = on_retry
        self.transport: Transport = transport
        self.reuse = reuse
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _forms(self, call: _Call[Any]) -> list[Form]:
        """The bodies to try in turn: digests first when reusing, then the videos themselves. Not with
        ``cache="refresh"`` or ``"bypass"``: the server scores a digest from the cache only."""
        digest_first = self.reuse and call.options.get("cache", "use") == "use"
        return ["digest", self.transport] if digest_first else [self.transport]

    def _wait_or_raise(self, failures: int, response: Optional[httpx.Response], error: Optional[Exception]) -> float:
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
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def score(self, videos: Sequence[Video], prompt: Prompt = None, **options: Unpack[Options]) -> ScoreResponse:
        """Pointwise scores of a list of videos (one video alone: TypeError); ``prompt`` is one prompt
        for every video or one per video."""
        return self._send(_score(videos, prompt, options))

    def compare(self, a: Video, b: Video, prompt: Optional[str] = None, **options: Unpack[Options]) -> CompareResponse:
        """P(A>B), P(B>A), P(tie) and the winner, per dimension and overall."""
        return self._send(_compare(a, b, prompt, options))

    def rank(self, videos: Sequence[Video], prompt: Prompt = None, **options: Unpack[RankOptions]) -> RankResponse:
        """Ranking (best first), scores and group advantages of a list of videos (as ``score``)."""
        return self._send(_rank(videos, prompt, options))

    def grpo_advantages(
        self, videos: Sequence[Video], prompt: Optional[str] = None, **options: Unpack[RankOptions]
    ) -> GroupAdvantages:
        """Score one GRPO group (the rollouts of one prompt): advantages as arrays, in input order."""
        return GroupAdvantages.from_rank(self.rank(videos, prompt, **options))

    def _send(self, call: _Call[R]) -> R:
        *first, last = self._forms(call)
        for form in first:
            try:
                return self._post(call, form)
            except APIError as exc:
                if exc.code != "not_cached":
                    raise
        return self._post(call, last)

    def _post(self, call: _Call[R], form: Form) -> R:
        body, failures = call.build(form), 0
        try:
            while True:
                try:
                    response = self._http.post(call.path, **body.send_kwargs())
                except httpx.ConnectError as exc:
                    failures += 1
                    time.sleep(self._wait_or_raise(failures, None, exc))
                    continue
                if response.is_success:
                    return call.kind.model_validate_json(response.content)
                failures += 1
                time.sleep(self._wait_or_raise(failures, response, None))
        finally:
            body.close()


class AsyncClient(_Base):
    """Asynchronous client with the same methods as ``Client``; bodies are built off the event loop."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, headers=self.headers)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def score(self, videos: Sequence[Video], prompt: Prompt = None, **options: Unpack[Options]) -> ScoreResponse:
        """As ``Client.score``."""
        return await self._send(_score(videos, prompt, options))

    async def compare(
        self, a: Video, b: Video, prompt: Optional[str] = None, **options: Unpack[Options]
    ) -> CompareResponse:
        """As ``Client.compare``."""
        return await self._send(_compare(a, b, prompt, options))

    async def rank(
        self, videos: Sequence[Video], prompt: Prompt = None, **options: Unpack[RankOptions]
    ) -> RankResponse:
        """As ``Client.rank``."""
        return await self._send(_rank(videos, prompt, options))

    async def grpo_advantages(
        self, videos: Sequence[Video], prompt: Optional[str] = None, **options: Unpack[RankOptions]
    ) -> GroupAdvantages:
        """As ``Client.grpo_advantages``."""
        return GroupAdvantages.from_rank(await self.rank(videos, prompt, **options))

    async def _send(self, call: _Call[R]) -> R:
        *first, last = self._forms(call)
        for form in first:
            try:
                return await self._post(call, form)
            except APIError as exc:
                if exc.code != "not_cached":
                    raise
        return await self._post(call, last)

    async def _post(self, call: _Call[R], form: Form) -> R:
        body, failures = await asyncio.to_thread(call.build, form), 0
        try:
            while True:
                try:
                    response = await self._http.post(call.path, **body.send_kwargs())
                except httpx.ConnectError as exc:
                    failures += 1
                    await asyncio.sleep(self._wait_or_raise(failures, None, exc))
                    continue
                if response.is_success:
                    return call.kind.model_validate_json(response.content)
                failures += 1
                await asyncio.sleep(self._wait_or_raise(failures, response, None))
        finally:
            body.close()
