"""Open-loop load: requests start on a fixed schedule, whatever the server's answers do.

Request ``i`` of a run is scheduled at ``t0 + i / rate`` and is started at that time even when
earlier requests are still waiting, so a slow server cannot slow the generator down
(no coordinated omission). Latency is measured from the *scheduled* start to the end of
the response body, so time a request spends waiting for the generator or for a connection
counts against the server, as it would for a real client. Requests scheduled in the first
``warmup_s`` seconds are sent but left out of the statistics.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import httpx


@dataclass(frozen=True)
class Payload:
    """One pre-encoded request: sent as is, so encoding is never measured."""

    path: str
    body: bytes
    content_type: str = "application/json"
    videos: int = 1  # videos the request carries, for videos/s


@dataclass
class Sample:
    """What happened to one request. Times are seconds from the run's start (t0)."""

    index: int
    scheduled_s: float
    sent_s: float  # when the generator actually started it (>= scheduled_s)
    done_s: float
    status: str  # HTTP status code, or "timeout" / "connect_error" / "error"
    videos: int
    warmup: bool
    retry_after: str | None = None  # the Retry-After header of a 429/503, as sent
    server_s: float | None = None  # time in the server (its Server-Timing app;dur), if it said

    @property
    def latency_s(self) -> float:
        return self.done_s - self.scheduled_s


@dataclass
class RunResult:
    """All samples of one run at one offered rate, and how it was configured."""

    url: str
    rate: float
    duration_s: float
    warmup_s: float
    samples: list[Sample] = field(default_factory=list)
    max_in_flight: int = 0

    def summary(self) -> dict:
        """Counts, latency percentiles (ms) of measured successes, throughput and errors by status."""
        measured = [s for s in self.samples if not s.warmup]
        ok = [s for s in measured if s.status == "200"]
        latencies = sorted(s.latency_s for s in ok)
        lags = sorted(s.sent_s - s.scheduled_s for s in self.samples)
        # n requests 1/rate apart fill n/rate seconds of schedule; a slow server stretches that to its last answer
        first = min(s.scheduled_s for s in measured) if measured else 0.0
        window = max(max(s.done_s for s in ok), first + len(measured) / self.rate) - first if ok else 0.0
        achieved = len(ok) / window if window > 0 else 0.0
        return {
            "offered_rps": self.rate,
            "sent": len(self.samples),
            "warmup": len(self.samples) - len(measured),
            "measured": len(measured),
            "ok": len(ok),
            "errors": dict(Counter(s.status for s in measured if s.status != "200")),
            "achieved_rps": achieved,
            "achieved_videos_per_s": achieved * (sum(s.videos for s in ok) / len(ok)) if ok else 0.0,
            "latency_ms": {f"p{q}": 1000 * percentile(latencies, q) for q in (50, 90, 99)}
            | {
                "mean": 1000 * sum(latencies) / len(latencies) if latencies else math.nan,
                "max": 1000 * latencies[-1] if latencies else math.nan,
            },
            "send_lag_ms": {"p99": 1000 * percentile(lags, 99), "max": 1000 * lags[-1] if lags else math.nan},
            "max_in_flight": self.max_in_flight,
        }

    def to_json(self) -> dict:
        config = {"url": self.url, "rate": self.rate, "duration_s": self.duration_s, "warmup_s": self.warmup_s}
        return {"config": config, "summary": self.summary(), "samples": [asdict(s) for s in self.samples]}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def schedule(rate: float, duration_s: float) -> list[float]:
    """Start offsets of a run: ``round(rate * duration_s)`` requests, ``1 / rate`` apart."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    return [i / rate for i in range(round(rate * duration_s))]


def server_timing_s(header: str | None) -> float | None:
    """Seconds of the ``app`` entry of a ``Server-Timing`` header (``app;dur=12.5``), if any."""
    for entry in (header or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        if name == "app":
            for param in params:
                key, _, value = param.partition("=")
                if key == "dur":
                    try:
                        return float(value) / 1000
                    except ValueError:
                        return None
    return None


async def run_open_loop(
    url: str,
    payloads: Sequence[Payload],
    *,
    rate: float,
    duration_s: float,
    warmup_s: float = 0.0,
    timeout_s: float = 180.0,
    max_connections: int = 1024,
) -> RunResult:
    """Send ``payloads`` in turn at ``rate`` req/s for ``duration_s`` (warm-up included); wait for every answer."""
    if not payloads:
        raise ValueError("no payloads")
    offsets = schedule(rate, duration_s)
    result = RunResult(url=url, rate=rate, duration_s=duration_s, warmup_s=warmup_s)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    in_flight = 0
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()

        async def one(index: int, offset: float) -> None:
            nonlocal in_flight
            payload = payloads[index % len(payloads)]
            retry_after = server_s = None
            sent = time.perf_counter() - t0
            in_flight += 1
            result.max_in_flight = max(result.max_in_flight, in_flight)
            try:
                response = await client.post(
                    payload.path, content=payload.body, headers={"content-type": payload.content_type}
                )
                status = str(response.status_code)
                retry_after = response.headers.get("retry-after")
                server_s = server_timing_s(response.headers.get("server-timing"))
            except httpx.TimeoutException:
                status = "timeout"
            except httpx.ConnectError:
                status = "connect_error"
            except httpx.HTTPError as exc:
                status = f"error:{type(exc).__name__}"
            finally:
                in_flight -= 1
            done = time.perf_counter() - t0
            result.samples.append(
                Sample(index, offset, sent, done, status, payload.videos, offset < warmup_s, retry_after, server_s)
            )

        tasks = []
        for index, offset in enumerate(offsets):
            delay = offset - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index, offset)))
        await asyncio.gather(*tasks)
    result.samples.sort(key=lambda s: s.index)
    return result
