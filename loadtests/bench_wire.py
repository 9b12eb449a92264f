"""Benchmark the client's wire forms for one GRPO group: 8 rollouts of uint8 [53, 480, 480, 3] frames.

Forms, measured in one run against one real gateway (uvicorn, ``signal`` model):

- ``json-base64``: the old default: base64 .npy frames inside a JSON body (``transport="json"``);
- ``multipart-npy``: the new default: one ``application/x-npy`` part per rollout, streamed from the
  arrays' own memory;
- ``sha256-reuse``: the same group again with ``reuse=True`` after it was scored once: digests only.

Each measurement runs the client in a fresh subprocess (so its peak memory is its own) that makes
the frames, notes its resident memory, then calls ``Client.rank`` once (end-to-end time, and
peak RSS above the frames themselves: what encoding costs the trainer), then times building the
body alone (client encode time) and reads the request's byte count. ``json`` and ``multipart`` score
with ``cache="bypass"``, so the server does the same work for both. Medians over ``--repeats``.

Run: ``.venv/bin/python loadtests/bench_wire.py [--repeats 3]``. Results: ``loadtests/results/bench_wire.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GROUP, SHAPE = 8, (53, 480, 480, 3)
FORMS = ("json-base64", "multipart-npy", "sha256-reuse")


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def _reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def client_run(url: str, form: str) -> dict:
    """One measurement, in this (fresh) process."""
    import httpx
    from vrs_client import Client, Frames
    from vrs_client.client import _rank

    from tests import videos

    group = [Frames(videos.moving_scene(*SHAPE[:3], speed=1.0 + i), 16) for i in range(GROUP)]
    _reset_peak()  # making the frames had its own temporaries; measure from here
    base = _status_mib("VmRSS")
    transport = "json" if form == "json-base64" else "multipart"
    options = {} if form in ("sha256-reuse", "warm") else {"cache": "bypass"}
    with Client(url, transport=transport, reuse=form == "sha256-reuse", timeout_s=600) as client:
        start = time.perf_counter()
        response = client.rank(group, **options)
        e2e = time.perf_counter() - start
    peak = _status_mib("VmHWM") - base
    call = _rank(group, None, options)
    start = time.perf_counter()
    body = call.build("digest" if form == "sha256-reuse" else transport)
    encode = time.perf_counter() - start
    request = httpx.Request("POST", url + call.path, **body.send_kwargs())
    body.close()
    return {
        "form": form,
        "bytes": int(request.headers["content-length"]),
        "encode_s": encode,
        "e2e_s": e2e,
        "client_peak_mib_over_frames": peak,
        "frames_mib": GROUP * math.prod(SHAPE) / 2**20,
        "cached": [r.cached for r in response.results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--client", nargs=2, metavar=("URL", "FORM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client_run(*args.client)))
        return

    from service.api import create_app
    from service.config import Settings
    from tests.conftest import start_server

    server = start_server(create_app(Settings(request_timeout_s=600)))
    try:
        runs: dict[str, list[dict]] = {form: [] for form in FORMS}
        subprocess.run(
            [sys.executable, __file__, "--client", server.url, "warm"], check=True, capture_output=True
        )  # warm-up; fills the cache the reuse form reads
        for _ in range(args.repeats):
            for form in FORMS:
                done = subprocess.run(
                    [sys.executable, __file__, "--client", server.url, form], capture_output=True, text=True, check=True
                )
                runs[form].append(json.loads(done.stdout))
                print(json.dumps(runs[form][-1]), file=sys.stderr)
    finally:
        server.stop()
    summary = {
        form: {
            k: statistics.median(r[k] for r in rs)
            for k in ("bytes", "encode_s", "e2e_s", "client_peak_mib_over_frames")
        }
        for form, rs in runs.items()
    }
    old = summary["json-base64"]
    for row in summary.values():
        row["e2e_vs_json"] = row["e2e_s"] / old["e2e_s"]
        row["bytes_vs_json"] = row["bytes"] / old["bytes"]
    report = {
        "group": f"{GROUP} x {'x'.join(map(str, SHAPE[:3]))} uint8 RGB",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "summary": summary,
        "runs": runs,
    }
    out = ROOT / "loadtests" / "results" / "bench_wire.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{'form':<15} {'MiB sent':>9} {'encode s':>9} {'e2e s':>7} {'peak MiB':>9} {'e2e/json':>9}")
    for form, row in summary.items():
        print(
            f"{form:<15} {row['bytes'] / 2**20:9.1f} {row['encode_s']:9.3f} {row['e2e_s']:7.2f} "
            f"{row['client_peak_mib_over_frames']:9.0f} {row['e2e_vs_json']:9.2f}"
        )


if __name__ == "__main__":
    main()
