"""The scoring engine: ingest -> cache -> decode/sample -> scorer. Usable without HTTP.

Every served model has a *scorer* (``submit(job) -> float32 [K]``): a regression model's is its
``MicroBatcher`` in front of the tensor backend; a judge's is a ``JudgeScorer`` that asks the
judge's upstream directly (service/judge_backend.py). Everything before the scorer (ingest, cache
keys and lookups, decoding and sampling per the model's spec, admission) is the same for both.
A judge with its pairwise mode configured is scored on both videos at once when ``score`` is
called with ``pairwise=True`` (``/v1/compare``): its scorer's ``compare(a, b)``.

Two bounds apply to every call: admission (service/admission.py) refuses work that would queue
past ``VRS_QUEUE_BUDGET_S``; the decode-ahead window (``Engine.decoded``, ``VRS_DECODE_AHEAD``)
bounds the videos decoded and waiting for their scorer, so decoded frames cannot pile up in memory.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal, Protocol, cast

import numpy as np
import torch

from models.placement import CPU
from models.registry import RewardModel
from models.spec import ModelSpec
from service import cache, decode, ingest, nvdec
from service.admission import Admission, Ticket
from service.backends.base import Backend, FrameBatch
from service.batching import MicroBatcher, Window
from service.body_limits import ByteBudget, Holding
from service.config import Settings
from service.errors import BadInput, NotCached, ServiceError, Timeout, Unprocessable, shown
from service.fetch import UrlFetcher
from service.ingest import ScoreInput
from service.judge_backend import JudgeBackend, JudgeScorer
from service.judge_client import answer_by
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
    together: frozenset[int] = frozenset()  # models that score the call's two items at once (pairwise judges)
    deadline: float | None = None  # time.monotonic() at which the call times out (decode workers stop there)

    @property
    def pairs(self) -> list[Pair]:
        return [(i, m) for i in range(len(self.items)) for m in range(len(self.specs))]


@dataclass(frozen=True)
class _Job:
    frames: torch.Tensor  # uint8 [T, H, W, 3], host or device
    prompt: str
    fps: float | None = None  # of the sampled frames


class Scorer(Protocol):
    async def submit(self, job: _Job) -> np.ndarray: ...


class Engine:
    """Scores videos with the configured models on the configured backend."""

    def __init__(
        self,
        settings: Settings,
        models: dict[str, RewardModel],
        backend: Backend,
        judges: JudgeBackend | None = None,
    ) -> None:
        self.settings = settings
        self.models = models  # regression models, on ``backend``
        self.backend = backend
        self.judges = judges or JudgeBackend({})
        clash = sorted(set(models) & set(self.judges.names))
        if clash:
            raise ValueError(f"{clash} configured both as models and as judges")
        self.specs: dict[str, ModelSpec] = {n: m.spec for n, m in models.items()} | {
            n: self.judges.model_spec(n) for n in self.judges.names
        }
        self.pairwise_specs = {
            n: self.judges.model_spec(n, pairwise=True) for n in self.judges.names if self.judges.pairwise(n)
        }
        self.cache = cache.ScoreCache(settings)
        self.limits = decode.Limits(settings.max_pixels, settings.max_duration_s, settings.max_total_frames)
        self.decode_policy = nvdec.DecodePolicy(settings.decode, backend.device, settings.nvdec_min_pixels)
        self.variants = {name: self._variant(name) for name in self.specs}  # of the cache keys
        self.batchers: dict[str, MicroBatcher[_Job, np.ndarray]] = {}
        self.decoded = Window(settings.decode_ahead)  # videos decoded and not yet scored, over all requests
        self.scorers: dict[str, Scorer] = {}  # every served model's: the batchers and the judges' scorers
        self.stats: Counter[str] = Counter()  # videos_decoded, frames_decoded, inferences
        self.metrics = Metrics()
        self.metrics.watch_stats(self.stats, self.cache.stats)
        if self.cache.l2 is not None:
            self.metrics.watch_redis(lambda: float(self.cache.redis_state == "up"))
        self._decode_pool: ThreadPoolExecutor | None = None
        self._fetcher: UrlFetcher | None = None
        self.admission = Admission(
            queue_budget_s=settings.queue_budget_s,
            max_pending=settings.max_pending,
            concurrency={n: backend.max_concurrent_batches for n in models}
            | {n: self.judges.concurrency(n) for n in self.judges.names},
            decode_workers=settings.decode_workers,
            unmeasured_s=settings.unmeasured_cost_s,
        )
        # Bytes requests hold at once: their bodies (service/body_limits.py) and their URL downloads.
        self.bytes_in_flight = ByteBudget(settings.max_inflight_body_bytes, self.admission.estimated_wait_s)
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
            max_connections=s.url_max_connections,
            per_host=s.url_connections_per_host,
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
            self.metrics.watch_queue(name, lambda b=batcher: b.queue_depth)  # type: ignore[misc]  # mypy infers no lambda with a default
            batcher.start()
            self.batchers[name] = batcher
        judges = {n: JudgeScorer(n, self.judges, partial(self._observe_judge, n)) for n in self.judges.names}
        self.scorers = {**self.batchers, **judges}

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        self.scorers = {}
        await self.backend.close()
        await self.judges.aclose()
        await self.cache.close()
        if self._fetcher is not None:
            await self._fetcher.aclose()
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def _variant(self, name: str) -> str:
        """How this gateway computes ``name``'s scores, beyond its spec, where that changes them by
        more than rounding: the decode path, and the device, dtype and compiled form of the forward
        (bf16 moves a score by percents). Cache keys carry it, so gateways that differ in any of
        these never share entries. Behind Triton, the gateway's own VRS_DEVICE/DTYPE/COMPILE, which
        ``vrs triton`` reads from the same configuration; a remote judge's numerics are its
        upstream's, named by its fingerprint (service/judge_backend.py)."""
        s = self.settings
        if name in self.judges.names:
            where = self.judges.describe(name)
            numerics = [where["device"].split(":")[0], where["dtype"]] if "dtype" in where else []
        elif s.backend == "triton":
            numerics = ["triton", s.device, s.dtype, s.compile]
        else:
            model = self.models[name]
            device, dtype = (
                (model.placement.device, model.placement.dtype)
                if model.placement != CPU
                else (self.backend.device, torch.float32)  # weight-free: computes where its frames are
            )
            numerics = [device.type, str(dtype).removeprefix("torch."), s.compile]
        return ".".join([self.decode_policy.pixels_id, *numerics])

    def spec(self, name: str, pairwise: bool = False) -> ModelSpec:
        """A served model's spec; ``pairwise``: its pairwise mode's, for a judge configured with one."""
        if name not in self.specs:
            raise BadInput(
                f"unknown model {shown(name)}; loaded: {', '.join(sorted(self.specs))}", code="unknown_model"
            )
        return self.pairwise_specs.get(name, self.specs[name]) if pairwise else self.specs[name]

    async def ready(self) -> tuple[bool, str]:
        if not self.scorers:
            return False, "engine not started"
        return await self.backend.ready()

    async def score(
        self, items: list[ScoreInput], model_names: list[str], cache: CacheMode = "use", pairwise: bool = False
    ) -> list[ItemResult]:
        """Raw scores per item and model. Any bad item fails the whole call. ``pairwise`` (two
        items, A then B): judges with a pairwise mode compare them together, and give each its
        relative scores."""
        specs = [self.spec(name, pairwise) for name in model_names]
        together = frozenset(m for m, name in enumerate(model_names) if pairwise and name in self.pairwise_specs)
        if not items:
            raise BadInput("no items to score", code="no_items")
        if together and (len(items) != 2 or items[0].prompt != items[1].prompt):
            raise BadInput(
                f"model {model_names[min(together)]!r} compares two videos against one prompt", code="bad_input"
            )
        ingest.check_count(len(items), self.settings.max_items)
        _raise_all([e for i, item in enumerate(items) if (e := self._prompt_error(i, item.prompt, specs))])
        # A request's downloads are capped by the body limit and by the whole budget (a cap above the
        # budget would answer a lone request 429 again and again instead of 413).
        downloads = Holding(self.bytes_in_flight, min(self.settings.max_request_bytes, self.bytes_in_flight.limit))
        with self.admission.admit([spec.name for spec in specs], len(items)) as ticket:
            deadline = time.monotonic() + self.settings.request_timeout_s
            judges_deadline = answer_by.set(deadline)  # a judge does not wait out a retry past it
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    return await self._score(items, specs, together, cache, ticket, downloads, deadline)
            except TimeoutError as exc:
                raise Timeout(f"scoring took longer than {self.settings.request_timeout_s:g} s") from exc
            finally:
                answer_by.reset(judges_deadline)
                downloads.release()

    def _prompt_error(self, i: int, prompt: str | None, specs: list[ModelSpec]) -> ServiceError | None:
        """What is wrong with item ``i``'s prompt for these models, if anything."""
        if prompt is not None and len(prompt) > self.settings.max_prompt_chars:
            return Unprocessable(
                f"prompt has {len(prompt)} characters; the limit is {self.settings.max_prompt_chars}",
                item=i,
                code="prompt_too_long",
            )
        for spec in specs:
            if spec.needs_prompt and not (prompt and prompt.strip()):
                return BadInput(f"model {spec.name!r} needs a prompt", item=i, code="missing_prompt")
            if spec.prompt_forbidden and prompt and (found := re.search(spec.prompt_forbidden, prompt)):
                return Unprocessable(
                    f"prompt contains {shown(found.group())}, a control token of model {spec.name!r}; remove it",
                    item=i,
                    code="bad_prompt",
                )
        return None

    async def _score(
        self,
        items: list[ScoreInput],
        specs: list[ModelSpec],
        together: frozenset[int],
        mode: CacheMode,
        ticket: Ticket,
        downloads: Holding,
        deadline: float | None = None,
    ) -> list[ItemResult]:
        """Cache lookup before any decoding; identical work already in flight is joined; the rest is computed.
        Hashing and computing run under ``ticket.working()`` (what admission counts as busy)."""
        with self.metrics.stage("ingest"):
            videos = await self._ingest(items, downloads)
        digests = [i for i, v in enumerate(videos) if isinstance(v, ingest.Digest)]
        if digests and mode != "use":
            raise BadInput(
                f"a sha256 reference is scored from the cache only; cache {mode!r} needs the video",
                item=digests[0],
                code="bad_input",
            )
        with ticket.working():
            keys = await self._keys(videos, items, specs, together)
        call = _Call(items, specs, videos, keys, ticket, together, deadline)
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

            async def publish(computed: dict[Pair, np.ndarray]) -> None:
                # A non-finite score is refused (``non_finite_score``), and not kept: it may be a one-off.
                finite = {p: v for p, v in computed.items() if np.isfinite(v).all()}
                await flight.publish({call.keys[p]: cache.encode_scores(v) for p, v in finite.items()})

            computed, found = await asyncio.gather(self._compute(call, mine, publish), flight.others())
            theirs = [p for key, p in first.items() if key not in claimed]
            from_others = _decode_found(found, theirs, call)
            if leftover := [p for p in theirs if p not in from_others]:  # their leader failed or was slow
                computed |= await self._compute(call, leftover, publish)
        except ServiceError as exc:
            raise _with_twins(exc, call, missing)
        finally:
            await flight.release()
        by_key = {call.keys[p]: v for p, v in (computed | from_others).items()}
        elsewhere = {call.keys[p] for p in from_others}
        scores = known | {p: by_key[call.keys[p]] for p in missing}
        cached = set(known) | {p for p in missing if call.keys[p] in elsewhere}
        return _results(call, scores, cached)

    async def _compute(self, call: _Call, pairs: list[Pair], store=None) -> dict[Pair, np.ndarray]:
        """Decode each item once for all the models it still needs, then run those models. What
        was computed is handed to ``store`` (the cache) before the items' errors are raised, all
        or nothing: a request failing on one item does not lose the others' work."""
        pairs = sorted(set(pairs) | {(1 - i, m) for i, m in pairs if m in call.together})  # both sides of a pair
        needs: dict[int, list[int]] = defaultdict(list)
        for i, m in pairs:
            needs[i].append(m)
        if not needs:
            return {}
        with call.ticket.working():
            return await self._decode_and_run(call, needs, store)

    async def _decode_and_run(self, call: _Call, needs: dict[int, list[int]], store) -> dict[Pair, np.ndarray]:
        """``needs``: item -> the indices of the models it needs. Each item is decoded and scored as
        soon as it can be, holding a place in the decode-ahead window (``decoded``) from its decode
        until its scores are in; pairwise judges, which need both items' clips, run after."""
        computed: dict[Pair, np.ndarray] = {}
        errors: list[BaseException] = []
        pairwise: dict[int, dict[int, _Job]] = {}  # item -> its jobs for the pairwise judges

        def collect(outcomes: list) -> None:
            for out in outcomes:
                if isinstance(out, BaseException):
                    errors.append(out)
                elif out:  # a model's scores (an item's own coroutine returns None)
                    computed.update(out)

        async def item(i: int) -> None:
            async with self.decoded.hold():
                try:
                    with self.metrics.stage("decode"):
                        wanted = [call.specs[m] for m in needs[i]]
                        limits = replace(self.limits, deadline=call.deadline)
                        clips, seconds = await _in_pool(
                            self._decode_pool, _timed_sample, call.videos[i], wanted, limits, self.decode_policy
                        )
                        self.admission.observe_decode(seconds)  # time in the worker, not waiting for one
                except ServiceError as exc:
                    raise exc.for_item(i)
                self.stats["videos_decoded"] += 1
                self.stats["frames_decoded"] += sum(len(clip.indices) for clip in clips)
                jobs = {m: _Job(c.frames, call.items[i].prompt or "", _sampled_fps(c)) for m, c in zip(needs[i], clips)}
                pairwise[i] = {m: job for m, job in jobs.items() if m in call.together}
                alone = [self._one(call, i, m, job) for m, job in jobs.items() if m not in call.together]
                self.stats["inferences"] += len(alone)
                collect(await asyncio.gather(*alone, return_exceptions=True))

        collect(await asyncio.gather(*(item(i) for i in needs), return_exceptions=True))
        if call.together and len(pairwise) == 2:  # both items decoded: the pairwise judges compare them
            units = [self._two(call, m, pairwise[0][m], pairwise[1][m]) for m in sorted(pairwise[0])]
            self.stats["inferences"] += len(units)
            collect(await asyncio.gather(*units, return_exceptions=True))
        if store is not None and computed:
            await store(computed)
        _raise_all(errors)
        return computed

    async def _one(self, call: _Call, i: int, m: int, job: _Job) -> dict[Pair, np.ndarray]:
        try:
            return {(i, m): await self.scorers[call.specs[m].name].submit(job)}
        except ServiceError as exc:
            raise exc.for_item(i)

    async def _two(self, call: _Call, m: int, a: _Job, b: _Job) -> dict[Pair, np.ndarray]:
        """A pairwise judge on items 0 and 1 together (its failure concerns the pair: no item)."""
        scorer = self.scorers[call.specs[m].name]
        assert isinstance(scorer, JudgeScorer)  # only judges have a pairwise mode (pairwise_specs)
        score_a, score_b = await scorer.compare(a, b)
        return {(0, m): score_a, (1, m): score_b}

    def _observe_judge(self, model: str, seconds: float, videos: int) -> None:
        self.metrics.stage_seconds.labels("inference", model).observe(seconds)
        self.admission.observe_batch(model, seconds, videos)

    def _observe_batch(self, model: str, waits: list[float]) -> None:
        self.metrics.batch_size.labels(model).observe(len(waits))
        queue = self.metrics.stage_seconds.labels("queue", model)
        for wait in waits:
            queue.observe(wait)

    async def _ingest(self, items: list[ScoreInput], downloads: Holding) -> list[Video]:
        """Each item's video. URL items are downloaded (``VRS_URL_FETCHES_PER_REQUEST`` at a time,
        charged to ``downloads``), each distinct URL once; any failure fails the call, naming the item."""
        fetching: dict[str, asyncio.Task[ingest.EncodedVideo]] = {}
        slots = asyncio.Semaphore(self.settings.url_fetches_per_request)

        async def fetch(url: str) -> ingest.EncodedVideo:
            assert self._fetcher is not None  # made by start()
            async with slots:
                return ingest.EncodedVideo(await self._fetcher.fetch(url, downloads))

        async def one(index: int, item: ScoreInput) -> Video:
            try:
                if not isinstance(item.source, ingest.VideoURL):
                    return item.source
                url = item.source.url
                if url not in fetching:
                    fetching[url] = asyncio.ensure_future(fetch(url))
                return await asyncio.shield(fetching[url])
            except ServiceError as exc:  # one failed download may be several items' error: a copy each
                raise copy.copy(exc).for_item(index) from exc.__cause__

        try:
            return await _all_or_nothing(one(i, item) for i, item in enumerate(items))
        finally:
            for task in fetching.values():
                task.cancel()

    async def _keys(
        self, videos: list[Video], items: list[ScoreInput], specs: list[ModelSpec], together: frozenset[int]
    ) -> dict[Pair, str]:
        """Cache keys; content digests (sha256 of up to hundreds of MB) are computed off the event loop.
        A pairwise judge's result for one side depends on both videos and on which is A: its key
        holds both digests and the side."""
        digests = await asyncio.gather(*(_in_pool(self._decode_pool, cache.content_digest, v) for v in videos))

        def content(i: int, m: int) -> str:
            return f"{digests[0]}+{digests[1]}:{'ab'[i]}" if m in together else digests[i]

        return {
            (i, m): cache.cache_key(content(i, m), spec, items[i].prompt, self.variants[spec.name])
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
        errors: list[ServiceError] = [
            NotCached(
                f"no cached scores for sha256 {cast(ingest.Digest, call.videos[i]).sha256}; send the video", item=i
            )
            for i in gone
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
    _raise_all([r for r in results if isinstance(r, BaseException)])
    return results


def _with_twins(exc: ServiceError, call: _Call, pairs: list[Pair]) -> BaseException:
    """``exc`` (and its ``others``) with a copy of each item's error for every other item of
    ``pairs`` that shares one of its cache keys: equal videos in one call are computed once, and
    each of them is named."""
    errors = [exc, *exc.others]
    exc.others = []
    named = {e.item for e in errors}
    for error in list(errors):
        if error.item is None:
            continue
        keys = {call.keys[(error.item, m)] for m in range(len(call.specs))}
        for j in sorted({j for j, m in pairs if call.keys[(j, m)] in keys} - named):
            errors.append(copy.copy(error).for_item(j))
            named.add(j)
    return _lowest(errors)


def _raise_all(errors: Sequence[BaseException]) -> None:
    if errors:
        raise _lowest(errors)


def _lowest(errors: Sequence[BaseException]) -> BaseException:
    """The error of the lowest item with the others attached in item order, whatever order they
    happened in (an unexpected error first: it is a bug)."""
    bad = [e for e in errors if isinstance(e, ServiceError)]
    if len(bad) < len(errors):
        return next(e for e in errors if not isinstance(e, ServiceError))
    bad.sort(key=lambda e: (e.item is None, e.item or 0))  # stable: one item's errors keep their order
    bad[0].others = bad[1:]
    return bad[0]


def _sampled_fps(clip: decode.Clip) -> float | None:
    """Frame rate of the sampled frames (what a video judge is told): frames over the source's duration."""
    duration = clip.total_frames / clip.fps if clip.fps else 0.0
    return len(clip.indices) / duration if duration > 0 else None


def _in_pool(pool: ThreadPoolExecutor | None, fn, *args):
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
