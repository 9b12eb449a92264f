"""Benchmark the cache-hit path of ``/v1/score`` against a bare FastAPI endpoint.

Two servers run under uvicorn in this process, one after the other, on the same port kind:

- ``bare``: a FastAPI app with one route that reads the request body and returns a fixed
  JSON answer of the same shape as ours: the floor any Python HTTP service pays.
- ``gateway``: the real gateway (``service.api.create_app``), L1 cache, whose cache has been
  warmed with the benchmark's videos, so every measured request is a hit.

The load generator runs in a separate process (its own interpreter, so it does not share
the servers' GIL): a closed loop of ``--concurrency`` clients sending ``--requests``
requests, rotating over the same videos. Payloads: an mp4 upload (multipart, the shape of
a 33x240x416 rollout) and raw frames (JSON, base64 .npy of a 17x240x416 clip). Rounds
alternate bare/gateway and the medians are reported. The gateway's own counters
(``engine.stats``) are read before and after each gateway round to show hits decode
nothing and run no inference.

Run: ``.venv/bin/python loadtests/bench_cache.py [--quick]``. Results: ``loadtests/results/bench_cache.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from service.api import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from tests import videos  # noqa: E402
from tests.conftest import start_server  # noqa: E402

N_VIDEOS = 8


def make_payloads(kind: str) -> list[dict]:
    """httpx request kwargs for N_VIDEOS distinct videos, bodies pre-encoded (encoding is not measured)."""
    out = []
    for i in range(N_VIDEOS):
        if kind == "mp4":
            data = videos.encode(videos.moving_scene(33, 240, 416, speed=1.0 + i))
            request = httpx.Request("POST", "http://x/v1/score", files={"video": ("clip.mp4", data, "video/mp4")})
            out.append({"content": request.read(), "headers": {"content-type": request.headers["content-type"]}})
        else:
            npy = videos.npy_bytes(videos.moving_scene(17, 240, 416, speed=1.0 + i))
            ref = {"frames": base64.b64encode(npy).decode(), "fps": 16}
            body = json.dumps({"items": [{"video": ref}]}).encode()
            out.append({"content": body, "headers": {"content-type": "application/json"}})
    return out


def bare_app(answer: dict) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/score")
    async def score(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(answer)

    return app


def _load(url: str, bodies: list[dict], concurrency: int, requests: int, queue: mp.Queue) -> None:
    """Child process: closed-loop load; puts per-request latencies (s) and the wall time."""

    async def main() -> None:
        latencies: list[float] = []
        errors = 0
        counter = iter(range(requests))
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def worker() -> None:
                nonlocal errors
                for i in counter:
                    start = time.perf_counter()
                    response = await client.post("/v1/score", **bodies[i % len(bodies)])
                    latencies.append(time.perf_counter() - start)
                    if response.status_code != 200 or not response.json()["results"][0].get("cached", True):
                        errors += 1

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            queue.put({"latencies": latencies, "wall_s": time.perf_counter() - start, "errors": errors})

    asyncio.run(main())


def run_load(url: str, bodies: list[dict], concurrency: int, requests: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_load, args=(url, bodies, concurrency, requests, queue))
    child.start()
    result = queue.get(timeout=600)
    child.join()
    lat = sorted(result["latencies"])
    return {
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "rps": len(lat) / result["wall_s"],
        "errors": result["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests/results/bench_cache.json")
    args = parser.parse_args()
    requests, rounds = (200, 1) if args.quick else (1000, 3)

    payloads = {kind: make_payloads(kind) for kind in ("mp4", "npy")}
    gateway = start_server(create_app(Settings(max_wait_ms=2.0)))
    with httpx.Client(base_url=gateway.url, timeout=60) as client:  # warm the cache; keep a real hit answer
        for bodies in payloads.values():
            for body in bodies:
                client.post("/v1/score", **body).raise_for_status()
        answer = client.post("/v1/score", **payloads["mp4"][0]).json()
        assert answer["results"][0]["cached"]
    bare = start_server(bare_app(answer))
    engine = gateway.app.state.engine

    table: dict[str, dict[str, list[dict]]] = {}
    for kind in ("mp4", "npy"):
        table[kind] = {"bare": [], "gateway": []}
        for _ in range(rounds):
            table[kind]["bare"].append(run_load(bare.url, payloads[kind], args.concurrency, requests))
            before = dict(engine.stats)
            measured = run_load(gateway.url, payloads[kind], args.concurrency, requests)
            measured["work_during_round"] = {
                k: engine.stats[k] - before.get(k, 0) for k in ("videos_decoded", "inferences")
            }
            table[kind]["gateway"].append(measured)
    gateway.stop()
    bare.stop()

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    summary = {}
    print(
        f"cache-hit path vs bare FastAPI; {requests} requests x {rounds} rounds, concurrency {args.concurrency}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print("| payload | server | p50 ms | p99 ms | req/s | errors | decoded / inferences during hits |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind, rows in table.items():
        for server in ("bare", "gateway"):
            r = rows[server]
            work = r[-1].get("work_during_round", "")
            work = f"{work['videos_decoded']} / {work['inferences']}" if work else "n/a"
            print(
                f"| {kind} | {server} | {med(r, 'p50_ms'):.2f} | {med(r, 'p99_ms'):.2f} | {med(r, 'rps'):.0f} | {sum(x['errors'] for x in r)} | {work} |"
            )
        summary[kind] = {
            "rps_ratio_gateway_over_bare": med(rows["gateway"], "rps") / med(rows["bare"], "rps"),
            "p50_ratio_gateway_over_bare": med(rows["gateway"], "p50_ms") / med(rows["bare"], "p50_ms"),
            "p99_ratio_gateway_over_bare": med(rows["gateway"], "p99_ms") / med(rows["bare"], "p99_ms"),
        }
        s = summary[kind]
        print(
            f"\n{kind}: gateway/bare req/s {s['rps_ratio_gateway_over_bare']:.2f}x, p50 {s['p50_ratio_gateway_over_bare']:.2f}x, p99 {s['p99_ratio_gateway_over_bare']:.2f}x\n"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"rounds": table, "summary": summary, "requests": requests, "concurrency": args.concurrency}, indent=2
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
