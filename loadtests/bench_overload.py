"""Overload: goodput, admitted latency, shedding and recovery of two gateway versions under 2x capacity.

Each version (a checkout: the base commit and this tree) runs as ``vrs serve`` in its own
subprocess with default settings and the ``signal`` model, one after the other, under the same
load generator (``loadgen``, open loop) and the same bodies: ``/v1/score`` of one small clip
(17x120x160 mp4, a pool of distinct clips, ``cache: "bypass"``). Per version:

1. capacity: a closed loop of ``--concurrency`` clients for ``--capacity-s`` seconds (answers/s);
2. overload: an open loop at 2x the *base* version's capacity (the same offered rate for both)
   for ``--overload-s`` seconds; goodput = 200 answers completed per second while the load is
   offered (the first ``--ramp-s`` seconds left out; answers after the schedule ends are the
   drain, not goodput), against the version's own capacity; admitted p50/p99; shed rate (429); Retry-After values;
   RSS (``/proc/<pid>/status``) before, every 0.25 s during (median, p90, peak) and after; the
   server's own queueing estimate (``vrs_queue_wait_estimate_seconds`` from ``/metrics``) each second;
3. recovery: from the end of the overload schedule, one probe a 0.25 s until a probe is answered
   200 within max(3x the unloaded p50, 0.5 s); recovery = that probe's start - end of the schedule.

CPUs: the load generator runs on one CPU and each server on the others (``sched_setaffinity``),
so a CPU-starved generator cannot send late and charge its own delay to the server (on 2 cores,
sharing, the open loop sent in bursts and "latency" was mostly the generator's). Latency is
reported twice: from the scheduled send to the answer (client side, open-loop honest), and the
server's own ``Server-Timing: app;dur`` (arrival at the app to the answer).

Run (base checkout first: ``git worktree add /tmp/base15 3131467``):
``.venv/bin/python loadtests/bench_overload.py --base /tmp/base15`` (about 7 minutes on 2 cores).
Writes ``loadtests/results/overload.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402

from loadtests.loadgen.core import Payload, percentile, run_open_loop  # noqa: E402
from tests import videos  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def payloads(n: int = 16) -> list[Payload]:
    out = []
    for i in range(n):
        clip = videos.stamp(videos.moving_scene(17, 120, 160, speed=1.0 + 0.25 * i))
        data = base64.b64encode(videos.encode(clip, "mp4")).decode()
        body = {"items": [{"video": {"data": data}}], "cache": "bypass"}
        out.append(Payload("/v1/score", json.dumps(body).encode()))
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_split() -> tuple[set[int], set[int]]:
    """(load generator's CPUs, servers' CPUs): one CPU for the generator, the rest for the server."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus), set(cpus))


CLIENT_CPUS, SERVER_CPUS = cpu_split()


def start(checkout: Path, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(checkout), "VRS_PORT": str(port)}
    code = (
        "import service, sys; assert service.__file__.startswith(sys.argv[1]), service.__file__; "
        "from service.cli import main; main(['serve', '--log-level', 'warning'])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(checkout)],
        cwd=checkout,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.sched_setaffinity(0, SERVER_CPUS),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


async def post(client: httpx.AsyncClient, p: Payload) -> tuple[int, float]:
    t = time.perf_counter()
    r = await client.post(p.path, content=p.body, headers={"content-type": p.content_type})
    return r.status_code, time.perf_counter() - t


async def capacity(url: str, bodies: list[Payload], concurrency: int, seconds: float) -> dict:
    """Closed loop: ``concurrency`` clients send back to back; answers/s over the window."""
    async with httpx.AsyncClient(base_url=url, timeout=180) as client:
        solo = [(await post(client, bodies[i % len(bodies)]))[1] for i in range(8)]  # warm-up + unloaded latency
        done = Counter()
        stop = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                status, _ = await post(client, bodies[i % len(bodies)])
                done[status] += 1
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"rps": done[200] / elapsed, "statuses": dict(done), "unloaded_p50_s": statistics.median(solo[3:])}


