"""The gateway against its peers, side by side, under one load generator: writes loadtests/RESULTS.md.

Servers, each started as a subprocess on a free port, measured, then stopped, in this order:
(a) ``naive``: plain FastAPI, one video at a time (``peer_servers/naive.py``); (b) ``litserve``:
LitServe with batching (``peer_servers/lit.py``); (c) ``ray``: Ray Serve with ``@serve.batch``
(``peer_servers/ray_serve.py``); (d) ``gateway``: ``vrs serve`` with its defaults (in-process
backend), sent ``cache: "bypass"``; then ``gateway-cached``: the same running gateway, sent the
same bodies with ``cache: "use"`` after one pass to fill the cache (every measured request hits).

All get the same pre-encoded bodies (``loadgen.workloads``), the same ``signal`` forward and the
same preprocessing (``peer_servers/common.py``), the same torch thread count and
``OMP_WAIT_POLICY``. Per workload and server: a sequential warm-up (not measured); a
saturation step (an open-loop burst offered faster than any server here can go; throughput =
successes / (last answer - first scheduled start)); then an open-loop step at a common rate,
half the naive server's saturation throughput, for p50/p99.

Run: ``.venv/bin/python loadtests/peers.py [--quick]`` (about 15 minutes on 2 busy cores; --quick, pointwise
only with a few requests per step, about 4).
Raw results: ``loadtests/results/peers.json``; plots and RESULTS.md: ``loadtests/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import torch  # noqa: E402

from loadtests.loadgen.core import Payload, RunResult, run_open_loop  # noqa: E402
from loadtests.loadgen.plots import plot_peers  # noqa: E402
from loadtests.loadgen.workloads import Workload, grpo, pointwise_mixed, with_cache  # noqa: E402
from loadtests.peers_report import write_results  # noqa: E402


@dataclass(frozen=True)
class Server:
    """How to start one server and where it listens."""

    name: str
    argv: list[str]  # "{port}" is replaced
    ready_path: str
    path: str | None = None  # send every body here instead of the workload's own path (LitServe: one path)
    cache: str | None = None  # rewrite the bodies' cache field (gateway rows)
    startup_s: float = 120.0


PY = sys.executable
SERVERS = [
    Server("naive", [PY, "-m", "loadtests.peer_servers.naive", "--port", "{port}"], "/healthz"),
    Server("litserve", [PY, "-m", "loadtests.peer_servers.lit", "--port", "{port}"], "/healthz", path="/predict"),
    Server("ray", [PY, "-m", "loadtests.peer_servers.ray_serve", "--port", "{port}"], "/healthz", startup_s=300.0),
    Server(
        "gateway",
        [PY, "-m", "service.cli", "serve", "--port", "{port}", "--log-level", "warning"],
        "/readyz",
        cache="bypass",
    ),
]
CACHED = Server("gateway-cached", [], "/readyz", cache="use")


@dataclass(frozen=True)
class Plan:
    """Per workload: sequential warm-up requests, the saturation burst (rate, seconds), the common step's length."""

    workload: Workload
    warm: int
    burst_rate: float
    burst_s: float
    common_s: float
    common_warmup_s: float


