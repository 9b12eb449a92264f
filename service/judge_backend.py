"""The judges a gateway serves (``VRS_JUDGES``), each with the runner that asks its model: what
the engine calls for a judge instead of the micro-batcher and the tensor backend.

``JudgeBackend.from_config({"videoscore2": JudgeUpstream(url="http://gpu:8001/v1"), ...})`` builds
each judge from the table (``models.judges.JUDGES``) with its upstream model name and generation
overrides, and one runner per upstream: an ``OpenAIChatRunner`` per server (judges whose URLs name
the same base URL, ``/v1`` or not, with the same credentials share its connections and its
concurrency bound, the smallest ``max_concurrency`` among them; each keeps its own
``max_attempts``, ``timeout_s`` and ``max_answer_bytes``) or a ``TransformersRunner`` per
checkpoint directory (loaded on the configured placement).

To the rest of the gateway a judge is a model: ``model_spec(name)`` is its ``ModelSpec`` (its
dimensions with their ranges, the frame policy the decoder applies, and a version that carries
``JudgeSpec.fingerprint()``, so every cache key changes with the prompt template, the generation
parameters or the upstream model name). With ``pairwise`` configured, ``model_spec(name,
pairwise=True)`` is the spec of its pairwise mode, which ``/v1/compare`` uses.

``score`` answers every item, each with a ``JudgeOutput`` or the ``JudgeError`` that item met
(an unreadable answer, an upstream down), so one bad item never fails the others; ``compare``
asks the pairwise mode with both videos. ``JudgeScorer`` puts one judge behind the engine's
scorer interface (``submit(job) -> float32 [K]``), with the failures as the gateway's errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np

from models.judges import JUDGES
from models.judges.runner import Runner, judge, judge_pair
from models.judges.spec import Judge, JudgeError, JudgeOutput, JudgeSpec, PairOutput, UpstreamError
from models.placement import CPU, Placement
from models.spec import Batching, FrameSampling, ModelSpec, Pairwise
from service.config import JudgeUpstream
from service.errors import judge_failure
from service.judge_client import OpenAIChatRunner, split_url

__all__ = ["JudgeBackend", "JudgeItem", "JudgeScorer", "JudgeUpstream", "model_spec"]

# Qwen-VL chat control tokens (<|im_start|>, <|vision_start|>, ...): a prompt holding one would be
# read as chat structure by the model's tokenizer, not as text.
CONTROL_TOKEN = r"<\|[A-Za-z0-9_]+\|>"


@dataclasses.dataclass
class JudgeItem:
    frames: np.ndarray  # uint8 [T, H, W, 3], sampled and resized per the judge's spec
    prompt: str = ""
    fps: float | None = None  # of the sampled frames (a video judge's timing)


def model_spec(spec: JudgeSpec, pairwise: bool = False) -> ModelSpec:
    """The judge as the gateway's model contract. ``pairwise``: its pairwise mode (its own
    dimensions, ``pairwise_frames`` per video, and ``Pairwise(model="judge")``: the model's
    relative scores are the preference)."""
    version = f"{spec.version}+{spec.fingerprint()[:16]}"
    common: dict[str, Any] = dict(
        name=spec.name,
        description=spec.description,
        resolution=spec.resolution,
        needs_prompt=spec.needs_prompt,
        prompt_forbidden=CONTROL_TOKEN if spec.needs_prompt else None,
        batching=Batching(max_batch_size=1, max_wait_ms=0),  # no micro-batching: the upstream batches
    )
    if not pairwise:
        return ModelSpec(**common, version=version, dimensions=spec.dimensions, sampling=spec.sampling)
    if not spec.has_pairwise:
        raise ValueError(f"{spec.name} has no pairwise mode")
    n = spec.pairwise_frames
    assert spec.pairwise_dimensions is not None and n is not None  # JudgeSpec._check: a pairwise mode has both
    return ModelSpec(
        **common,
        version=f"{version}.pairwise",
        dimensions=spec.pairwise_dimensions,
        sampling=FrameSampling(mode="count", count=n, max_frames=n, spacing=spec.sampling.spacing),
        pairwise=Pairwise(model="judge"),
    )


@dataclasses.dataclass(frozen=True)
class _Served:
    judge: Judge
    runner: Runner
    upstream: JudgeUpstream
    placement: Placement

    @property
    def spec(self) -> JudgeSpec:
        return self.judge.spec


class JudgeBackend:
    def __init__(self, judges: dict[str, _Served]) -> None:
        self._judges = judges

    @classmethod
    def from_config(cls, upstreams: dict[str, JudgeUpstream], placement: Placement = CPU) -> JudgeBackend:
        unknown = sorted(set(upstreams) - set(JUDGES))
        if unknown:
            raise ValueError(f"unknown judges {unknown}; known: {sorted(JUDGES)}")
        servers: dict[tuple[str, ...], OpenAIChatRunner] = {}  # one per server: shared connections and bound
        bounds: dict[tuple[str, ...], int] = {}
        for where in upstreams.values():
            if where.url is not None:
                key = _server(where)
                bounds[key] = min(bounds.get(key, where.max_concurrency), where.max_concurrency)
        loaded: dict[Path, Runner] = {}
        judges = {}
        for name, where in upstreams.items():
            j = _configured(JUDGES[name], where)
            runner: Runner
            if where.url is not None:
                key = _server(where)
                if key not in servers:
                    servers[key] = OpenAIChatRunner(
                        where.url,
                        api_key=where.api_key.get_secret_value() if where.api_key else None,
                        max_concurrency=bounds[key],
                    )
                runner = servers[key].sharing(
                    max_attempts=where.max_attempts, timeout_s=where.timeout_s, max_answer_bytes=where.max_answer_bytes
                )
            else:
                assert where.directory is not None  # JudgeUpstream: exactly one of url, directory
                if where.directory not in loaded:
                    from models.judges.transformers_runner import TransformersRunner  # torch + transformers

                    loaded[where.directory] = TransformersRunner.load(
                        where.directory, dtype=placement.dtype, device=str(placement.device)
                    )
                runner = loaded[where.directory]
            judges[name] = _Served(j, runner, where, placement)
        return cls(judges)

    @property
    def names(self) -> list[str]:
        return list(self._judges)

    def spec(self, name: str) -> JudgeSpec:
        return self._judges[name].spec

    def model_spec(self, name: str, pairwise: bool = False) -> ModelSpec:
        return model_spec(self.spec(name), pairwise)

    def pairwise(self, name: str) -> bool:
        """Whether ``/v1/compare`` asks this judge with both videos."""
        return self._judges[name].upstream.pairwise

    def concurrency(self, name: str) -> int:
        """Requests the judge's runner serves at once (the admission estimate divides by it): its
        server's bound (the smallest ``max_concurrency`` of the judges there), 1 in process."""
        runner = self._judges[name].runner
        return runner.max_concurrency if isinstance(runner, OpenAIChatRunner) else 1

    def describe(self, name: str) -> dict[str, str]:
        """Where the judge runs, for ``/v1/models`` and ``/readyz``."""
        served = self._judges[name]
        where = {"backend": "judge", "upstream": served.upstream.where, "model": served.spec.upstream_model}
        if served.upstream.directory is not None:
            where |= served.placement.describe()
        return where | {"pairwise": str(served.upstream.pairwise).lower()}

    async def score(self, name: str, items: Sequence[JudgeItem]) -> list[JudgeOutput | JudgeError]:
        served = self._judges[name]
        results = await asyncio.gather(
            *(judge(served.runner, served.judge, it.frames, it.prompt, it.fps) for it in items),
            return_exceptions=True,
        )
        # Judge failures are per item; anything else is a bug and propagates (a 500 with its traceback):
        # what an upstream says is validated where it arrives (judge_client.parse_completion), so a
        # parser never sees malformed tokens, and an exception here is ours, not the upstream's.
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, JudgeError):
                raise r
        return cast(list[JudgeOutput | JudgeError], results)  # every other exception was raised above

    async def compare(self, name: str, a: JudgeItem, b: JudgeItem) -> PairOutput:
        """The pairwise mode on A and B (A is "Video 1"), against A's prompt."""
        served = self._judges[name]
        return await judge_pair(served.runner, served.judge, a.frames, b.frames, a.prompt)

    async def aclose(self) -> None:
        for served in self._judges.values():
            if isinstance(served.runner, OpenAIChatRunner):
                await served.runner.aclose()  # idempotent: runners sharing a server close it once


