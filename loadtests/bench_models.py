"""Benchmark the tiny learned models on CPU: videos/s of the forward and peak memory.

For each model (``videoalign``, ``clip-segmental``; ``signal`` as a yardstick) it builds the
tiny test checkpoint (``tests.tiny_checkpoints``), loads it through ``models.registry`` exactly
as the gateway does, samples and resizes the design's rollout videos (33x240x416 @16 fps,
53x480x480 @24, 53x400x640 @24, 49x512x512 @16) per the model's spec, and times the forward
under ``torch.inference_mode`` at batch 1 and batch 4 (four copies of the same shape).

Each model runs in its own child process so its peak resident memory (``ru_maxrss``) is its
own: reported are the RSS after imports, after loading, and the peak while running. Tiny
models measure the pipeline and the per-video overhead (tokenising, patching, the prompt of
~1.3k tokens), not a real checkpoint's cost; see the README for the real-size estimates.

Run: ``.venv/bin/python loadtests/bench_models.py [--repeats N] [--out PATH]``. Writes
``loadtests/results/bench_models.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [(33, 240, 416, 16), (53, 480, 480, 24), (53, 400, 640, 24), (49, 512, 512, 16)]
PROMPT = "a cat surfing a wave at sunset, the camera follows it"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _run(name: str, repeats: int, queue) -> None:
    import numpy as np
    import torch

    from models import registry
    from service.decode import Limits, sample_frames
    from service.ingest import RawFrames
    from tests import tiny_checkpoints, videos

    torch.set_num_threads(os.cpu_count() or 1)
    after_import = _rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if name == "signal":
            model = registry.builtin_models()["signal"]
        elif name == "videoalign":
            base = tiny_checkpoints.qwen2vl_base(root / "base")
            ckpt = tiny_checkpoints.videoreward(root / "VideoReward", base)
            model = registry.load_model(name, ckpt, {tiny_checkpoints.BASE_ID: base})
        else:
            model = registry.load_model(name, tiny_checkpoints.clip(root / "clip"))
        after_load = _rss_mib()
        rows = []
        for total, h, w, fps in SHAPES:
            clip = sample_frames(
                RawFrames(videos.moving_scene(total, h, w), float(fps)), model.spec, Limits(10**9, 10**6, 10**6)
            ).frames.numpy()
            for batch in (1, 4):
                frames = torch.from_numpy(np.stack([clip] * batch))
                counts = torch.full((batch,), len(clip), dtype=torch.int32)
                prompts = [PROMPT] * batch
                with torch.inference_mode():
                    model.forward(frames, counts, prompts)  # warm-up
                    times = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        model.forward(frames, counts, prompts)
                        times.append(time.perf_counter() - t0)
                median = statistics.median(times)
                rows.append(
                    {
                        "shape": f"{total}x{h}x{w}@{fps}",
                        "frames": list(clip.shape[:3]),
                        "batch": batch,
                        "median_s": median,
                        "videos_per_s": batch / median,
                    }
                )
    queue.put(
        {
            "model": name,
            "rss_after_import_mib": after_import,
            "rss_after_load_mib": after_load,
            "peak_rss_mib": _rss_mib(),
            "rows": rows,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "bench_models.json")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results = []
    for name in ("signal", "videoalign", "clip-segmental"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(name, args.repeats, queue))
        proc.start()
        results.append(queue.get())
        proc.join()
    meta = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "repeats": args.repeats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print("| model | video (TxHxW@fps) | model input (n x h x w) | batch | videos/s | peak RSS MiB (after load) |")
    print("| --- | --- | --- | --: | --: | --: |")
    for r in results:
        for row in r["rows"]:
            n, h, w = row["frames"]
            print(
                f"| {r['model']} | {row['shape']} | {n}x{h}x{w} | {row['batch']} | {row['videos_per_s']:.1f} | "
                f"{r['peak_rss_mib']:.0f} ({r['rss_after_load_mib']:.0f}) |"
            )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
