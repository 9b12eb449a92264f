"""The load generator is honest: it sends on schedule whatever the server does, and measures from the schedule.

Runs against a real uvicorn (``start_server``) serving a tiny Starlette app. No timing is
asserted as a bound the machine could miss: every check is a count, or a lower bound on
latency that the server's own behaviour guarantees (a slow machine only makes latencies larger).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from loadtests.loadgen.__main__ import main as loadgen_main
from loadtests.loadgen.core import Payload, percentile, run_open_loop, schedule, server_timing_s
from tests.conftest import RunningServer, start_server

SLEEP_S = 0.3
GATHER = 10  # /gather holds every request until this many have arrived


class Counters:
    """What the server saw; touched only from its event loop thread (the lock is for the test's reads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrived = 0
        self.waiting = 0
        self.max_waiting = 0
        self.event: asyncio.Event | None = None


@pytest.fixture(scope="module")
def tiny() -> Iterator[tuple[RunningServer, Counters]]:
    counters = Counters()

    async def sleep(request: Request) -> JSONResponse:
        await request.body()
        with counters.lock:
            counters.arrived += 1
        await asyncio.sleep(SLEEP_S)
        return JSONResponse({"ok": True})

    async def gather(request: Request) -> JSONResponse:
        """Answer nobody until GATHER requests wait at once (503 after 20 s as a safety net)."""
        await request.body()
        if counters.event is None:
            counters.event = asyncio.Event()
        with counters.lock:
            counters.arrived += 1
            counters.waiting += 1
            counters.max_waiting = max(counters.max_waiting, counters.waiting)
            if counters.waiting >= GATHER:
                counters.event.set()
        try:
            await asyncio.wait_for(counters.event.wait(), 20)
        except TimeoutError:
            return JSONResponse({"error": "not gathered"}, status_code=503)
        return JSONResponse({"ok": True})

    async def fail(request: Request) -> JSONResponse:
        return JSONResponse({"error": "no"}, status_code=503 if request.query_params.get("n") == "1" else 429)

    app = Starlette(
        routes=[
            Route("/sleep", sleep, methods=["POST"]),
            Route("/gather", gather, methods=["POST"]),
            Route("/fail", fail, methods=["POST"]),
        ]
    )
    running = start_server(app)
    yield running, counters
    running.stop()


def _reset(counters: Counters) -> None:
    with counters.lock:
        counters.arrived = counters.waiting = counters.max_waiting = 0
        counters.event = None


def test_schedule_is_rate_times_duration() -> None:
    offsets = schedule(7.0, 2.0)
    assert len(offsets) == 14
    assert offsets[0] == 0.0 and offsets[1] == pytest.approx(1 / 7)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0


async def test_sends_rate_times_duration_and_latency_includes_the_server(tiny) -> None:
    server, counters = tiny
    _reset(counters)
    rate, duration, warmup = 10.0, 2.0, 0.5
    run = await run_open_loop(
        server.url, [Payload("/sleep", b"{}", videos=2)], rate=rate, duration_s=duration, warmup_s=warmup
    )
    summary = run.summary()

    assert abs(len(run.samples) - rate * duration) <= 1
    assert counters.arrived == len(run.samples)  # the server saw every request the generator counted
    assert summary["warmup"] == round(rate * warmup) and summary["measured"] == summary["sent"] - summary["warmup"]
    assert summary["ok"] == summary["measured"] and summary["errors"] == {}
    assert all(s.latency_s >= SLEEP_S for s in run.samples)  # from the schedule, through the server's sleep
    assert all(s.sent_s >= s.scheduled_s for s in run.samples)
    # each request sleeps 0.3 s and one starts every 0.1 s: an open loop has about three at once
    assert summary["max_in_flight"] >= 2
    for key in ("offered_rps", "achieved_rps", "achieved_videos_per_s", "latency_ms", "send_lag_ms", "errors"):
        assert key in summary
    assert set(summary["latency_ms"]) >= {"p50", "p90", "p99"}
    assert summary["latency_ms"]["p50"] >= 1000 * SLEEP_S
    assert summary["achieved_videos_per_s"] == pytest.approx(2 * summary["achieved_rps"])
    assert 0 < summary["achieved_rps"] <= rate  # successes over at least the scheduled span: never above offered


async def test_sends_on_schedule_while_answers_are_held(tiny) -> None:
    """A closed loop (or a throttled pool) would never have GATHER requests waiting at once and get 503s."""
    server, counters = tiny
    _reset(counters)
    rate = 20.0
    run = await run_open_loop(server.url, [Payload("/gather", b"{}")], rate=rate, duration_s=GATHER / rate)
    assert len(run.samples) == GATHER
    assert counters.max_waiting == GATHER
    assert all(s.status == "200" for s in run.samples)
    # nobody was answered before the last request was scheduled, and latency counts from each one's schedule
    last = max(s.scheduled_s for s in run.samples)
    for s in run.samples:
        assert s.done_s >= last
        assert s.latency_s >= last - s.scheduled_s


async def test_errors_are_counted_by_status(tiny) -> None:
    server, _ = tiny
    payloads = [Payload("/fail?n=1", b"{}"), Payload("/fail?n=2", b"{}"), Payload("/missing", b"{}")]
    run = await run_open_loop(server.url, payloads, rate=20.0, duration_s=0.3)
    summary = run.summary()
    assert summary["errors"] == {"503": 2, "429": 2, "404": 2}
    assert summary["ok"] == 0 and summary["achieved_rps"] == 0.0


async def test_connection_errors_are_counted() -> None:
    from tests.conftest import free_port

    run = await run_open_loop(f"http://127.0.0.1:{free_port()}", [Payload("/x", b"{}")], rate=10.0, duration_s=0.3)
    assert run.summary()["errors"] == {"connect_error": 3}


def test_command_line_writes_json(tiny, tmp_path) -> None:
    server, _ = tiny
    out = tmp_path / "run.json"
    loadgen_main(
        [
            "--url",
            server.url,
            "--workload",
            "cache-hit",
            "--rate",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--out",
            str(out),
            "--no-plot",
        ]
    )
    record = json.loads(out.read_text())
    (run,) = record["runs"]
    assert record["workload"] == "cache-hit"
    assert run["summary"]["sent"] == 4 and len(run["samples"]) == 4
    assert run["summary"]["errors"] == {"404": 4}  # the tiny server has no /v1/score: counted, not hidden


def test_server_timing_is_read_from_the_app_entry():
    assert server_timing_s("cache;desc=miss, app;dur=12.5") == pytest.approx(0.0125)
    assert (
        server_timing_s("app;desc=x") is None and server_timing_s(None) is None and server_timing_s("db;dur=3") is None
    )
