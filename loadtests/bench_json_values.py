"""The JSON structure limit (``service/ingest.py``: ``json_values_over``), measured on one body of
many tiny items (``{"video": {"url": ...}}`` repeated), about 100 MB by default:

1. pydantic alone, as the gateway parsed every JSON request before the limit:
   ``ScoreRequest.model_validate_json`` in a fresh process; seconds and its peak RSS growth.
2. the gateway: ``vrs serve`` in its own process (``tests.test_body_limits.ServeProcess``), the
   same body POSTed to ``/v1/score``; status, seconds and the server's peak RSS growth (VmHWM).

Run: ``.venv/bin/python loadtests/bench_json_values.py [--items 3500000]``; prints a JSON line per
part and writes ``loadtests/results/bench_json_values.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_body_limits import ServeProcess  # noqa: E402

PYDANTIC_ALONE = """
import resource, sys, time
from vrs_wire.schemas import ScoreRequest
body = sys.stdin.buffer.read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    ScoreRequest.model_validate_json(body)
    outcome = "accepted"
except ValueError as exc:
    outcome = str(exc).splitlines()[2].strip()
print(time.perf_counter() - start, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, outcome)
"""


def body_of(items: int) -> bytes:
    return b'{"items":[' + b'{"video":{"url":"http://a"}},' * (items - 1) + b'{"video":{"url":"http://a"}}]}'


def pydantic_alone(body: bytes) -> dict:
    out = subprocess.run([sys.executable, "-c", PYDANTIC_ALONE], input=body, capture_output=True, check=True, cwd=ROOT)
    seconds, growth_mb, outcome = out.stdout.decode().split(" ", 2)
    return {"part": "pydantic alone", "seconds": round(float(seconds), 2), "peak_rss_growth_mb": round(float(growth_mb)),
            "outcome": outcome.strip()}  # fmt: skip


def gateway(body: bytes) -> dict:
    server = ServeProcess()
    try:
        before = server.status("VmRSS")
        start = time.perf_counter()
        response = httpx.post(
            f"{server.url}/v1/score", content=body, headers={"content-type": "application/json"}, timeout=600
        )
        seconds = time.perf_counter() - start
        growth = server.status("VmHWM") - before
    finally:
        server.stop()
    return {"part": "gateway", "status": response.status_code, "seconds": round(seconds, 2),
            "peak_rss_growth_mb": round(growth / 2**20), "error": response.json()["error"]["message"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3_500_000)
    args = parser.parse_args()
    body = body_of(args.items)
    result = {"body_mb": round(len(body) / 1e6, 1), "items": args.items, "parts": []}
    for part in (pydantic_alone, gateway):
        result["parts"].append(part(body))
        print(json.dumps(result["parts"][-1]), flush=True)
    out = ROOT / "loadtests" / "results" / "bench_json_values.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['body_mb']} MB body; wrote {out}")


if __name__ == "__main__":
    main()
