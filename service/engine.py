"""The scoring engine: ingest -> decode/sample -> micro-batch -> backend. Usable without HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from models.registry import RewardModel
from models.spec import ModelSpec
from service import decode, ingest
from service.backends.base import Backend, FrameBatch
from service.batching import MicroBatcher
from service.config import Settings
from service.errors import BadInput, Overloaded, ServiceError, Timeout, TooLarge, Unprocessable
from service.fetch import UrlFetcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreInput:
    """One video to score, with its prompt (if the models want one)."""

    source: ingest.VideoSource
    prompt: str | None = None


@dataclass(frozen=True)
class _Job:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    prompt: str


class Engine:
    """Scores videos with the configured models on the configured backend."""

    def __init__(self, settings: Settings, models: dict[str, RewardModel], backend: Backend) -> None:
        self.settings = settings
        self.models = models
        self.backend = backend
        self.limits = decode.Limits(settings.max_pixels, settings.max_duration_s, settings.max_total_frames)
        self.batchers: dict[str, MicroBatcher[_Job, np.ndarray]] = {}
        self._decode_pool: ThreadPoolExecutor | None = None
        self._fetcher: UrlFetcher | None = None
        self._pending = 0  # (item, model) pairs admitted and not yet answered

    async def start(self) -> None:
        s = self.settings
        self._fetcher = UrlFetcher(
            max_bytes=s.max_video_bytes,
            timeout_s=s.url_timeout_s,
            connect_timeout_s=s.url_connect_timeout_s,
            max_redirects=s.url_max_redirects,
            allow_networks=s.url_allow_networks,
        )
        self._decode_pool = ThreadPoolExecutor(max_workers=s.decode_workers, thread_name_prefix="decode")
        await self.backend.start()
        for name, model in self.models.items():
            batching = model.spec.batching
            batcher = MicroBatcher(
                partial(self._infer, name),
                max_batch_size=s.max_batch_size or batching.max_batch_size,
                max_wait_s=(s.max_wait_ms if s.max_wait_ms is not None else batching.max_wait_ms) / 1000,
                max_concurrent_batches=self.backend.max_concurrent_batches,
                name=f"batcher-{name}",
            )
            batcher.start()
            self.batchers[name] = batcher

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        await self.backend.close()
        if self._fetcher is not None:
            await self._fetcher.aclose()
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def spec(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise BadInput(f"unknown model {name!r}; loaded: {', '.join(sorted(self.models))}", code="unknown_model")
        return self.models[name].spec

    async def ready(self) -> tuple[bool, str]:
        if not self.batchers:
            return False, "engine not started"
        return await self.backend.ready()

    async def score(self, items: list[ScoreInput], model_names: list[str]) -> list[dict[str, np.ndarray]]:
        """Raw scores per item: ``{model: float32 [K]}``. Any bad item fails the whole call."""
        specs = [self.spec(name) for name in model_names]
        if not items:
            raise BadInput("no items to score", code="no_items")
        if len(items) > self.settings.max_items:
            raise TooLarge(f"{len(items)} items in one request; the limit is {self.settings.max_items}")
        for i, item in enumerate(items):
            for spec in specs:
                if spec.needs_prompt and not (item.prompt and item.prompt.strip()):
                    raise BadInput(f"model {spec.name!r} needs a prompt", item=i, code="missing_prompt")
        work = len(items) * len(specs)
        if work > self.settings.max_pending:
            raise TooLarge(f"{len(items)} items x {len(specs)} models exceed max_pending={self.settings.max_pending}")
        if self._pending + work > self.settings.max_pending:
            raise Overloaded(f"{self._pending} videos are queued; try again shortly", retry_after_s=1.0)
        self._pending += work
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                clips = await self._prepare_all(items, specs)
                jobs = [
                    self.batchers[spec.name].submit(_Job(clips[i][m], items[i].prompt or ""))
                    for i in range(len(items))
                    for m, spec in enumerate(specs)
                ]
                flat = await asyncio.gather(*jobs)
        except TimeoutError as exc:
            raise Timeout(f"scoring took longer than {self.settings.request_timeout_s:g} s") from exc
        finally:
            self._pending -= work
        return [{spec.name: flat[i * len(specs) + m] for m, spec in enumerate(specs)} for i in range(len(items))]

    async def _prepare_all(self, items: list[ScoreInput], specs: list[ModelSpec]) -> list[list[np.ndarray]]:
        """Ingest and decode every item concurrently; report every bad item, not just the first."""
        results = await asyncio.gather(*(self._prepare(i, item, specs) for i, item in enumerate(items)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            bad = [e for e in errors if isinstance(e, ServiceError)]
            if len(bad) < len(errors):
                raise next(e for e in errors if not isinstance(e, ServiceError))
            bad[0].others = bad[1:]
            raise bad[0]
        return results  # type: ignore[return-value]

    async def _prepare(self, index: int, item: ScoreInput, specs: list[ModelSpec]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        try:
            video = await ingest.resolve(item.source, self._fetcher)
            return [
                (await loop.run_in_executor(self._decode_pool, _sample, video, spec, self.limits)).frames
                for spec in specs
            ]
        except ServiceError as exc:
            raise exc.for_item(index)

    async def _infer(self, model: str, jobs: list[_Job]) -> list[np.ndarray]:
        """Batcher handler: one backend call per group of equally sized frames."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.frames.shape[1:3]].append(i)
        out: list[np.ndarray | None] = [None] * len(jobs)
        width = len(self.models[model].spec.dimensions)
        for members in groups.values():
            batch = FrameBatch.pad([jobs[i].frames for i in members], [jobs[i].prompt for i in members])
            scores = await self.backend.infer(model, batch)
            if scores.shape != (len(members), width):
                raise RuntimeError(f"{model}: backend returned shape {scores.shape}, expected {(len(members), width)}")
            for row, i in enumerate(members):
                out[i] = scores[row]
        return out  # type: ignore[return-value]


def _sample(video, spec: ModelSpec, limits: decode.Limits) -> decode.Clip:
    """decode.sample_frames, with unexpected decoder failures reported as bad input, not crashes."""
    try:
        return decode.sample_frames(video, spec, limits)
    except ServiceError:
        raise
    except Exception as exc:  # untrusted bytes can fail in ways FFmpeg/numpy do not classify
        log.warning("decode failed unexpectedly", exc_info=True)
        raise Unprocessable(f"video could not be decoded ({type(exc).__name__}: {exc})", code="corrupt_video") from exc
