"""PNG plots of load runs (matplotlib, the ``loadtest`` extra; imported only when a plot is drawn)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loadtests.loadgen.core import RunResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rates(runs: Sequence[RunResult], title: str, out: Path) -> None:
    """Left: p50/p90/p99 against offered rate. Right: each request's latency against its scheduled start."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rates = [r.rate for r in runs]
    for q in ("p50", "p90", "p99"):
        left.plot(rates, [r.summary()["latency_ms"][q] / 1000 for r in runs], marker="o", label=q)
    left.set(
        xlabel="offered rate (req/s)", ylabel="latency from scheduled start (s)", title="percentiles vs offered rate"
    )
    left.legend()
    for run in runs:
        ok = [s for s in run.samples if s.status == "200"]
        right.plot([s.scheduled_s for s in ok], [s.latency_s for s in ok], ".", label=f"{run.rate:g} req/s")
    right.set(xlabel="scheduled start (s)", ylabel="latency (s)", title="latency over time")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def plot_peers(common: dict[str, RunResult], saturation: dict[str, float], title: str, out: Path) -> None:
    """Left: latency over time per server at the common rate. Right: videos/s at saturation per server."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in common.items():
        ok = [s for s in run.samples if s.status == "200" and not s.warmup]
        left.plot([s.scheduled_s for s in ok], [s.latency_s for s in ok], ".-", label=name, alpha=0.8)
    rate = next(iter(common.values())).rate if common else 0
    left.set(xlabel="scheduled start (s)", ylabel="latency (s)", title=f"latency at {rate:.3g} req/s (open loop)")
    left.set_yscale("log")
    left.legend(fontsize=8)
    names = list(saturation)
    right.bar(names, [saturation[n] for n in names], color="tab:blue")
    right.set(ylabel="videos/s", title="throughput at saturation")
    right.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
