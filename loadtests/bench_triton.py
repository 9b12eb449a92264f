"""Benchmark scoring through the gateway (Triton backend) against direct tritonclient calls to the same Triton.

One run starts a local Triton (``service.triton_server.LocalTriton`` over a generated
repository) and a gateway subprocess (``vrs serve`` with ``VRS_BACKEND=triton``), then sends the
same clip (a tiny one and a rollout-sized one), one video per request, in closed loops of ``concurrency`` workers:

- ``gateway``: ``POST /v1/score`` with raw frames (base64 ``.npy``, JSON), so no video decode is
  measured; the gateway parses the npy, samples/resizes (the clip is already at the model's
  resolution, so the resize is a no-op size check), micro-batches, and makes one Triton gRPC
  request per batch;
- ``direct``: ``tritonclient.grpc.aio`` ``infer`` of the same frames as a [1,T,H,W,3] batch.

The direct client uses the gateway's gRPC channel arguments, so both paths use one gRPC setup.
Request payloads are built once before timing in both paths (client-side encoding excluded).
The two paths run interleaved in rounds (gateway-direct, direct-gateway, ...) so both see the same
machine state. Latency p50/p99 are per request over all rounds; the mean batch size is
Triton's ``inference_count / execution_count`` over the phase (Triton statistics API).

Run: ``.venv/bin/python loadtests/bench_triton.py [--quick]``. Results go to
``loadtests/results/bench_triton.json``; a Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.grpc.aio as grpcaio  # noqa: E402

from models.registry import builtin_models  # noqa: E402
from models.triton_repo import TritonOptions, write_python_repo  # noqa: E402
from service.backends.base import FrameBatch  # noqa: E402
from service.backends.triton import CHANNEL_ARGS, to_inputs  # noqa: E402
from service.triton_server import LocalTriton  # noqa: E402
from tests import videos  # noqa: E402
from tests.conftest import free_port  # noqa: E402

DEFAULT_OUT = ROOT / "loadtests" / "results" / "bench_triton.json"
# A Wan2.1-1.3B rollout (33x240x416) at the signal model's resolution, and a tiny clip whose
# forward is cheap, so the per-request overhead of each path shows.
SHAPES = {"rollout": (33, 192, 336), "tiny": (9, 64, 64)}


def triton_counters(url: str) -> tuple[int, int, int]:
    """(requests, inferences, executions) of the signal model."""
    time.sleep(0.2)  # Triton updates its statistics just after it answers
    with grpcclient.InferenceServerClient(url) as client:
        (s,) = client.get_inference_statistics("signal").model_stats
    return s.inference_stats.success.count, s.inference_count, s.execution_count


async def closed_loop(send, requests: int, concurrency: int) -> tuple[list[float], float]:
    """``concurrency`` workers send ``requests`` in total; returns per-request latencies (s) and wall time."""
    latencies: list[float] = []
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:
            start = time.perf_counter()
            await send()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def start_gateway(triton_url: str, port: int, max_wait_ms: float | None) -> subprocess.Popen:
    env = dict(os.environ, VRS_BACKEND="triton", VRS_TRITON_URL=triton_url)
    if max_wait_ms is not None:
        env["VRS_MAX_WAIT_MS"] = str(max_wait_ms)
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("gateway did not become ready")
        time.sleep(0.2)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def payloads(shape: tuple[int, int, int]) -> tuple[str, list]:
    """The same clip as a gateway JSON body and as Triton inputs, built once."""
    clip = videos.moving_scene(*shape)
    body = json.dumps({"items": [{"video": {"frames": base64.b64encode(videos.npy_bytes(clip)).decode(), "fps": 16}}]})
    return body, to_inputs(FrameBatch.assemble([clip], [""]))


async def run(args: argparse.Namespace) -> dict:
    options = TritonOptions(max_queue_delay_us=args.queue_delay_us)
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        repo = write_python_repo(Path(tmp) / "repo", {"signal": builtin_models()["signal"]}, options)
        triton = LocalTriton(repo, free_port(), free_port(), free_port()).start()
        port = free_port()
        gateway = start_gateway(triton.grpc_url, port, args.max_wait_ms)
        results: dict[str, dict] = {}
        try:
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http,
                grpcaio.InferenceServerClient(triton.grpc_url, channel_args=CHANNEL_ARGS) as direct,
            ):
                for clip_name, concurrency in [(c, n) for c in args.clips for n in args.concurrency]:
                    body, inputs = payloads(SHAPES[clip_name])

                    async def via_gateway(body=body) -> None:
                        response = await http.post(
                            "/v1/score", content=body, headers={"content-type": "application/json"}
                        )
                        response.raise_for_status()

                    async def via_direct(inputs=inputs) -> None:
                        result = await direct.infer("signal", inputs)
                        assert result.as_numpy("SCORES").shape == (1, 6)

                    paths = {"gateway": via_gateway, "direct": via_direct}
                    for send in paths.values():  # warm-up
                        await closed_loop(send, 2 * concurrency, concurrency)
                    acc = {name: {"lat": [], "wall": 0.0, "n": 0, "req": 0, "inf": 0, "exe": 0} for name in paths}
                    for round_ in range(args.rounds):
                        for name, send in list(paths.items())[:: 1 if round_ % 2 == 0 else -1]:
                            r0, i0, e0 = triton_counters(triton.grpc_url)
                            lat, wall = await closed_loop(send, args.requests, concurrency)
                            r1, i1, e1 = triton_counters(triton.grpc_url)
                            a = acc[name]
                            a["lat"] += lat
                            a["wall"] += wall
                            a["n"] += len(lat)
                            a["req"] += r1 - r0
                            a["inf"] += i1 - i0
                            a["exe"] += e1 - e0
                    for name, a in acc.items():
                        results[f"{clip_name}/{name}@{concurrency}"] = {
                            "clip": clip_name,
                            "path": name,
                            "concurrency": concurrency,
                            "requests": a["n"],
                            "req_per_s": a["n"] / a["wall"],
                            "p50_ms": 1000 * pct(a["lat"], 0.50),
                            "p99_ms": 1000 * pct(a["lat"], 0.99),
                            "mean_ms": 1000 * statistics.fmean(a["lat"]),
                            "triton_requests": a["req"],
                            "triton_mean_batch": a["inf"] / max(a["exe"], 1),
                        }
        finally:
            gateway.terminate()
            gateway.wait(30)
            triton.stop()
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "clips": {name: {"frames": t, "height": h, "width": w} for name, (t, h, w) in SHAPES.items()},
        "settings": {
            "rounds": args.rounds,
            "requests_per_round": args.requests,
            "triton_max_queue_delay_us": args.queue_delay_us,
            "gateway_max_wait_ms": args.max_wait_ms,
        },
        "results": results,
    }


def table(report: dict) -> str:
    lines = [
        "| clip | concurrency | path | req/s | p50 ms | p99 ms | Triton requests | Triton mean batch | p50 ratio | req/s ratio |",
        "| --- | --: | --- | --: | --: | --: | --: | --: | --: | --: |",
    ]
    res = report["results"]
    for key, r in res.items():
        direct = res[f"{r['clip']}/direct@{r['concurrency']}"]
        t, h, w = SHAPES[r["clip"]]
        lines.append(
            f"| {r['clip']} {t}x{h}x{w} | {r['concurrency']} | {r['path']} | {r['req_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['triton_requests']} of {r['requests']} | {r['triton_mean_batch']:.2f} | "
            f"{r['p50_ms'] / direct['p50_ms']:.2f}x | {r['req_per_s'] / direct['req_per_s']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", nargs="+", choices=sorted(SHAPES), default=["tiny", "rollout"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=32, help="requests per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-delay-us", type=int, default=TritonOptions.max_queue_delay_us)
    parser.add_argument(
        "--max-wait-ms", type=float, default=None, help="gateway micro-batch wait (default: the spec's)"
    )
    parser.add_argument("--quick", action="store_true", help="16 requests, 1 round")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 16, 1
    report = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
