"""Benchmark the compiled paths against eager, and Triton's frame transports against each other.

Two parts, each a ratio against a baseline measured in the same run:

1. ``compile``: forward throughput (videos/s) of what ``VRS_COMPILE=none`` and ``=inductor``
   serve (``models.compile.compiled``: Inductor on each staged model's core; on CUDA
   ``mode="reduce-overhead"``, i.e. CUDA graphs), the same batch of 8 copies of a 53x480x480
   @24 fps clip sampled per each spec, after the same warm-up, in the placement's dtype (bf16 on
   CUDA). Models: videoalign (Qwen2-VL-2B architecture) and clip-segmental (CLIP ViT-L/14),
   random weights in the published layouts (models/random_checkpoints.py, the same folder
   loadtests/bench_gpu.py builds and reuses), and the built-in ``signal``. ``--smoke`` (CPU)
   uses shrunk models, batch 2 and few iterations: a check that everything runs.
2. ``transport``: one Triton (local tritonserver, a python model, KIND_GPU on a GPU host)
   answering the same batch with frames in the gRPC message vs system shared memory vs CUDA
   shared memory (GPU hosts with cuda-python), through the gateway's own ``TritonBackend``;
   requests/s and MB/s of frames. The model (``frames_only``, under signal's spec) reads every
   frame byte once on its device and returns zeros, so the figures are the transport's, not a
   forward's (signal's own forward on 2 CPU cores took ~1 s of the ~1.2 s a request took).

Run: ``.venv/bin/python loadtests/bench_compile.py [--smoke] [--skip-transport] [--skip-compile]``.
Results go to ``--out`` (default ``loadtests/results/bench_compile.json``), rewritten after each
row; a Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def compile_cases(smoke: bool, placement, checkpoints: Path) -> list[tuple[str, int, object, object]]:
    """(name, items per call, eager forward, compiled forward) for each benchmarked model: what
    ``VRS_COMPILE=none`` and ``inductor`` serve (models.compile.compiled), the same call each."""
    from loadtests.bench_gpu import PROMPT, encoded, load
    from loadtests.bench_gpu import checkpoints as built
    from models import signal
    from models.compile import compiled
    from models.registry import RewardModel
    from service import decode
    from service.backends.base import FrameBatch
    from service.ingest import EncodedVideo

    dirs = built(checkpoints, smoke)
    video = EncodedVideo(encoded(53, 480, 480))
    limits = decode.Limits(10**9, 10**6, 10**6)
    cases = []
    models = [load(name, dirs, placement) for name in ("videoalign", "clip-segmental")]
    models.append(RewardModel(spec=signal.SPEC, forward=signal.forward))
    for model in models:
        b = 2 if smoke else 8
        clip = decode.sample_frames(video, model.spec, limits).frames
        batch = FrameBatch.assemble([clip] * b, [PROMPT] * b, placement.device)
        fast = compiled(model, placement.device.type)

        def call(forward, batch=batch):
            return forward(batch.frames, batch.num_frames, batch.prompts)

        name = f"{model.spec.name} {tuple(clip.shape)}"
        cases.append((name, b, partial(call, model.forward), partial(call, fast.forward)))
    return cases


def bench_compile(smoke: bool, checkpoints: Path, on_row) -> list[dict]:
    from loadtests.bench_gpu import median_s
    from models.placement import resolve

    placement = resolve("auto", "auto")
    iters = 3 if smoke else 10
    rows = []
    for name, items, eager_fn, compiled_fn in compile_cases(smoke, placement, checkpoints):
        with torch.inference_mode():
            eager = median_s(eager_fn, iters)
            start = time.perf_counter()
            for _ in range(3):  # compile + CUDA graph capture (reduce-overhead records on the 3rd call)
                compiled_fn()
            warm = time.perf_counter() - start
            compiled = median_s(compiled_fn, iters)
        rows.append({"model": name, "batch": items, **placement.describe(),
                     "mode": "reduce-overhead" if placement.is_cuda else "default",
                     "eager_items_s": items / eager, "compiled_items_s": items / compiled, "speedup": eager / compiled,
                     "compile_warmup_s": warm})  # fmt: skip
        print(
            f"{name}: eager {items / eager:.2f}/s, inductor {items / compiled:.2f}/s ({eager / compiled:.2f}x)",
            flush=True,
        )
        on_row(rows)
    return rows


def frames_only(frames: torch.Tensor, num_frames: torch.Tensor, prompts) -> torch.Tensor:
    """A forward that costs only what moving the frames costs: one read of every byte on their device."""
    from models.signal import SPEC

    checksum = frames.sum(dtype=torch.int64)
    return torch.zeros(len(num_frames), len(SPEC.dimensions), device=frames.device) + 0 * checksum


async def _transport_rate(url: str, transport: str, batch, seconds: float) -> dict:
    from service.backends.triton import TritonBackend

    backend = TritonBackend(url, ["signal"], transport=transport, max_inflight=2)
    await backend.start()
    try:
        await backend.infer("signal", batch)  # registers the region
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            await backend.infer("signal", batch)
            done += 1
        elapsed = time.perf_counter() - start
    finally:
        await backend.close()
    return {
        "transport": transport,
        "requests_s": done / elapsed,
        "frames_MB_s": done * batch.frames.nbytes / elapsed / 1e6,
    }


def bench_transport(smoke: bool) -> list[dict]:
    from models.registry import RewardModel, builtin_models
    from models.triton_repo import TritonOptions, write_python_repo
    from service.backends.base import FrameBatch
    from service.triton_server import LocalTriton
    from tests.conftest import free_port

    transports = ["grpc", "system_shm"]
    try:
        import tritonclient.utils.cuda_shared_memory  # noqa: F401

        transports += ["cuda_shm"] if torch.cuda.is_available() else []
    except Exception:
        pass
    b, t, s = (2, 8, 64) if smoke else (8, 32, 256)
    rng = np.random.default_rng(0)
    batch = FrameBatch.assemble([rng.integers(0, 256, (t, s, s, 3), dtype=np.uint8) for _ in range(b)], [""] * b)
    with tempfile.TemporaryDirectory() as tmp:
        device = "cuda" if torch.cuda.is_available() else "cpu"  # KIND_GPU on a GPU host
        from loadtests.bench_compile import frames_only as forward  # by a name Triton's stub can import, not __main__

        model = RewardModel(spec=builtin_models()["signal"].spec, forward=forward)
        repo = write_python_repo(Path(tmp) / "repo", {"signal": model}, TritonOptions(device=device))
        server = LocalTriton(repo, free_port(), free_port(), free_port()).start(timeout_s=300)
        try:
            rows = [asyncio.run(_transport_rate(server.grpc_url, tr, batch, 3 if smoke else 20)) for tr in transports]
        finally:
            server.stop()
    base = rows[0]["requests_s"]
    for row in rows:
        row["vs_grpc"] = row["requests_s"] / base
        print(f"{row['transport']}: {row['requests_s']:.1f} req/s ({row['vs_grpc']:.2f}x gRPC bytes)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="Shrunk models, few iterations (CPU check).")
    parser.add_argument("--skip-transport", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "bench_compile.json")
    parser.add_argument("--checkpoints", type=Path, default=Path(tempfile.gettempdir()) / "vrs-random-checkpoints")
    args = parser.parse_args()
    result = {"host": platform.node(), "torch": torch.__version__, "smoke": args.smoke,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "command": "python loadtests/bench_compile.py " + " ".join(sys.argv[1:]),
              "compile": [], "transport": []}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(rows=None) -> None:  # after every row: a run cut short keeps what it measured
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    if not args.skip_compile:
        result["compile"] = bench_compile(
            args.smoke, args.checkpoints, lambda rows: (result.update(compile=rows), save())
        )
    if not args.skip_transport:
        result["transport"] = bench_transport(args.smoke)
        save()
    print(
        "\n| model (frames) | batch | device | dtype | eager items/s | inductor items/s | speed-up | compile+warm-up s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in result["compile"]:
        print(
            f"| {r['model']} | {r['batch']} | {r['device']} | {r['dtype']} | {r['eager_items_s']:.2f} | "
            f"{r['compiled_items_s']:.2f} | {r['speedup']:.2f}x | {r['compile_warmup_s']:.0f} |"
        )
    if result["transport"]:
        print("\n| transport | requests/s | frames MB/s | vs gRPC bytes |\n| --- | --- | --- | --- |")
        for r in result["transport"]:
            print(f"| {r['transport']} | {r['requests_s']:.2f} | {r['frames_MB_s']:.0f} | {r['vs_grpc']:.2f}x |")
    print(f"\nraw: {args.out}")


if __name__ == "__main__":
    main()