def _server(where: JudgeUpstream) -> tuple[str, ...]:
    """Which judges share a runner: those with the same base URL (written with or without ``/v1``
    or a trailing ``/``) and the same credentials."""
    assert where.url is not None
    base, _ = split_url(where.url)
    userinfo = urlsplit(where.url).netloc.rpartition("@")[0]
    return base, userinfo, where.api_key.get_secret_value() if where.api_key else ""


def _configured(j: Judge, where: JudgeUpstream) -> Judge:
    """The table's judge with the upstream's model name and generation overrides."""
    if where.pairwise and not j.spec.has_pairwise:
        raise ValueError(f"{j.spec.name}: pairwise is configured but the judge has no pairwise mode")
    update: dict = {}
    if where.model is not None:
        update["upstream_model"] = where.model
    overrides = {"max_tokens": where.max_tokens, "top_logprobs": where.top_logprobs}
    generation = {k: v for k, v in overrides.items() if v is not None}
    if generation:
        update["generation"] = j.spec.generation.model_copy(update=generation)
    return dataclasses.replace(j, spec=j.spec.model_copy(update=update)) if update else j


class JudgeScorer:
    """One judge as the engine's scorer: ``submit(job) -> float32 [K]`` (its dimensions in spec
    order) and, for the pairwise mode, ``compare(a, b) -> (A's, B's)``. A job is anything with
    ``frames`` (uint8 [T, H, W, 3] tensor, sampled per the judge's spec), ``prompt`` and ``fps``.
    No micro-batching: each video is one request to the runner; at most ``concurrency(name)``
    are in flight, so the time a request takes inside its slot is the model's, and answered
    requests report it to ``observe(seconds, videos)`` (admission's cost estimate; a request the
    upstream never answered measures nothing). A judge's failure is raised as the gateway's
    error (``errors.judge_failure``)."""

    def __init__(self, name: str, backend: JudgeBackend, observe: Callable[[float, int], None]) -> None:
        self.name = name
        self.backend = backend
        self.observe = observe
        self.dimensions = backend.spec(name).dimension_names
        pair = backend.spec(name).pairwise_dimensions
        self.pair_dimensions = [d.name for d in pair] if pair else []
        self._slots = asyncio.Semaphore(backend.concurrency(name))

    async def submit(self, job) -> np.ndarray:
        item = _item(job)
        async with self._slots:
            started = time.perf_counter()
            (result,) = await self.backend.score(self.name, [item])
            self._observe(result, time.perf_counter() - started, 1)
        if isinstance(result, JudgeError):
            raise judge_failure(self.name, result)
        return np.array([result.scores[d] for d in self.dimensions], dtype=np.float32)

    async def compare(self, a, b) -> tuple[np.ndarray, np.ndarray]:
        first, second = _item(a), _item(b)
        async with self._slots:
            started = time.perf_counter()
            try:
                out = await self.backend.compare(self.name, first, second)
            except JudgeError as exc:
                self._observe(exc, time.perf_counter() - started, 2)
                raise judge_failure(self.name, exc) from exc
            self._observe(out, time.perf_counter() - started, 2)
        shares = [out.scores[d] for d in self.pair_dimensions]
        return np.array([a for a, _ in shares], dtype=np.float32), np.array([b for _, b in shares], dtype=np.float32)

    def _observe(self, outcome: object, seconds: float, videos: int) -> None:
        if not isinstance(outcome, UpstreamError):  # answered (readable or not): the model worked
            self.observe(seconds, videos)


def _item(job) -> JudgeItem:
    return JudgeItem(frames=job.frames.cpu().numpy(), prompt=job.prompt, fps=job.fps)
