"""The GPU data path, measured in one command: decode, forward, and end-to-end GRPO ranking.

1. decode: frames/s of NVDEC (service/nvdec.py: decode, NV12->RGB on the GPU) vs FFmpeg's CPU
   decoders on every CPU core, for H.264 53-frame clips at 320x240, 640x360 (the default
   ``VRS_NVDEC_MIN_PIXELS``), 480x480, 1280x720 and 1920x1080. Every frame is sampled at its
   native size (no resize), so this is decode + colour conversion + clip assembly; the GPU side
   also reports whether its frames stayed on the GPU. The smaller sizes place the break-even.
2. forward: videoalign (Qwen2-VL-2B architecture) and clip-segmental (CLIP ViT-L/14), random
   weights in the published layouts (models/random_checkpoints.py) loaded through the normal
   loaders, videos/s at batch 1/4/8/16 in the configured dtype (bf16 on CUDA) on a 53x480x480
   @24 fps clip sampled per each model's spec. FLOPs are counted by torch's FlopCounterMode on
   one forward (matmuls, convolutions, attention); the share is of the GPU's dense bf16 peak
   (spec sheet, ``PEAK_BF16``), and of a measured 8192^3 bf16 matmul for context; for the whole
   forward and for its device stage alone (``core``: in the server the next batch's tokenisation
   runs meanwhile, models/registry.py ``Stages``).
3. grpo: /v1/rank groups of 8 x 53x480x480 mp4 (base64) through the gateway (uvicorn, in-process
   backend, NVDEC by policy, micro-batches of up to 16, videoalign in bf16, cache bypassed) with several
   groups in flight, vs the DanceGRPO-style naive loop: in-process, one video at a time, CPU
   decode, the same model in the same dtype on the same GPU. Groups/s and the ratio.

Run on a GPU machine (README "GPU path" has the device command and the wheels to carry):
    python loadtests/bench_gpu.py                # writes loadtests/results-gpu/bench_gpu.{json,md}
    python loadtests/bench_gpu.py --smoke        # tiny sizes on any machine (CPU: proves the script)
Without CUDA the "nvdec" column is the GPU path's conversion on software NV12 frames
(``nvdec.NV12_ON_CPU``), labelled as such.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models import random_checkpoints, registry, signal  # noqa: E402
from models.placement import Placement, resolve  # noqa: E402
from models.spec import FrameSampling, Resolution  # noqa: E402
from service import decode, nvdec  # noqa: E402
from service.backends.base import FrameBatch  # noqa: E402
from service.ingest import EncodedVideo  # noqa: E402
from tests import videos  # noqa: E402

PROMPT = "a cat surfing a wave at sunset, the camera follows it"
LIMITS = decode.Limits(10**9, 10**6, 10**6)
# Dense bf16 tensor-core peak, FLOP/s (NVIDIA spec sheets, no sparsity).
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def peak_bf16(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def encoded(total: int, height: int, width: int, fps: int = 24, seed: int = 0) -> bytes:
    """An H.264 mp4 of the synthetic moving scene (``seed`` shifts its speed, so videos differ)."""
    return videos.encode(videos.moving_scene(total, height, width, speed=2.0 + seed * 0.37), "mp4", fps=fps)


# ---------------------------------------------------------------------------------------- decode


def bench_decode(shapes, smoke: bool) -> list[dict]:
    cuda = torch.cuda.is_available()
    gpu_path = nvdec.nvdec_path(torch.device("cuda", 0)) if cuda else nvdec.NV12_ON_CPU
    cpu_workers = os.cpu_count() or 1
    rows = []
    for total, h, w in shapes:
        data = encoded(total, h, w)
        spec = signal.SPEC.model_copy(
            update={
                "sampling": FrameSampling(mode="count", count=total, max_frames=total),
                "resolution": Resolution(max_pixels=10**9, size_factor=1),
            }
        )
        row = {"shape": f"{total}x{h}x{w}", "cpu_workers": cpu_workers}
        for name, path, workers in (
            ("cpu", decode.CPU_PATH, cpu_workers),
            ("nvdec" if cuda else "nv12-cpu", gpu_path, 4),
        ):
            n_videos = max(2 * workers, 4) if not smoke else workers
            one = decode.sample_container(data, [spec], LIMITS, path)[0]  # warm-up, and where frames land
            sync()
            start = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda _: decode.sample_container(data, [spec], LIMITS, path), range(n_videos)))
            sync()
            elapsed = time.perf_counter() - start
            row[f"{name}_fps"] = round(n_videos * total / elapsed, 1)
            row[f"{name}_frames_on"] = str(one.frames.device)
        gpu_name = "nvdec" if cuda else "nv12-cpu"
        row["speedup"] = round(row[f"{gpu_name}_fps"] / row["cpu_fps"], 2)
        rows.append(row)
        print("decode", row, flush=True)
    return rows


# --------------------------------------------------------------------------------------- forward


def checkpoints(root: Path, smoke: bool) -> dict[str, Path]:
    marker = root / ("shrunk" if smoke else "full") / "done.json"
    if marker.is_file():
        return {k: Path(v) for k, v in json.loads(marker.read_text()).items()}
    print(f"building random-weight checkpoints under {marker.parent} ...", flush=True)
    dirs = random_checkpoints.build_all(marker.parent, shrink=smoke)
    marker.write_text(json.dumps({k: str(v) for k, v in dirs.items()}))
    return dirs


def load(name: str, dirs: dict[str, Path], placement: Placement):
    return registry.load_model(name, dirs[name], {random_checkpoints.BASE_ID: dirs["base"]}, placement)


def matmul_ceiling() -> float | None:
    """Measured bf16 FLOP/s of an 8192^3 matmul (context for the spec-sheet peak)."""
    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start)


def median_s(call, repeats: int) -> float:
    """Median seconds of ``call`` over ``repeats`` runs, each ending with its scores on the host."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call().cpu()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_forward(dirs, placement: Placement, batches, repeats: int, peak: float | None) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    data = encoded(53, 480, 480)
    rows = []
    for name in ("videoalign", "clip-segmental"):
        model = load(name, dirs, placement)
        clip = decode.sample_frames(EncodedVideo(data), model.spec, LIMITS)
        for b in batches:
            row = {
                "model": name,
                "batch": b,
                "dtype": str(placement.dtype).removeprefix("torch."),
                "frames": list(clip.frames.shape),
            }
            try:
                batch = FrameBatch.assemble([clip.frames] * b, [PROMPT] * b, placement.device)
                with torch.inference_mode():
                    for _ in range(2):
                        model.forward(batch.frames, batch.num_frames, batch.prompts)
                    with FlopCounterMode(display=False) as counter:
                        model.forward(batch.frames, batch.num_frames, batch.prompts)
                    flops = counter.get_total_flops()
                    sync()
                    t = median_s(partial(model.forward, batch.frames, batch.num_frames, batch.prompts), repeats)
                    # The device stage alone: the in-process backend runs the next batch's ``pre``
                    # (tokenisation) while this ``core`` runs, so in a busy server this is the rate.
                    prepared = model.stages.pre(batch.frames, batch.num_frames, batch.prompts)
                    t_core = median_s(partial(model.stages.core, prepared), repeats)
                row |= {
                    "ms": round(1000 * t, 2),
                    "core_ms": round(1000 * t_core, 2),
                    "videos_per_s": round(b / t, 2),
                    "gflop_per_video": round(flops / b / 1e9, 1),
                    "tflop_per_s": round(flops / t / 1e12, 2),
                }
                if peak:
                    row["share_of_peak"] = round(flops / t / peak, 3)
                    row["core_share_of_peak"] = round(flops / t_core / peak, 3)
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                torch.cuda.empty_cache()
            rows.append(row)
            print("forward", row, flush=True)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------ grpo


