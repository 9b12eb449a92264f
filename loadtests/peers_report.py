"""Render the peers run (``peers.py``'s record) as loadtests/RESULTS.md: absolute figures and ratios vs naive."""

from __future__ import annotations

import time
from pathlib import Path

SATURATED = 0.8  # achieved below this fraction of the offered rate = the server was the limit

ABOUT = """\
What each server gets and does (details in the modules' docstrings):

| server | serving | batching | decode + sample + resize |
| --- | --- | --- | --- |
| naive (`peer_servers/naive.py`) | plain FastAPI sync route, uvicorn | none: one forward per video | inline, one video after another, in the request's thread |
| litserve (`peer_servers/lit.py`) | LitServe: API server process + 1 inference worker process | up to 16 *requests* per batch, 5 ms timeout; forwards of <= 16 videos | in `predict`, the batch's videos on 2 threads; not overlapped with inference |
| ray (`peer_servers/ray_serve.py`) | Ray Serve: HTTP proxy actor + 1 replica (FastAPI ingress) | `@serve.batch` per *video*, max 16, 5 ms | in the replica, 2 threads, overlapped with inference |
| gateway (`vrs serve`, defaults) | our gateway, in-process backend, `cache: "bypass"` | micro-batcher per video, max 16, 5 ms (the `signal` spec) | 2 decode threads, overlapped with inference |
| gateway-cached | the same gateway, `cache: "use"`, cache filled by one pass over the bodies | - | none (every measured request is a hit) |

Identical for all: the request bodies (pre-encoded once; the gateway's JSON with base64 mp4 `data` or base64 `.npy`
`frames`), `service.ingest` + `service.decode.sample_frames` with the `signal` spec, `models.signal.forward`
under `torch.inference_mode` on batches padded by `FrameBatch.assemble` and grouped by frame size, the torch thread
count, `OMP_WAIT_POLICY=PASSIVE`, the load generator (`loadtests/loadgen`, in the driver process, open loop) and
the client timeout (180 s). Servers time requests out after 120 s where they can (gateway, LitServe, Ray Serve;
naive has no timeout). What differs is only the serving: processes, queues, batching and overlap. Peers answer
scores and (for groups) a ranking; the gateway also computes weights, overall and group advantages.
LitServe serves one path, so it gets every body at `/predict`.
"""


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if x == x else "n/a"


def _ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}x" if base and base == base and x == x else "n/a"


def write_results(record: dict, out: Path) -> None:
    m, v = record["machine"], record["versions"]
    lines = [
        "# Load tests: the gateway against its peers",
        "",
        f"Produced by `{record['command']}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in "
        f"{record['elapsed_s'] / 60:.1f} minutes{' (QUICK smoke run: too short to quote)' if record['quick'] else ''}.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, {m['os']}, Python {m['python']}, no GPU.",
        f"- Load average (1/5/15 min) at start {_loads(m['load_average_start'])}, at end {_loads(m['load_average_end'])}: "
        "the machine is shared with other engineers' test runs; each step's 1-minute load before/after is in the tables.",
        "- Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f"; torch threads {record['torch_threads']}.",
        "",
        ABOUT,
    ]
    for failed, why in record["failures"].items():
        lines += [f"**{failed} did not run**: {why}", ""]
    for plan in record["plans"]:
        name = plan["workload"]
        rows = record["results"].get(name, {})
        if not rows:
            continue
        base = rows.get("naive")
        base_sat = base["saturation"]["summary"]["achieved_videos_per_s"] if base else float("nan")
        base_common = base["common"]["summary"]["latency_ms"] if base else {"p50": float("nan"), "p99": float("nan")}
        lines += [
            f"## {name}",
            "",
            f"{plan['description']}; {plan['videos_per_request']:g} videos per request. Saturation: an open-loop burst of "
            f"{plan['burst_rate']:g} req/s for {plan['burst_s']:g} s after {plan['warm']} sequential warm-up requests; "
            f"common rate: {record['common_rate'].get(name, float('nan')):.3g} req/s "
            f"(half the naive server's saturation throughput) for {plan['common_s']:g} s, first "
            f"{plan['common_warmup_s']:g} s left out. Latency is from each request's scheduled start.",
            "",
            "| server | saturation videos/s | req/s | vs naive | common p50 s | p99 s | p50 vs naive | p99 vs naive | ok / measured | errors | load before->after |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for server, r in rows.items():
            sat, com = r["saturation"]["summary"], r["common"]["summary"]
            limited = sat["achieved_rps"] < SATURATED * sat["offered_rps"]
            vps = _f(sat["achieved_videos_per_s"]) + ("" if limited else " (not saturated: >=)")
            lat = com["latency_ms"]
            over = " (over capacity at this rate)" if com["achieved_rps"] < SATURATED * com["offered_rps"] else ""
            errors = {k: sat["errors"].get(k, 0) + com["errors"].get(k, 0) for k in {**sat["errors"], **com["errors"]}}
            lines.append(
                f"| {server} | {vps} | {_f(sat['achieved_rps'])} | {_ratio(sat['achieved_videos_per_s'], base_sat)} "
                f"| {_f(lat['p50'] / 1000)}{over} | {_f(lat['p99'] / 1000)} | {_ratio(lat['p50'], base_common['p50'])} "
                f"| {_ratio(lat['p99'], base_common['p99'])} | {sat['ok']}/{sat['measured']}, {com['ok']}/{com['measured']} "
                f"| {errors or '-'} | {r['saturation']['load_before']:.1f}->{r['common']['load_after']:.1f} |"
            )
        lines += ["", f"![{name}](peers-{name}.png)", ""]
    lines += [
        "Reading the tables: \"vs naive\" is the server's figure divided by the naive server's, measured in the same run "
        "(throughput: higher is better; latency: lower is better). p99 of a step with few requests is close to its "
        "maximum; the sample counts are in the ok / measured column (saturation step, common step). Raw samples: "
        "`loadtests/results/peers.json` (git-ignored).",
        "",
    ]
    out.write_text("\n".join(lines))


def _loads(values) -> str:
    return "/".join(f"{x:.2f}" for x in values)
