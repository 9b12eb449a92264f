"""Command line: ``python -m loadtests.loadgen --url URL --workload NAME --rate R [R ...]``.

Runs the workload once per offered rate (open loop, see ``core``), writes every sample and the
summaries to JSON and, unless ``--no-plot``, a PNG of percentiles vs rate and latency over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from loadtests.loadgen.core import run_open_loop
from loadtests.loadgen.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="pointwise-mixed")
    parser.add_argument("--rate", type=float, nargs="+", default=[0.5], help="offered rates, req/s")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate, warm-up included")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds at the start of each rate left out")
    parser.add_argument("--timeout", type=float, default=180.0, help="client timeout per request (s)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default loadtests/results/<workload>.json)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    workload = WORKLOADS[args.workload]()
    runs = []
    for rate in args.rate:
        run = asyncio.run(
            run_open_loop(
                args.url,
                workload.payloads,
                rate=rate,
                duration_s=args.duration,
                warmup_s=args.warmup,
                timeout_s=args.timeout,
            )
        )
        s = run.summary()
        lat = s["latency_ms"]
        print(
            f"{workload.name} @ {rate:g} req/s: ok {s['ok']}/{s['measured']}, errors {s['errors'] or 0}, "
            f"achieved {s['achieved_rps']:.3g} req/s ({s['achieved_videos_per_s']:.3g} videos/s), "
            f"p50 {lat['p50']:.0f} ms, p90 {lat['p90']:.0f} ms, p99 {lat['p99']:.0f} ms",
            flush=True,
        )
        runs.append(run)

    out = args.out or ROOT / "loadtests" / "results" / f"{workload.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "workload": workload.name,
        "description": workload.description,
        "load_average": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, "-m", "loadtests.loadgen", *(argv or sys.argv[1:])]),
        "runs": [r.to_json() for r in runs],
    }
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    if not args.no_plot:
        from loadtests.loadgen.plots import plot_rates

        png = out.with_suffix(".png")
        plot_rates(runs, f"{workload.name} against {args.url}", png)
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
