"""The scoring engine: ingest -> cache -> decode/sample -> micro-batch -> backend. Usable without HTTP."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np

from models.registry import RewardModel
from models.spec import ModelSpec
from service import cache, decode, ingest
from service.admission import Admission
from service.backends.base import Backend, FrameBatch
from service.batching import MicroBatcher
from service.config import Settings
from service.errors import BadInput, ServiceError, Timeout, TooLarge, Unprocessable
from service.fetch import UrlFetcher
from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreInput:
    """One video to score, with its prompt (if the models want one)."""

    source: ingest.VideoSource
    prompt: str | None = None


CacheMode = Literal["use", "refresh", "bypass"]
"""``use``: serve hits, store misses; ``refresh``: recompute and store; ``bypass``: neither read nor write."""


@dataclass(frozen=True)
class ItemResult:
    """Raw scores of one item: ``scores[model]`` is float32 [K]; ``cached[model]`` says it came from the cache."""

    scores: dict[str, np.ndarray]
    cached: dict[str, bool]


Pair = tuple[int, int]  # (item index, model index) within one call


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
        self.cache = cache.ScoreCache(settings)
        self.inflight = cache.InFlight()
        self.limits = decode.Limits(settings.max_pixels, settings.max_duration_s, settings.max_total_frames)
        self.batchers: dict[str, MicroBatcher[_Job, np.ndarray]] = {}
        self.stats: Counter[str] = Counter()  # videos_decoded, frames_decoded, inferences
        self.metrics = Metrics()
        self.metrics.watch_stats(self.stats, self.cache.stats)
        self._decode_pool: ThreadPoolExecutor | None = None
        self._fetcher: UrlFetcher | None = None
        self.admission = Admission(
            queue_budget_s=settings.queue_budget_s,
            max_pending=settings.max_pending,
            concurrency=backend.max_concurrent_batches,
            decode_workers=settings.decode_workers,
        )
        self.metrics.watch_admission(
            self.admission.estimated_wait_s,
            shed=lambda: self.admission.shed,
            calibration=lambda: self.admission.calibration.value or 1.0,
        )

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
                observe=partial(self._observe_batch, name),
            )
            self.metrics.watch_queue(name, lambda b=batcher: b.queue_depth)
            batcher.start()
            self.batchers[name] = batcher

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        await self.backend.close()
        await self.cache.close()
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

    async def score(
        self, items: list[ScoreInput], model_names: list[str], cache: CacheMode = "use"
    ) -> list[ItemResult]:
        """Raw scores per item and model. Any bad item fails the whole call."""
        specs = [self.spec(name) for name in model_names]
        if not items:
            raise BadInput("no items to score", code="no_items")
        if len(items) > self.settings.max_items:
            raise TooLarge(f"{len(items)} items in one request; the limit is {self.settings.max_items}")
        for i, item in enumerate(items):
            if item.prompt is not None and len(item.prompt) > self.settings.max_prompt_chars:
                raise Unprocessable(
                    f"prompt has {len(item.prompt)} characters; the limit is {self.settings.max_prompt_chars}",
                    item=i,
                    code="prompt_too_long",
                )
            for spec in specs:
                if spec.needs_prompt and not (item.prompt and item.prompt.strip()):
                    raise BadInput(f"model {spec.name!r} needs a prompt", item=i, code="missing_prompt")
        with self.admission.admit([spec.name for spec in specs], len(items)):
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    return await self._score(items, specs, cache)
            except TimeoutError as exc:
                raise Timeout(f"scoring took longer than {self.settings.request_timeout_s:g} s") from exc

    async def _score(self, items: list[ScoreInput], specs: list[ModelSpec], mode: CacheMode) -> list[ItemResult]:
        """Cache lookup before any decoding; identical work already in flight is joined; the rest is computed."""
        with self.metrics.stage("ingest"):
            videos = await _all_or_nothing(self._ingest(i, item) for i, item in enumerate(items))
        pairs = [(i, m) for i in range(len(items)) for m in range(len(specs))]
        if mode == "bypass":
            return _results(len(items), specs, await self._compute(videos, items, specs, pairs), cached=set())

        with self.metrics.stage("cache"):
            keys = await self._keys(videos, items, specs)
            known: dict[Pair, np.ndarray] = {}
            if mode == "use":
                known = _decode_found(await self.cache.get_many([keys[p] for p in pairs]), pairs, keys, specs)
        cached = set(known)
        led: list[Pair] = []
        followed: list[tuple[Pair, asyncio.Future[bytes | None]]] = []
        for p in pairs:
            if p in known:
                continue
            leader = self.inflight.lead_or_follow(keys[p]) if mode == "use" else None
            if leader is None:
                led.append(p)
            else:
                followed.append((p, leader))

        computed, from_peers = await self._lead(videos, items, specs, keys, led, mode)
        known |= computed | from_peers
        cached |= set(from_peers)

        shared = {p: await asyncio.shield(leader) for p, leader in followed}
        joined = _decode_found({keys[p]: v for p, v in shared.items() if v is not None}, list(shared), keys, specs)
        known |= joined
        if leftover := [p for p in shared if p not in joined]:  # their leader failed for reasons of its own
            extra = await self._compute(videos, items, specs, leftover)
            await self.cache.put_many({keys[p]: cache.encode_scores(v) for p, v in extra.items()})
            known |= extra
        return _results(len(items), specs, known, cached)

    async def _lead(
        self, videos, items, specs, keys: dict[Pair, str], led: list[Pair], mode: CacheMode
    ) -> tuple[dict[Pair, np.ndarray], dict[Pair, np.ndarray]]:
        """Compute the pairs this call leads, store them, and hand them to in-process followers.

        With Redis, a short lock per key (SET NX PX) first: keys another replica holds are
        awaited from Redis instead of computed twice. Returns (computed here, from other replicas).
        """
        l2 = self.cache.l2 if mode == "use" and self.settings.cache_lock_s > 0 and led else None
        mine, theirs = led, []
        waited: dict[str, bytes] = {}
        published: dict[str, bytes] = {}
        try:
            if l2 is not None:
                held = await l2.lock_many([keys[p] for p in led], self.settings.cache_lock_s)
                mine = [p for p, h in zip(led, held) if h]
                theirs = [p for p, h in zip(led, held) if not h]
            wait = l2.wait_for([keys[p] for p in theirs], self.settings.cache_lock_s) if theirs else _nothing()
            computed, waited = await asyncio.gather(self._compute(videos, items, specs, mine), wait)
            from_peers = _decode_found(waited, theirs, keys, specs)
            if missing := [p for p in theirs if p not in from_peers]:  # that replica failed or was slow
                computed |= await self._compute(videos, items, specs, missing)
            published = {keys[p]: cache.encode_scores(v) for p, v in computed.items()}
            await self.cache.put_many(published)
        finally:
            for p in led if mode == "use" else ():  # only "use" calls registered as leaders
                self.inflight.finish(keys[p], published.get(keys[p]) or waited.get(keys[p]))
            if l2 is not None and mine:
                await l2.unlock_many([keys[p] for p in mine])
        return computed, from_peers

    async def _compute(self, videos, items, specs, pairs: list[Pair]) -> dict[Pair, np.ndarray]:
        """Decode each item once for all the models it still needs, then run those models."""
        needs: dict[int, list[int]] = defaultdict(list)
        for i, m in pairs:
            needs[i].append(m)
        if not needs:
            return {}

        async def prepare(i: int) -> list[decode.Clip]:
            try:
                with self.metrics.stage("decode"):
                    wanted = [specs[m] for m in needs[i]]
                    clips, seconds = await _in_pool(self._decode_pool, _timed_sample, videos[i], wanted, self.limits)
                    self.admission.observe_decode(seconds)  # time in the worker, not waiting for one
                    return clips
            except ServiceError as exc:
                raise exc.for_item(i)

        clips = await _all_or_nothing(prepare(i) for i in needs)
        self.stats["videos_decoded"] += len(clips)
        self.stats["frames_decoded"] += sum(len(clip.indices) for item_clips in clips for clip in item_clips)
        jobs = [(i, m, clip) for i, item_clips in zip(needs, clips) for m, clip in zip(needs[i], item_clips)]
        self.stats["inferences"] += len(jobs)
        values = await asyncio.gather(
            *(self.batchers[specs[m].name].submit(_Job(clip.frames, items[i].prompt or "")) for i, m, clip in jobs)
        )
        return {(i, m): value for (i, m, _), value in zip(jobs, values)}

    def _observe_batch(self, model: str, waits: list[float]) -> None:
        self.metrics.batch_size.labels(model).observe(len(waits))
        queue = self.metrics.stage_seconds.labels("queue", model)
        for wait in waits:
            queue.observe(wait)

    async def _ingest(self, index: int, item: ScoreInput) -> ingest.EncodedVideo | ingest.RawFrames:
        try:
            return await ingest.resolve(item.source, self._fetcher)
        except ServiceError as exc:
            raise exc.for_item(index)

    async def _keys(self, videos, items: list[ScoreInput], specs: list[ModelSpec]) -> dict[Pair, str]:
        """Cache keys; content digests (sha256 of up to hundreds of MB) are computed off the event loop."""
        digests = await asyncio.gather(*(_in_pool(self._decode_pool, cache.content_digest, v) for v in videos))
        return {(i, m): cache.cache_key(digests[i], spec, items[i].prompt) for i in range(len(items)) for m, spec in enumerate(specs)}

    async def _infer(self, model: str, jobs: list[_Job]) -> list[np.ndarray]:
        """Batcher handler: one backend call per group of equally sized frames."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.frames.shape[1:3]].append(i)
        out: list[np.ndarray | None] = [None] * len(jobs)
        width = len(self.models[model].spec.dimensions)
        for members in groups.values():
            batch = FrameBatch.pad([jobs[i].frames for i in members], [jobs[i].prompt for i in members])
            with self.metrics.stage("inference", model):
                started = time.perf_counter()
                scores = await self.backend.infer(model, batch)
                self.admission.observe_batch(model, time.perf_counter() - started, len(members))
            if scores.shape != (len(members), width):
                raise RuntimeError(f"{model}: backend returned shape {scores.shape}, expected {(len(members), width)}")
            for row, i in enumerate(members):
                out[i] = scores[row]
        return out  # type: ignore[return-value]