def naive_groups_per_s(model, group: list[bytes], placement: Placement, n_groups: int) -> float:
    """DanceGRPO's way: for each video, CPU decode, one forward, scores to the host."""
    start = time.perf_counter()
    for _ in range(n_groups):
        for data in group:
            clip = decode.sample_frames(EncodedVideo(data), model.spec, LIMITS)
            batch = FrameBatch.assemble([clip.frames], [PROMPT], placement.device)
            with torch.inference_mode():
                model.forward(batch.frames, batch.num_frames, batch.prompts).cpu()
    return n_groups / (time.perf_counter() - start)


def gateway_groups_per_s(
    dirs, settings_overrides: dict, group: list[bytes], n_groups: int, in_flight: int
) -> tuple[float, dict]:
    import httpx
    import uvicorn

    from service.api import create_app
    from service.config import Settings
    from service.head_limits import uvicorn_config

    settings = Settings(
        models=["videoalign"],
        default_model="videoalign",
        model_dirs={"videoalign": dirs["videoalign"]},
        base_model_dirs={random_checkpoints.BASE_ID: dirs["base"]},
        decode_workers=os.cpu_count() or 2,
        max_pending=4096,
        request_timeout_s=600,
        max_batch_size=16,
        max_wait_ms=10.0,
        **settings_overrides,
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    body = {
        "videos": [{"data": base64.b64encode(v).decode()} for v in group],
        "prompt": PROMPT,
        "models": ["videoalign"],
        "cache": "bypass",
    }
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            placement = client.get("/v1/models").json()["placement"]
            assert client.post("/v1/rank", json=body).status_code == 200  # warm-up

            def one(_):
                response = client.post("/v1/rank", json=body)
                response.raise_for_status()

            start = time.perf_counter()
            with ThreadPoolExecutor(in_flight) as pool:
                list(pool.map(one, range(n_groups)))
            rate = n_groups / (time.perf_counter() - start)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return rate, placement


def bench_grpo(
    dirs, placement: Placement, shape, n_groups: int, in_flight: int, device_setting: str, dtype_setting: str
) -> dict:
    total, h, w = shape
    group = [encoded(total, h, w, seed=i) for i in range(8)]
    model = load("videoalign", dirs, placement)
    naive_groups_per_s(model, group[:1], placement, 1)  # warm-up
    naive = naive_groups_per_s(model, group, placement, max(1, n_groups // 4))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    gateway, where = gateway_groups_per_s(
        dirs, {"device": device_setting, "dtype": dtype_setting}, group, n_groups, in_flight
    )
    row = {
        "group": f"8 x {total}x{h}x{w} mp4",
        "naive_groups_per_s": round(naive, 3),
        "gateway_groups_per_s": round(gateway, 3),
        "speedup": round(gateway / naive, 2),
        "gateway_placement": where,
        "groups_in_flight": in_flight,
    }
    print("grpo", row, flush=True)
    return row


# -------------------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# bench_gpu ({'smoke, ' if result['smoke'] else ''}{env['device']})",
        "",
        f"`{result['command']}` — torch {env['torch']}, PyAV {env['av']}, {env['cpus']} CPUs, "
        f"peak bf16 {env['peak_bf16_tflops']} TFLOP/s (spec), measured 8192^3 matmul {env['matmul_tflops']} TFLOP/s",
        "",
    ]
    for name in ("decode", "forward", "grpo"):
        if isinstance(result.get(name), dict) and "error" in result[name]:
            lines += [f"## {name}: failed", "", "```", result[name]["traceback"].strip(), "```", ""]
    if isinstance(result.get("decode"), list):
        gpu = "nvdec" if "nvdec_fps" in result["decode"][0] else "nv12-cpu"
        lines += [
            "## Decode (frames/s, H.264, every frame at native size)",
            "",
            f"| video | CPU ({result['decode'][0]['cpu_workers']} threads) | {gpu} | speedup | {gpu} frames on |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['shape']} | {r['cpu_fps']} | {r[gpu + '_fps']} | {r['speedup']}x | {r[gpu + '_frames_on']} |"
            for r in result["decode"]
        ]
        lines.append("")
    if isinstance(result.get("forward"), list):
        lines += [
            "## Forward (53x480x480 @24 fps, sampled per spec)",
            "",
            "| model | batch | dtype | videos/s | ms | GFLOP/video | TFLOP/s | share of peak | core ms | core share |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["forward"]:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['error']} | | | | | | |")
            else:
                lines.append(
                    f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['videos_per_s']} | {r['ms']} | "
                    f"{r['gflop_per_video']} | {r['tflop_per_s']} | {r.get('share_of_peak', '-')} | "
                    f"{r['core_ms']} | {r.get('core_share_of_peak', '-')} |"
                )
        lines.append("")
    if isinstance(result.get("grpo"), dict) and "error" not in result["grpo"]:
        r = result["grpo"]
        lines += [
            "## GRPO groups through /v1/rank vs the naive loop",
            "",
            "| group | naive loop (groups/s) | gateway (groups/s) | speedup |",
            "|---|---|---|---|",
            f"| {r['group']} | {r['naive_groups_per_s']} | {r['gateway_groups_per_s']} | {r['speedup']}x |",
            "",
            f"Gateway placement: `{json.dumps(r['gateway_placement'])}`, {r['groups_in_flight']} groups in flight.",
            "",
        ]
    lines += targets(result)
    return "\n".join(lines)


