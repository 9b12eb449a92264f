"""Admission control: refuse work early when its queueing time would exceed a budget.

A request is admitted when the work already admitted (the *backlog*) would be drained within
``queue_budget_s`` seconds; otherwise it gets ``Overloaded`` (HTTP 429) at once, with a
``Retry-After`` of about the time the backlog needs to fall back under the budget.

The drain time is estimated from measured costs, not from counts, in two steps:

1. Stage costs give each request's *work* in seconds: per model, an exponentially weighted
   moving average (EWMA) of seconds per video from real backend batches (batch wall time /
   batch size) divided by how many batches the backend runs at once (``concurrency``); and an
   EWMA of seconds per video decode divided by the decode workers. Every video passes both
   stages and the stages run side by side, so work = max(sum_m videos * cost_m, videos * decode).
2. A calibration factor, measured: seconds of busy wall time per second of estimated work
   completed, over windows of ``window_s`` busy seconds. *Busy* means some admitted request is
   in a compute stage (hashing, decoding, or waiting on a model batch: ``Ticket.working``) while the
   backlog has a nonzero estimate; time a request spends waiting on the network, Redis or
   another request's result is not busy, so it cannot inflate the factor. The factor folds in
   what the stage costs do not see: HTTP and JSON parsing, contention on shared cores. It is
   clamped to [``MIN_CALIBRATION``, ``MAX_CALIBRATION``]. Wait = backlog work * calibration.

The backlog is always priced at the current cost estimates (not those at admission), so work
admitted before its model was measured is repriced once it has been.
Until a model has been measured (its first batch), each of its videos is priced at a prior,
``unmeasured_s`` seconds (over the model's concurrency): a cold gateway otherwise admitted any
burst at 0 s of work, and the burst then timed out (504) instead of being refused (429). The
prior only prices admission; the calibration counts measured work only, so a first batch that
is slower or faster than the prior does not skew it.
``max_pending`` stays a hard cap on admitted (video, model) pairs. Pure bookkeeping with an
injectable clock; not thread-safe (call it from the event loop).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from service.errors import Overloaded, TooLarge

MIN_CALIBRATION = 0.25  # stage costs overstate the drain rate at most 4x (parallelism they miss)
MAX_CALIBRATION = 10.0  # and understate it at most 10x: a bound on what one odd window can do


class Ewma:
    """Exponentially weighted moving average; ``value`` is None until the first sample."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)


