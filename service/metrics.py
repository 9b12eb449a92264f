"""Prometheus metrics of one gateway, on its own registry (several apps can share a process).

Histograms are observed where the work happens (engine stages, batches, requests). Counters
that the engine and cache already keep in plain ``Counter`` dicts (``engine.stats``,
``cache.stats``) are read at scrape time by a collector, so each is counted in one place.
Names follow Prometheus conventions: base units, ``_seconds``, ``_bytes``, ``_total``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

disable_created_metrics()  # no *_created series: they double the output and dashboards never read them

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STAGES = ("ingest", "cache", "decode", "queue", "inference")


class Metrics:
    """Every metric the gateway exports. ``registry`` is what ``/metrics`` renders."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds...
        self.requests = PromCounter(
            "vrs_requests",
            "HTTP requests answered, by endpoint, models and status.",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "vrs_request_duration_seconds",
            "Time from request received to response sent.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "vrs_stage_duration_seconds",
            "Time in each pipeline stage: ingest and cache per request, decode per video, queue and inference per "
            "model call (model is empty for stages that serve every model of a request).",
            ["stage", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vrs_batch_size",
            "Items per micro-batch handed to the backend.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "vrs_queue_depth", "Items waiting in a model's micro-batch queue.", ["model"], registry=r
        )
        self.in_flight = Gauge("vrs_requests_in_flight", "HTTP requests being processed.", ["endpoint"], registry=r)
        self.received_bytes = PromCounter(
            "vrs_received_bytes", "Request body bytes received.", ["endpoint"], registry=r
        )

    def watch_stats(self, engine_stats: Counter[str], cache_stats: Counter[str]) -> None:
        """Export the engine's and cache's own counters at each scrape."""
        self.registry.register(_StatsCollector(engine_stats, cache_stats))

    def watch_redis(self, up: Callable[[], float]) -> None:
        """``vrs_cache_redis_up``: 1 while the Redis cache is used, 0 while its circuit breaker is open."""
        Gauge(
            "vrs_cache_redis_up", "1 while Redis is used, 0 while its breaker is open.", registry=self.registry
        ).set_function(up)

    def watch_queue(self, model: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def watch_admission(
        self, wait_s: Callable[[], float], *, shed: Callable[[], int], calibration: Callable[[], float]
    ) -> None:
        """Export admission control's state (service/admission.py) at each scrape."""
        for name, doc, read in (
            ("vrs_queue_wait_estimate_seconds", "Estimated queueing time of work admitted now.", wait_s),
            ("vrs_admission_calibration", "Measured busy seconds per second of stage-estimated work.", calibration),
            ("vrs_requests_shed", "Requests refused by admission control (429) since start.", shed),
        ):
            Gauge(name, doc, registry=self.registry).set_function(read)

    def stage(self, stage: str, model: str = ""):
        """Context manager timing one stage."""
        return self.stage_seconds.labels(stage, model).time()


class _StatsCollector(Collector):
    def __init__(self, engine_stats: Counter[str], cache_stats: Counter[str]) -> None:
        self.engine = engine_stats
        self.cache = cache_stats

    def collect(self) -> Iterator[Metric]:
        for name, key, doc in (
            ("vrs_videos_decoded", "videos_decoded", "Videos decoded (once per video, however many models)."),
            ("vrs_frames_decoded", "frames_decoded", "Sampled frames decoded and resized, summed over models."),
            ("vrs_inferences", "inferences", "(video, model) pairs sent to the backend."),
        ):
            yield CounterMetricFamily(name, doc, value=self.engine[key])
        lookups = CounterMetricFamily("vrs_cache_lookups", "Cache lookups by result.", labels=["result"])
        for result, key in (("l1_hit", "l1_hits"), ("l2_hit", "l2_hits"), ("miss", "misses")):
            lookups.add_metric([result], self.cache[key])
        yield lookups
        errors = CounterMetricFamily(
            "vrs_cache_errors",
            "Redis calls that failed or timed out (error), or were skipped by the open circuit (skipped).",
            labels=["kind"],
        )
        errors.add_metric(["error"], self.cache["redis_errors"])
        errors.add_metric(["skipped"], self.cache["redis_skipped"])
        yield errors