async def recovery(url: str, bodies: list[Payload], since: float, threshold_s: float, limit_s: float = 120) -> float:
    """Seconds from ``since`` (perf_counter) until a probe starts that is answered 200 within ``threshold_s``."""
    async with httpx.AsyncClient(base_url=url, timeout=180) as client:
        i = 0
        while time.perf_counter() - since < limit_s:
            started = time.perf_counter()
            status, latency = await post(client, bodies[i % len(bodies)])
            if status == 200 and latency <= threshold_s:
                return started - since
            i += 1
            await asyncio.sleep(max(0.0, 0.25 - (time.perf_counter() - started)))
    return float("nan")


async def overload(url: str, pid: int, bodies: list[Payload], rate: float, seconds: float) -> tuple[dict, float]:
    """The open loop at ``rate``; meanwhile the server's RSS every 0.25 s and, once a second, its
    own estimate of the queueing time (``vrs_queue_wait_estimate_seconds``; None where the version
    has no such metric), each as (seconds since the start, value)."""
    rss: list[tuple[float, float]] = []
    estimates: list[tuple[float, float | None]] = []
    sampling = True
    t0 = time.perf_counter()

    async def sample_rss() -> None:
        while sampling:
            rss.append((time.perf_counter() - t0, rss_mb(pid)))
            await asyncio.sleep(0.25)

    async def sample_estimate() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            while sampling:
                started = time.perf_counter()
                try:
                    text = (await client.get("/metrics")).text
                    found = re.search(r"^vrs_queue_wait_estimate_seconds (\S+)$", text, re.MULTILINE)
                    estimates.append((started - t0, float(found.group(1)) if found else None))
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))

    samplers = [asyncio.create_task(sample_rss()), asyncio.create_task(sample_estimate())]
    run_task = asyncio.create_task(run_open_loop(url, bodies, rate=rate, duration_s=seconds, timeout_s=180))
    await asyncio.sleep(seconds)
    schedule_end = t0 + seconds
    run = await run_task
    sampling = False
    await asyncio.gather(*samplers)
    return {"run": run, "rss_mb": rss, "wait_estimate_s": estimates}, schedule_end


def rss_under_load(series: list[tuple[float, float]], ramp_s: float, overload_s: float) -> dict:
    """RSS while the load is offered (after the ramp): median, p90, and the medians of its first
    and second halves (equal halves: no growth with time)."""
    loaded = [(t, mb) for t, mb in series if ramp_s <= t <= overload_s]
    middle = (ramp_s + overload_s) / 2
    values = sorted(mb for _, mb in loaded)
    return {
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "first_half_median": statistics.median(mb for t, mb in loaded if t < middle),
        "second_half_median": statistics.median(mb for t, mb in loaded if t >= middle),
    }