def _decode_found(found: dict[str, bytes], pairs: list[Pair], keys: dict[Pair, str], specs: list[ModelSpec]) -> dict[Pair, np.ndarray]:
    """Scores of the pairs whose key is in ``found`` with a value of the right width."""
    out = {}
    for p in pairs:
        raw = found.get(keys[p])
        scores = cache.decode_scores(raw, len(specs[p[1]].dimensions)) if raw is not None else None
        if scores is not None:
            out[p] = scores
    return out


def _results(n_items: int, specs: list[ModelSpec], scores: dict[Pair, np.ndarray], cached: set[Pair]) -> list[ItemResult]:
    results = [ItemResult(scores={}, cached={}) for _ in range(n_items)]
    for (i, m), value in sorted(scores.items()):
        results[i].scores[specs[m].name] = value
        results[i].cached[specs[m].name] = (i, m) in cached
    return results


async def _all_or_nothing(awaitables) -> list:
    """Await all; if any failed, raise the first bad-input error with the other bad items attached."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        bad = [e for e in errors if isinstance(e, ServiceError)]
        if len(bad) < len(errors):
            raise next(e for e in errors if not isinstance(e, ServiceError))
        bad[0].others = bad[1:]
        raise bad[0]
    return results


def _in_pool(pool: ThreadPoolExecutor, fn, *args):
    """Run ``fn`` in ``pool`` with this task's context variables (the request id reaches its log lines)."""
    return asyncio.get_running_loop().run_in_executor(pool, partial(contextvars.copy_context().run, fn, *args))


async def _nothing() -> dict:
    return {}


def _timed_sample(video, specs: list[ModelSpec], limits: decode.Limits) -> tuple[list[decode.Clip], float]:
    started = time.perf_counter()
    return _sample(video, specs, limits), time.perf_counter() - started


def _sample(video, specs: list[ModelSpec], limits: decode.Limits) -> list[decode.Clip]:
    """decode.sample_clips, with unexpected decoder failures reported as bad input, not crashes."""
    try:
        return decode.sample_clips(video, specs, limits)
    except ServiceError:
        raise
    except Exception as exc:  # untrusted bytes can fail in ways FFmpeg/numpy do not classify
        log.warning("decode failed unexpectedly", exc_info=True)
        raise Unprocessable(f"video could not be decoded ({type(exc).__name__}: {exc})", code="corrupt_video") from exc