def plans(quick: bool) -> list[Plan]:
    point = pointwise_mixed()
    if quick:  # a smoke run of every server: pointwise only, a few requests per step
        return [Plan(point, 1, 4.0, 1.0, 8.0, 1.0)]
    return [Plan(point, 4, 5.0, 4.0, 40.0, 5.0), Plan(grpo("mp4"), 1, 1.0, 4.0, 60.0, 0.0)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server: Server, threads: int) -> tuple[subprocess.Popen, str]:
    """Start ``server`` in its own process group and wait until its readiness path answers 200."""
    port = free_port()
    env = os.environ | {"VRS_INFERENCE_THREADS": str(threads), "PYTHONPATH": str(ROOT), "VRS_PORT": str(port)}
    log = open(ROOT / "loadtests" / "results" / f"{server.name}.log", "w")
    argv = [a.replace("{port}", str(port)) for a in server.argv]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + server.startup_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(url + server.ready_path, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{server.name} not ready after {server.startup_s:g} s; see {log.name}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (its workers too), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
    time.sleep(2)  # let the ports and the CPU settle before the next server


def payloads_for(server: Server, workload: Workload) -> list[Payload]:
    if server.cache is not None:
        workload = with_cache(workload, server.cache)
    return [replace(p, path=server.path) if server.path else p for p in workload.payloads]


def warm(url: str, payloads: list[Payload], count: int) -> list[str]:
    """Sequential, unmeasured requests (first forwards, allocator, caches); returns their statuses."""
    statuses = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for i in range(count):
            p = payloads[i % len(payloads)]
            statuses.append(
                str(client.post(p.path, content=p.body, headers={"content-type": p.content_type}).status_code)
            )
    return statuses


def measure(url: str, payloads: list[Payload], rate: float, seconds: float, warmup_s: float) -> dict:
    load_before = os.getloadavg()[0]
    run: RunResult = asyncio.run(run_open_loop(url, payloads, rate=rate, duration_s=seconds, warmup_s=warmup_s))
    return {"run": run, "load_before": load_before, "load_after": os.getloadavg()[0]}


def show(name: str, step: str, m: dict) -> None:
    s = m["run"].summary()
    lat = s["latency_ms"]
    print(
        f"  {name:15} {step:10} offered {s['offered_rps']:.3g}/s ok {s['ok']}/{s['measured']} err {s['errors'] or '-'} "
        f"achieved {s['achieved_rps']:.3g} req/s {s['achieved_videos_per_s']:.3g} videos/s "
        f"p50 {lat['p50'] / 1000:.2f} s p99 {lat['p99'] / 1000:.2f} s load {m['load_before']:.1f}->{m['load_after']:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps: a smoke run, figures not for RESULTS.md")
    parser.add_argument("--servers", default="naive,litserve,ray,gateway", help="comma-separated subset, in order")
    parser.add_argument("--common-fraction", type=float, default=0.5, help="common rate = this x naive saturation")
    parser.add_argument("--results-md", type=Path, default=None, help="default loadtests/RESULTS.md (quick: results/)")
    args = parser.parse_args()
    (ROOT / "loadtests" / "results").mkdir(parents=True, exist_ok=True)
    started = time.time()
    threads = torch.get_num_threads()  # torch's default here; every server is given the same
    load_start = os.getloadavg()
    todo = plans(args.quick)
    servers = [s for name in args.servers.split(",") for s in SERVERS if s.name == name]
    results: dict[str, dict[str, dict]] = {p.workload.name: {} for p in todo}
    common_rate: dict[str, float] = {}
    failures: dict[str, str] = {}

    for server in servers:
        print(f"{server.name}: starting", flush=True)
        try:
            proc, url = start(server, threads)
        except RuntimeError as exc:
            failures[server.name] = str(exc)
            print(f"{server.name}: FAILED to start: {exc}", flush=True)
            continue
        try:
            rows = [server, CACHED] if server.name == "gateway" else [server]
            for row in rows:
                for plan in todo:
                    name = plan.workload.name
                    payloads = payloads_for(row, plan.workload)
                    statuses = warm(url, payloads, len(payloads) if row is CACHED else plan.warm)
                    if set(statuses) != {"200"}:
                        failures[f"{row.name} / {name}"] = (
                            f"warm-up answered {statuses}; see loadtests/results/{server.name}.log"
                        )
                        print(f"  {row.name}: warm-up failed: {statuses}", flush=True)
                        continue
                    sat = measure(url, payloads, plan.burst_rate, plan.burst_s, 0.0)
                    show(row.name, "saturation", sat)
                    if name not in common_rate:  # the first server measured (naive) sets it
                        common_rate[name] = args.common_fraction * sat["run"].summary()["achieved_rps"]
                    common = measure(url, payloads, common_rate[name], plan.common_s, plan.common_warmup_s)
                    show(row.name, "common", common)
                    results[name][row.name] = {"warm_statuses": statuses, "saturation": sat, "common": common}
        finally:
            stop(proc)

    record = {
        "command": " ".join([".venv/bin/python", "loadtests/peers.py", *sys.argv[1:]]),
        "quick": args.quick,
        "machine": machine(load_start),
        "versions": versions(),
        "torch_threads": threads,
        "elapsed_s": time.time() - started,
        "common_rate": common_rate,
        "failures": failures,
        "plans": [
            {
                "workload": p.workload.name,
                "description": p.workload.description,
                "videos_per_request": p.workload.videos_per_request,
                "warm": p.warm,
                "burst_rate": p.burst_rate,
                "burst_s": p.burst_s,
                "common_s": p.common_s,
                "common_warmup_s": p.common_warmup_s,
            }
            for p in todo
        ],
        "results": {
            w: {
                s: {"warm_statuses": r["warm_statuses"]}
                | {
                    step: {
                        "summary": r[step]["run"].summary(),
                        "load_before": r[step]["load_before"],
                        "load_after": r[step]["load_after"],
                    }
                    for step in ("saturation", "common")
                }
                for s, r in rows.items()
            }
            for w, rows in results.items()
        },
    }
    out_dir = ROOT / "loadtests" / ("results" if args.quick else "")
    for plan in todo:
        rows = results[plan.workload.name]
        plot_peers(
            {s: r["common"]["run"] for s, r in rows.items()},
            {s: r["saturation"]["run"].summary()["achieved_videos_per_s"] for s, r in rows.items()},
            plan.workload.description,
            out_dir / f"peers-{plan.workload.name}.png",
        )
    raw = {
        w: {s: {step: r[step]["run"].to_json() for step in ("saturation", "common")} for s, r in rows.items()}
        for w, rows in results.items()
    }
    (ROOT / "loadtests" / "results" / "peers.json").write_text(json.dumps(record | {"raw": raw}, indent=1))
    md = args.results_md or out_dir / "RESULTS.md"
    write_results(record, md)
    print(f"wrote {md} and loadtests/results/peers.json in {record['elapsed_s']:.0f} s", flush=True)


def machine(load_start: tuple[float, float, float]) -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), "0"
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024**2, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }


def versions() -> dict:
    out = {}
    for package in ("torch", "litserve", "ray", "fastapi", "uvicorn", "httpx", "av", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


if __name__ == "__main__":
    main()