def measure(name: str, checkout: Path, bodies: list[Payload], args, rate: float | None) -> dict:
    port = free_port()
    log = ROOT / "loadtests" / "results" / f"overload-{name}.log"
    proc = start(checkout, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        cap = asyncio.run(capacity(url, bodies, args.concurrency, args.capacity_s))
        rate = rate or 2 * cap["rps"]
        rss_before = rss_mb(proc.pid)

        async def overload_then_recover():
            ov, schedule_end = await overload(url, proc.pid, bodies, rate, args.overload_s)
            # the open loop returns once every answer is in; recovery counts from the schedule's end
            rec = await recovery(url, bodies, schedule_end, max(0.5, 3 * cap["unloaded_p50_s"]))
            return ov, rec

        ov, rec = asyncio.run(overload_then_recover())
        time.sleep(2)
        rss_after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    run = ov["run"]
    s = run.summary()
    good = sum(1 for x in run.samples if x.status == "200" and args.ramp_s <= x.done_s <= args.overload_s)
    goodput = good / (args.overload_s - args.ramp_s)
    retry_after = Counter(x.retry_after for x in run.samples if x.status == "429")
    latencies = sorted(x.latency_s for x in run.samples if x.status == "200")
    in_server = sorted(x.server_s for x in run.samples if x.status == "200" and x.server_s is not None)
    estimates = [e for _, e in ov["wait_estimate_s"] if e is not None]
    return {
        "version": name,
        "checkout": str(checkout),
        "capacity_rps": cap["rps"],
        "capacity_statuses": cap["statuses"],
        "unloaded_p50_ms": 1000 * cap["unloaded_p50_s"],
        "offered_rps": rate,
        "goodput_rps": goodput,
        "goodput_vs_capacity": goodput / cap["rps"],
        "achieved_rps_with_drain": s["achieved_rps"],
        "sent": s["sent"],
        "ok": s["ok"],
        "errors": s["errors"],
        "shed_rate": s["errors"].get("429", 0) / max(1, s["measured"]),
        "admitted_p50_ms": 1000 * percentile(latencies, 50),
        "admitted_p99_ms": 1000 * percentile(latencies, 99),
        "admitted_server_p50_ms": 1000 * percentile(in_server, 50) if in_server else float("nan"),
        "admitted_server_p99_ms": 1000 * percentile(in_server, 99) if in_server else float("nan"),
        "retry_after": dict(sorted(retry_after.items(), key=lambda kv: float(kv[0] or 0))),
        "rss_mb": {"before": rss_before, "peak": max(mb for _, mb in ov["rss_mb"]), "after": rss_after},
        "rss_growth": max(mb for _, mb in ov["rss_mb"]) / rss_before - 1,
        "rss_under_load_mb": rss_under_load(ov["rss_mb"], args.ramp_s, args.overload_s),
        "wait_estimate_max_s": max(estimates) if estimates else None,
        "rss_series_mb": ov["rss_mb"],
        "wait_estimate_series_s": ov["wait_estimate_s"],
        "recovery_s": rec,
        "samples": [vars(x) for x in run.samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout of the base commit (git worktree)")
    parser.add_argument("--new", type=Path, default=ROOT, help="checkout under test (default: this tree)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients measuring capacity")
    parser.add_argument("--capacity-s", type=float, default=20.0)
    parser.add_argument("--overload-s", type=float, default=90.0)
    parser.add_argument("--ramp-s", type=float, default=5.0, help="first seconds of the overload left out of goodput")
    args = parser.parse_args()
    os.sched_setaffinity(0, CLIENT_CPUS)
    (ROOT / "loadtests" / "results").mkdir(parents=True, exist_ok=True)
    bodies = payloads()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    base = measure("base", args.base.resolve(), bodies, args, None)
    new = measure("new", args.new.resolve(), bodies, args, base["offered_rps"])
    record = {
        "started": started,
        "load_average": [load_before, os.getloadavg()],
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": [base, new],
    }
    (ROOT / "loadtests" / "results" / "overload.json").write_text(json.dumps(record, indent=1, default=str))

    print(
        f"\nbench_overload, {started}; load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; "
        f"offered {base['offered_rps']:.1f} req/s for {args.overload_s:g} s; load generator on CPUs "
        f"{sorted(CLIENT_CPUS)}, servers on {sorted(SERVER_CPUS)}\n"
    )
    print(
        "| version | capacity req/s | goodput req/s | goodput / capacity | admitted p50 / p99 ms | in server p50 / p99 ms "
        "| shed (429) | other errors | Retry-After values (count) | RSS MB before -> peak -> after | recovery s |"
    )
    print("| --- " * 11 + "|")
    for r in (base, new):
        other = {k: v for k, v in r["errors"].items() if k != "429"} or "-"
        ra = ", ".join(f"{k}: {v}" for k, v in r["retry_after"].items()) or "-"
        rss = r["rss_mb"]
        print(
            f"| {r['version']} | {r['capacity_rps']:.1f} | {r['goodput_rps']:.1f} | {r['goodput_vs_capacity']:.0%} | "
            f"{r['admitted_p50_ms']:.0f} / {r['admitted_p99_ms']:.0f} | "
            f"{r['admitted_server_p50_ms']:.0f} / {r['admitted_server_p99_ms']:.0f} | {r['shed_rate']:.0%} | {other} | {ra} | "
            f"{rss['before']:.0f} -> {rss['peak']:.0f} -> {rss['after']:.0f} | {r['recovery_s']:.1f} |"
        )
    print()
    for r in (base, new):
        under, estimate = r["rss_under_load_mb"], r["wait_estimate_max_s"]
        said = f"{estimate:.1f} s" if estimate is not None else "- (no such metric)"
        print(
            f"- {r['version']}: RSS while the load is offered, median {under['median']:.0f} MB (first half "
            f"{under['first_half_median']:.0f}, second half {under['second_half_median']:.0f}), p90 {under['p90']:.0f} MB; "
            f"the server's own queueing estimate at most {said} (series in overload.json)"
        )


if __name__ == "__main__":
    main()