def targets(result: dict) -> list[str]:
    """Issue 11's measured targets against this run's figures ("not measured" where a section is missing)."""

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "NOT met")

    decode = result.get("decode") if isinstance(result.get("decode"), list) else []
    big = [r for r in decode if int(r["shape"].split("x")[1]) >= 720 and "nvdec_fps" in r]
    nvdec_ok = all(r["speedup"] >= 3 and r["nvdec_frames_on"].startswith("cuda") for r in big) if big else None
    forward = result.get("forward") if isinstance(result.get("forward"), list) else []
    eight = [r for r in forward if r["model"] == "videoalign" and r["batch"] == 8 and "share_of_peak" in r]
    share_ok = eight[0]["core_share_of_peak"] >= 0.40 if eight and eight[0]["dtype"] == "bfloat16" else None
    grpo = result.get("grpo") if isinstance(result.get("grpo"), dict) and "speedup" in result["grpo"] else None
    grpo_ok = grpo["speedup"] >= 5 if grpo and grpo["gateway_placement"]["videoalign"]["device"] != "cpu" else None
    speedups = ", ".join(f"{r['shape']} {r['speedup']}x" for r in big) or "-"
    return [
        "## Targets (issue 11)",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        f"| NVDEC >= 3x CPU decode at 720p and above, frames on the GPU | {speedups} | {verdict(nvdec_ok)} |",
        "| videoalign-2B bf16 batch 8 >= 40% of peak bf16 (device stage; whole forward with tokenisation) | "
        + (f"{eight[0]['core_share_of_peak']} ({eight[0]['share_of_peak']})" if eight else "-")
        + f" | {verdict(share_ok)} |",
        f"| GRPO through the gateway >= 5x the naive loop | {grpo['speedup'] if grpo else '-'}x | {verdict(grpo_ok)} |",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny videos and shrunk models (runs anywhere)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default loadtests/results-gpu, or a temp dir with --smoke)",
    )
    parser.add_argument("--checkpoints", type=Path, default=Path(tempfile.gettempdir()) / "vrs-random-checkpoints")
    parser.add_argument("--sections", default="decode,forward,grpo")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    smoke = args.smoke
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-gpu-")) if smoke else ROOT / "loadtests" / "results-gpu")
    out.mkdir(parents=True, exist_ok=True)
    placement = resolve(args.device, args.dtype)
    device_name = torch.cuda.get_device_name(placement.device) if placement.is_cuda else platform.processor() or "cpu"
    peak = peak_bf16(device_name) if placement.is_cuda else None
    sections = set(args.sections.split(","))
    import av

    ceiling = matmul_ceiling() if placement.is_cuda and "forward" in sections else None
    result: dict = {
        "smoke": smoke,
        "command": "python loadtests/bench_gpu.py " + " ".join(sys.argv[1:]),
        "environment": {
            "device": device_name,
            "placement": placement.describe(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "av": av.__version__,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "peak_bf16_tflops": peak / 1e12 if peak else None,
            "matmul_tflops": round(ceiling / 1e12, 1) if ceiling else None,
        },
    }
    decode_shapes = (
        [(9, 64, 64), (9, 72, 128), (9, 108, 192)]
        if smoke
        else [(53, 240, 320), (53, 360, 640), (53, 480, 480), (53, 720, 1280), (53, 1080, 1920)]
    )
    stem = "bench_gpu_smoke" if smoke else "bench_gpu"
    dirs: dict[str, Path] = {}

    def run_section(name: str, work) -> None:
        """One section; its figures (or its error) are written before the next starts, so a section
        that fails or a time limit that cuts the run short keeps what finished."""
        if name not in sections:
            return
        print(f"{name} ...", flush=True)
        started = time.perf_counter()
        try:
            result[name] = work()
        except Exception as exc:  # report and go on: a device call is too dear to lose to one section
            result[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(result[name]["traceback"], file=sys.stderr, flush=True)
        # Wall time per section (checkpoint building included in the first that needs them): what
        # the next device plan budgets (README "GPU benchmark: one command").
        result.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: {result['section_seconds'][name]} s", flush=True)
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{stem}.md").write_text(markdown(result) + "\n")

    def built() -> dict[str, Path]:
        if not dirs:
            dirs.update(checkpoints(args.checkpoints, smoke))
        return dirs

    def forward():
        batches = [1, 2] if smoke else [1, 4, 8, 16]
        return bench_forward(built(), placement, batches, args.repeats or (2 if smoke else 10), peak)

    def grpo():
        shape = (9, 64, 64) if smoke else (53, 480, 480)
        return bench_grpo(built(), placement, shape, 2 if smoke else 16, 2 if smoke else 4, args.device, args.dtype)

    run_section("decode", lambda: bench_decode(decode_shapes, smoke))
    run_section("forward", forward)
    run_section("grpo", grpo)
    print(markdown(result))
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
