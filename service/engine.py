"""The scoring engine: ingest -> cache -> decode/sample -> micro-batch -> backend. Usable without HTTP."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import torch

from models.registry import RewardModel
from models.spec import ModelSpec
from service import cache, decode, ingest, nvdec
from service.admission import Admission, Ticket
from service.backends.base import Backend, FrameBatch
from service.batching import MicroBatcher
from service.config import Settings
from service.errors import BadInput, NotCached, ServiceError, Timeout, TooLarge, Unprocessable, shown
from service.fetch import UrlFetcher
from service.ingest import ScoreInput
from service.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["CacheMode", "Engine", "ItemResult", "ScoreInput"]

CacheMode = Literal["use", "refresh", "bypass"]
"""``use``: serve hits, store misses; ``refresh``: recompute and store; ``bypass``: neither read nor write."""


@dataclass(frozen=True)
class ItemResult:
    """Raw scores of one item: ``scores[model]`` is float32 [K]; ``cached[model]`` says it came from the cache."""

    scores: dict[str, np.ndarray]
    cached: dict[str, bool]


Pair = tuple[int, int]  # (item index, model index) within one call
Video = ingest.EncodedVideo | ingest.RawFrames | ingest.Digest


@dataclass(frozen=True)
class _Call:
    """One ``Engine.score`` call as it goes: its items and models, their videos after ingest, and the
    cache key of every (item, model) pair, and its admission ticket."""

    items: list[ScoreInput]
    specs: list[ModelSpec]
    videos: list[Video]
    keys: dict[Pair, str]
    ticket: Ticket

    @property
    def pairs(self) -> list[Pair]:
        return [(i, m) for i in range(len(self.items)) for m in range(len(self.specs))]


@dataclass(frozen=True)
class _Job:
    frames: torch.Tensor  # uint8 [T, H, W, 3], host or device
    prompt: str


class Engine:
    """Scores videos with the configured models on the configured backend."""

    def __init__(self, settings: Settings, models: dict[str, RewardModel], backend: Backend) -> None:
        self.settings = settings
        self.models = models
        self.backend = backend
        self.cache = cache.ScoreCache(settings)
        self.limits = decode.Limits(settings.max_pixels, settings.max_duration_s, settings.max_total_frames)
        self.decode_policy = nvdec.DecodePolicy(settings.decode, backend.device, settings.nvdec_min_pixels)
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
            raise BadInput(
                f"unknown model {shown(name)}; loaded: {', '.join(sorted(self.models))}", code="unknown_model"
            )
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
                if spec.prompt_forbidden and item.prompt and (found := re.search(spec.prompt_forbidden, item.prompt)):
                    raise Unprocessable(
                        f"prompt contains {shown(found.group())}, a control token of model {spec.name!r}; remove it",
                        item=i,
                        code="bad_prompt",
                    )
        with self.admission.admit([spec.name for spec in specs], len(items)) as ticket:
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    return await self._score(items, specs, cache, ticket)
            except TimeoutError as exc:
                raise Timeout(f"scoring took longer than {self.settings.request_timeout_s:g} s") from exc

    async def _score(
        self, items: list[ScoreInput], specs: list[ModelSpec], mode: CacheMode, ticket: Ticket
    ) -> list[ItemResult]:
        """Cache lookup before any decoding; identical work already in flight is joined; the rest is computed.
        Hashing and computing run under ``ticket.working()`` (what admission counts as busy)."""
        with self.metrics.stage("ingest"):
            videos = await _all_or_nothing(self._ingest(i, item) for i, item in enumerate(items))
        digests = [i for i, v in enumerate(videos) if isinstance(v, ingest.Digest)]
        if digests and mode != "use":
            raise BadInput(
                f"a sha256 reference is scored from the cache only; cache {mode!r} needs the video",
                item=digests[0],
                code="bad_input",
            )
        with ticket.working():
            keys = await self._keys(videos, items, specs)
        call = _Call(items, specs, videos, keys, ticket)
        if mode == "bypass":
            return _results(call, await self._compute(call, call.pairs), cached=set())

        with self.metrics.stage("cache"):
            known: dict[Pair, np.ndarray] = {}
            if mode == "use":
                known = _decode_found(await self.cache.get_many([call.keys[p] for p in call.pairs]), call.pairs, call)
        _check_cached(call, digests, known)
        missing = [p for p in call.pairs if p not in known]
        first: dict[str, Pair] = {}  # one pair per distinct key: equal videos in one call are computed once
        for p in missing:
            first.setdefault(call.keys[p], p)
        flight = await self.cache.claim(list(first), single_flight=mode == "use")
        try:
            claimed = set(flight.mine)
            mine = [p for key, p in first.items() if key in claimed]

            async def lead() -> dict[Pair, np.ndarray]:
                computed = await self._compute(call, mine)
                await flight.publish({call.keys[p]: cache.encode_scores(v) for p, v in computed.items()})
                return computed

            computed, found = await asyncio.gather(lead(), flight.others())
            theirs = [p for key, p in first.items() if key not in claimed]
            from_others = _decode_found(found, theirs, call)
            if leftover := [p for p in theirs if p not in from_others]:  # their leader failed or was slow
                extra = await self._compute(call, leftover)
                await flight.publish({call.keys[p]: cache.encode_scores(v) for p, v in extra.items()})
                computed |= extra
        finally:
            await flight.release()
        by_key = {call.keys[p]: v for p, v in (computed | from_others).items()}
        elsewhere = {call.keys[p] for p in from_others}
        scores = known | {p: by_key[call.keys[p]] for p in missing}
        cached = set(known) | {p for p in missing if call.keys[p] in elsewhere}
        return _results(call, scores, cached)

    async def _compute(self, call: _Call, pairs: list[Pair]) -> dict[Pair, np.ndarray]:
        """Decode each item once for all the models it still needs, then run those models."""
        needs: dict[int, list[int]] = defaultdict(list)
        for i, m in pairs:
            needs[i].append(m)
        if not needs:
            return {}
        with call.ticket.working():
            return await self._decode_and_run(call, needs)

    async def _decode_and_run(self, call: _Call, needs: dict[int, list[int]]) -> dict[Pair, np.ndarray]:
        """``needs``: item -> the indices of the models it needs."""

        async def prepare(i: int) -> list[decode.Clip]:
            try:
                with self.metrics.stage("decode"):
                    wanted = [call.specs[m] for m in needs[i]]
                    clips, seconds = await _in_pool(
                        self._decode_pool, _timed_sample, call.videos[i], wanted, self.limits, self.decode_policy
                    )
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
            *(
                self.batchers[call.specs[m].name].submit(_Job(clip.frames, call.items[i].prompt or ""))
                for i, m, clip in jobs
            )
        )
        return {(i, m): value for (i, m, _), value in zip(jobs, values)}

    def _observe_batch(self, model: str, waits: list[float]) -> None:
        self.metrics.batch_size.labels(model).observe(len(waits))
        queue = self.metrics.stage_seconds.labels("queue", model)
        for wait in waits:
            queue.observe(wait)

    async def _ingest(self, index: int, item: ScoreInput) -> Video:
        try:
            return await ingest.resolve(item.source, self._fetcher)
        except ServiceError as exc:
            raise exc.for_item(index)

    async def _keys(self, videos: list[Video], items: list[ScoreInput], specs: list[ModelSpec]) -> dict[Pair, str]:
        """Cache keys; content digests (sha256 of up to hundreds of MB) are computed off the event loop."""
        digests = await asyncio.gather(*(_in_pool(self._decode_pool, cache.content_digest, v) for v in videos))
        pixels = self.decode_policy.pixels_id
        return {
            (i, m): cache.cache_key(digests[i], spec, items[i].prompt, pixels)
            for i in range(len(items))
            for m, spec in enumerate(specs)
        }

    async def _infer(self, model: str, jobs: list[_Job]) -> list[np.ndarray]:
        """Batcher handler: one backend call per group of equally sized frames."""
        out: list[np.ndarray | None] = [None] * len(jobs)
        width = len(self.models[model].spec.dimensions)
        clips, prompts = [job.frames for job in jobs], [job.prompt for job in jobs]
        for members, batch in FrameBatch.by_size(clips, prompts, self.backend.device):
            with self.metrics.stage("inference", model):
                started = time.perf_counter()
                scores = await self.backend.infer(model, batch)
                self.admission.observe_batch(model, time.perf_counter() - started, len(members))
            if scores.shape != (len(members), width):
                raise RuntimeError(f"{model}: backend returned shape {scores.shape}, expected {(len(members), width)}")
            for row, i in enumerate(members):
                out[i] = scores[row]
        return out  # type: ignore[return-value]


def _decode_found(found: dict[str, bytes], pairs: list[Pair], call: _Call) -> dict[Pair, np.ndarray]:
    """Scores of the pairs whose key is in ``found`` with a value of the right width."""
    out = {}
    for p in pairs:
        raw = found.get(call.keys[p])
        scores = cache.decode_scores(raw, len(call.specs[p[1]].dimensions)) if raw is not None else None
        if scores is not None:
            out[p] = scores
    return out


def _check_cached(call: _Call, digests: list[int], known: dict[Pair, np.ndarray]) -> None:
    """Items sent by digest must be fully cached: else ``not_cached`` naming them (the client resends)."""
    gone = [i for i in digests if any((i, m) not in known for m in range(len(call.specs)))]
    if gone:
        errors = [
            NotCached(f"no cached scores for sha256 {call.videos[i].sha256}; send the video", item=i) for i in gone
        ]
        errors[0].others = errors[1:]
        raise errors[0]


def _results(call: _Call, scores: dict[Pair, np.ndarray], cached: set[Pair]) -> list[ItemResult]:
    """Per item: each model's scores; ``cached`` where this call did not compute them."""
    results = [ItemResult(scores={}, cached={}) for _ in call.items]
    for (i, m), value in sorted(scores.items()):
        results[i].scores[call.specs[m].name] = value
        results[i].cached[call.specs[m].name] = (i, m) in cached
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


def _timed_sample(
    video, specs: list[ModelSpec], limits: decode.Limits, policy: nvdec.DecodePolicy
) -> tuple[list[decode.Clip], float]:
    started = time.perf_counter()
    return _sample(video, specs, limits, policy), time.perf_counter() - started


def _sample(video, specs: list[ModelSpec], limits: decode.Limits, policy: nvdec.DecodePolicy) -> list[decode.Clip]:
    """decode.sample_clips on the path ``policy`` picks, with unexpected decoder failures reported
    as bad input, not crashes."""
    try:
        return nvdec.sample_clips(video, specs, limits, policy)
    except ServiceError:
        raise
    except Exception as exc:  # untrusted bytes can fail in ways FFmpeg/numpy do not classify
        log.warning("decode failed unexpectedly", exc_info=True)
        raise Unprocessable(f"video could not be decoded ({type(exc).__name__}: {exc})", code="corrupt_video") from exc