class Admission:
    """Backlog accounting and the admit/refuse decision (see the module docstring)."""

    def __init__(
        self,
        *,
        queue_budget_s: float,
        max_pending: int,
        concurrency: Mapping[str, int] | int = 1,
        decode_workers: int = 1,
        alpha: float = 0.2,
        window_s: float = 2.0,
        unmeasured_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue_budget_s = queue_budget_s
        self.unmeasured_s = unmeasured_s  # seconds per video of a model not yet measured (the prior)
        self.max_pending = max_pending
        self._concurrency = concurrency
        self.decode_workers = max(1, decode_workers)
        self.alpha = alpha
        self.pending: Counter[str] = Counter()  # model -> videos admitted and not yet answered
        self.pending_videos = 0  # videos admitted and not yet answered (decoded once for all models)
        self.model_cost: dict[str, Ewma] = {}  # model -> seconds per video on the backend
        self.decode_cost = Ewma(alpha)  # seconds per video decode (all of a video's models)
        self.shed = 0  # requests refused
        self.calibration = Ewma(alpha)  # busy wall seconds per second of estimated work completed
        self.window_s = window_s
        self._clock = clock
        self._working = 0  # admitted requests now in a compute stage
        self._last_event = clock()
        self._window_busy = 0.0
        self._window_done = 0.0

    @property
    def pending_pairs(self) -> int:
        return sum(self.pending.values())

    def concurrency(self, model: str) -> int:
        c = self._concurrency
        return max(1, c if isinstance(c, int) else c.get(model, 1))

    # --- measurements -------------------------------------------------------------------------

    def observe_batch(self, model: str, seconds: float, size: int) -> None:
        """A backend call of ``size`` videos of ``model`` took ``seconds`` (wall time)."""
        if size > 0 and seconds >= 0:
            self._tick()  # the time up to now is judged by the estimates it ran under
            self.model_cost.setdefault(model, Ewma(self.alpha)).add(seconds / size)

    def observe_decode(self, seconds: float) -> None:
        """Decoding and sampling one video (for all the models it needed) took ``seconds``."""
        if seconds >= 0:
            self._tick()
            self.decode_cost.add(seconds)

    # --- estimates ----------------------------------------------------------------------------

    def seconds_per_video(self, model: str, prior: bool = True) -> float:
        """Backend seconds one more video of ``model`` adds to the drain time; for a model not yet
        measured, the prior ``unmeasured_s`` (0 with ``prior=False``)."""
        cost = self.model_cost.get(model)
        seconds = cost.value if cost is not None and cost.value is not None else (self.unmeasured_s if prior else 0.0)
        return seconds / self.concurrency(model)

    def work_seconds(self, per_model: Mapping[str, int], videos: int, prior: bool = True) -> float:
        """Drain time of this much work: the slower of the backend and the decode stage. With
        ``prior=False`` only measured costs count (unmeasured models' work is 0)."""
        backend = sum(n * self.seconds_per_video(m, prior) for m, n in per_model.items())
        decode = videos * (self.decode_cost.value or 0.0) / self.decode_workers
        return max(backend, decode)

    def backlog_s(self, prior: bool = True) -> float:
        """Stage work of everything admitted and not yet answered, at the current estimates."""
        return self.work_seconds(self.pending, self.pending_videos, prior)

    def estimated_wait_s(self) -> float:
        """How long work admitted now would queue behind the backlog."""
        return self.backlog_s() * (self.calibration.value or 1.0)

    def _tick(self, done_s: float = 0.0) -> None:
        """Account busy time since the last event and ``done_s`` of work just completed; when work
        completes, close the calibration window if it holds ``window_s`` of busy time."""
        now = self._clock()
        if self._working and self.backlog_s(prior=False) > 0:  # time on work not yet measured (a
            self._window_busy += now - self._last_event  # model's first batch) would skew the ratio
        self._last_event = now
        self._window_done += done_s
        if done_s > 0 and self._window_busy >= self.window_s:
            ratio = self._window_busy / self._window_done
            self.calibration.add(min(MAX_CALIBRATION, max(MIN_CALIBRATION, ratio)))
            self._window_busy = self._window_done = 0.0

    @contextmanager
    def _stage(self) -> Iterator[None]:
        self._tick()
        self._working += 1
        try:
            yield
        finally:
            self._tick()
            self._working -= 1

    def retry_after_s(self, extra_s: float = 0.0) -> float:
        """When the backlog (plus ``extra_s`` of new work) will be back under the budget; >= 1 s."""
        wait = self.estimated_wait_s() + extra_s * (self.calibration.value or 1.0)
        return max(1.0, math.ceil(wait - self.queue_budget_s))

    # --- decisions ----------------------------------------------------------------------------

    def check_open(self) -> None:
        """Refuse before any body is read when nothing could be admitted now."""
        wait = self.estimated_wait_s()
        if wait > self.queue_budget_s:
            self.shed += 1
            raise Overloaded(self._busy_message(wait), retry_after_s=self.retry_after_s())
        if self.pending_pairs >= self.max_pending:
            self.shed += 1
            message = f"{self.pending_pairs} videos are queued (max_pending={self.max_pending})"
            raise Overloaded(message, retry_after_s=self.retry_after_s())

    @contextmanager
    def admit(self, models: list[str], videos: int) -> Iterator[Ticket]:
        """Hold ``videos`` x ``models`` in the backlog for the duration of the ``with`` block,
        or raise ``Overloaded`` (``TooLarge`` if the request alone exceeds ``max_pending``).
        The request marks its compute with ``ticket.working()``; a request that never did any
        (all cache hits) completes no work in the calibration."""
        pairs = videos * len(models)
        if pairs > self.max_pending:
            raise TooLarge(f"{videos} items x {len(models)} models exceed max_pending={self.max_pending}")
        self._tick()
        wait = self.estimated_wait_s()
        own = self.work_seconds(Counter({m: videos for m in models}), videos)
        if wait > self.queue_budget_s:
            self.shed += 1
            raise Overloaded(self._busy_message(wait), retry_after_s=self.retry_after_s(own))
        if self.pending_pairs + pairs > self.max_pending:
            self.shed += 1
            raise Overloaded(
                f"{self.pending_pairs} videos are queued (max_pending={self.max_pending}); try again shortly",
                retry_after_s=self.retry_after_s(own),
            )
        for m in models:
            self.pending[m] += videos
        self.pending_videos += videos
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            done = (
                self.work_seconds(Counter({m: videos for m in models}), videos, prior=False) if ticket.worked else 0.0
            )
            self._tick(done_s=done)
            for m in models:
                self.pending[m] -= videos
            self.pending_videos -= videos

    def _busy_message(self, wait: float) -> str:
        return (
            f"the queue holds about {wait:.1f} s of work, over the {self.queue_budget_s:g} s budget; "
            "try again after Retry-After"
        )


class Ticket:
    """An admitted request's handle: ``with ticket.working():`` around its compute stages."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.worked = False

    @contextmanager
    def working(self) -> Iterator[None]:
        self.worked = True
        with self._admission._stage():
            yield
