"""Benchmark the compiled paths against eager, and Triton's frame transports against each other.

Two parts, each a ratio against a baseline measured in the same run:

1. ``compile``: forward throughput (items/s) of eager vs ``torch.compile`` (Inductor; on CUDA
   ``mode="reduce-overhead"``, i.e. CUDA graphs, via ``models.compile``), same inputs, after the
   same warm-up. Models, with random weights from configs built here (no downloads; issue 11's
   full-size checkpoint builder can replace these once merged):
   - ``videoalign-2B``: Qwen2-VL-2B-shaped (vision 32 x 1280, text 28 x 1536), bf16 on GPU: the
     vision tower on a 16-frame 448x448 clip, then the language model on its 4096 merged tokens
     plus a 128-token prompt;
   - ``clip-L``: CLIP ViT-L/14-shaped image tower, bf16 on GPU, B*S = 8*8 crops of 224 px;
   - ``signal``: the built-in model, float32, B=8 x 32 frames of 256 px.
   ``--smoke`` (CPU) uses tiny configs and few iterations, for a check that everything runs.
2. ``transport``: one Triton (local tritonserver, signal's python model) scoring the same batch
   with frames in the gRPC message vs system shared memory vs CUDA shared memory (GPU hosts with
   cuda-python), through the gateway's own ``TritonBackend``; requests/s and MB/s of frames.

Run: ``.venv/bin/python loadtests/bench_compile.py [--smoke] [--skip-transport]``. Results go to
``loadtests/results/bench_compile.json``; a Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _time(fn, iters: int) -> float:
    """Seconds per call, synchronised on CUDA."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def qwen2vl(smoke: bool):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    if smoke:
        text = dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
        )
        vision = dict(depth=2, embed_dim=64, hidden_size=64, num_heads=4)
    else:  # Qwen2-VL-2B-Instruct's shapes
        text = dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
        )
        vision = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=151936 if not smoke else 1024, max_position_embeddings=32768,
                         bos_token_id=None if smoke else 151643, eos_token_id=None if smoke else 151645,
                         rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24] if not smoke else [2, 3, 3],
                                          "rope_theta": 1e6}, **text),
        vision_config=dict(mlp_ratio=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, **vision),
    )  # fmt: skip
    return Qwen2VLForConditionalGeneration(config).eval()


def clip_l(smoke: bool):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if smoke:
        config = CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=16,
        )
    else:  # ViT-L/14 at 224 px
        config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  image_size=224, patch_size=14, projection_dim=768)  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


def compile_cases(smoke: bool, device: str, dtype: torch.dtype) -> list[tuple[str, int, object]]:
    """(name, items per call, forward) for each benchmarked model."""
    from models import signal
    from models.videoalign.model import video_patches

    cases = []
    qwen = qwen2vl(smoke).to(device, dtype).model
    frames, side = (4, 56) if smoke else (16, 448)
    clip = torch.randint(0, 256, (frames, side, side, 3), dtype=torch.uint8, device=device)
    patches, grid = video_patches(clip)
    patches, grid_t = patches.to(dtype), torch.tensor([grid], device=device)
    prompt = torch.randint(0, 1000, (1, 128 if not smoke else 16), device=device)

    def videoalign_forward():
        video = qwen.get_video_features(patches, grid_t).pooler_output
        video = torch.cat(list(video)) if isinstance(video, (list, tuple)) else video
        embeds = torch.cat([qwen.get_input_embeddings()(prompt)[0], video.to(dtype)])[None]
        return qwen.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]

    cases.append(("videoalign-2B" if not smoke else "videoalign-tiny", 1, videoalign_forward))
    vision = clip_l(smoke).to(device, dtype)
    size = vision.config.image_size
    pixels = torch.randn(64 if not smoke else 8, 3, size, size, device=device, dtype=dtype)
    cases.append(
        ("clip-L" if not smoke else "clip-tiny", len(pixels), lambda: vision(pixel_values=pixels).image_embeds)
    )
    b, t, s = (8, 32, 256) if not smoke else (2, 8, 64)
    frames_b = torch.randint(0, 256, (b, t, s, s, 3), dtype=torch.uint8, device=device)
    counts = torch.full((b,), t, device=device)
    cases.append(("signal", b, lambda: signal.forward(frames_b, counts)))
    return cases


def bench_compile(smoke: bool) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    iters = 3 if smoke else 20
    mode = "reduce-overhead" if device == "cuda" else None
    rows = []
    for name, items, forward in compile_cases(smoke, device, dtype):
        with torch.inference_mode():
            eager = _time(forward, iters)
            compiled_fn = torch.compile(forward, mode=mode)
            start = time.perf_counter()
            for _ in range(3):  # compile + CUDA graph capture (reduce-overhead records on the 3rd call)
                compiled_fn()
            warm = time.perf_counter() - start
            compiled = _time(compiled_fn, iters)
        rows.append({"model": name, "device": device, "dtype": str(dtype).removeprefix("torch."), "mode": mode or "default",
                     "eager_items_s": items / eager, "compiled_items_s": items / compiled, "speedup": eager / compiled,
                     "compile_warmup_s": warm})  # fmt: skip
        print(
            f"{name}: eager {items / eager:.1f}/s, inductor {items / compiled:.1f}/s ({eager / compiled:.2f}x)",
            flush=True,
        )
    return rows


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
    from models.registry import builtin_models
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
        repo = write_python_repo(Path(tmp) / "repo", builtin_models(), TritonOptions())
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
    parser.add_argument("--smoke", action="store_true", help="Tiny models, few iterations (CPU check).")
    parser.add_argument("--skip-transport", action="store_true")
    args = parser.parse_args()
    result = {"host": platform.node(), "torch": torch.__version__, "smoke": args.smoke,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}  # fmt: skip
    result["compile"] = bench_compile(args.smoke)
    result["transport"] = [] if args.skip_transport else bench_transport(args.smoke)
    out = ROOT / "loadtests" / "results" / "bench_compile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("\n| model | device | dtype | eager items/s | inductor items/s | speed-up | compile+warm-up s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in result["compile"]:
        print(
            f"| {r['model']} | {r['device']} | {r['dtype']} | {r['eager_items_s']:.2f} | {r['compiled_items_s']:.2f} | {r['speedup']:.2f}x | {r['compile_warmup_s']:.0f} |"
        )
    if result["transport"]:
        print("\n| transport | requests/s | frames MB/s | vs gRPC bytes |\n| --- | --- | --- | --- |")
        for r in result["transport"]:
            print(f"| {r['transport']} | {r['requests_s']:.2f} | {r['frames_MB_s']:.0f} | {r['vs_grpc']:.2f}x |")
    print(f"\nraw: {out}")


if __name__ == "__main__":
    main()
