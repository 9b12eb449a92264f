"""ONNX export at the published sizes: `vrs compile export` of Qwen2-VL-2B's vision tower and CLIP
ViT-L/14's towers (random weights, models/random_checkpoints.py), run in onnxruntime (CPU) against
the torch forward.

tests/test_export.py exports the tiny checkpoints; this checks what only the real shapes show
(32 vision blocks of 16 heads, 2.7 GB of float32 weights: past protobuf's 2 GB, so the vision
tower's weights go to ``videoalign.vision.onnx.data``). CPU only, a few minutes and ~17 GB of RAM:

    .venv/bin/python loadtests/check_full_size_export.py --out loadtests/results-cpu/full_size_export.md

``--checkpoints DIR`` reuses checkpoints written earlier by ``python -m models.random_checkpoints DIR``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from models import contract, export, random_checkpoints  # noqa: E402
from models.clip_segmental.model import crop_pixels  # noqa: E402
from models.registry import load_model  # noqa: E402
from models.videoalign.model import video_patches  # noqa: E402
from tests import tensorrt_onnx_support, videos  # noqa: E402

BASE_ID = "Qwen/Qwen2-VL-2B-Instruct"
PROMPTS = ["a cat surfing a wave at sunset", " ".join(["a crowded market at dusk with lanterns"] * 12)]


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def size_mb(onnx: Path) -> float:
    return sum(p.stat().st_size for p in onnx.parent.glob(onnx.name + "*")) / 1e6  # with external data


def check_vision(dirs: dict[str, Path], onnx: Path) -> list[tuple]:
    model = load_model("videoalign", dirs["videoalign"], {BASE_ID: dirs["base"]})
    qwen = model.forward.__self__.model.model
    graph, rows = session(onnx), []
    for n, h, w in [(4, 112, 168), (6, 224, 224), (16, 448, 448)]:
        patches, grid = video_patches(torch.from_numpy(videos.moving_scene(n, h, w)))
        p, pos = export.vision_inputs(patches, grid)
        start = time.perf_counter()
        (got,) = graph.run(None, {contract.PATCHES: p.numpy(), contract.POSITIONS: pos.numpy()})
        seconds = time.perf_counter() - start
        with torch.inference_mode():
            expected = qwen.get_video_features(patches, torch.tensor([grid])).pooler_output
        expected = torch.cat(list(expected)) if isinstance(expected, (tuple, list)) else expected
        diff = float(np.abs(got.reshape(expected.shape) - expected.numpy()).max())
        rows.append(
            (
                "videoalign.vision",
                f"{n} frames {h}x{w} -> {tuple(got.shape)}",
                diff,
                float(expected.abs().max()),
                seconds,
            )
        )
    return rows


def check_clip(dirs: dict[str, Path], onnx_dir: Path) -> list[tuple]:
    model = load_model("clip-segmental", dirs["clip-segmental"])
    scorer, rows = model.forward.__self__, []
    s = scorer.config.segments
    frames = torch.from_numpy(np.stack([videos.moving_scene(s, 240, 320, speed=v) for v in (1.0, 3.0)]))
    pixels = crop_pixels(frames.flatten(0, 1), scorer.image_size, scorer.mean, scorer.std, "instructvideo")
    start = time.perf_counter()
    (got,) = session(onnx_dir / "clip-segmental.image.onnx").run(
        None, {contract.PIXELS: pixels.reshape(2, s, *pixels.shape[1:]).numpy()}
    )
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        expected = scorer.image_embeddings(frames.flatten(0, 1), "instructvideo").reshape(2, s, -1).numpy()
    rows.append(
        ("clip-segmental.image", f"2 x {s} crops -> {got.shape}", float(np.abs(got - expected).max()), 1.0, seconds)
    )
    from models.tokens import tokeniser

    ids, mask = tokeniser("clip-segmental", dirs["clip-segmental"])(PROMPTS)
    start = time.perf_counter()
    (got,) = session(onnx_dir / "clip-segmental.text.onnx").run(
        None, {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}
    )
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        expected = scorer.text_embeddings(PROMPTS).numpy()
    what = f"2 prompts, {ids.shape[1]} tokens (one truncated) -> {got.shape}"
    rows.append(("clip-segmental.text", what, float(np.abs(got - expected).max()), 1.0, seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests/results-cpu/full_size_export.md")
    parser.add_argument("--checkpoints", type=Path, default=None, help="random checkpoints written earlier")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vrs-full-export-") as tmp:
        work = Path(tmp)
        root = args.checkpoints or work / "checkpoints"
        dirs = {
            "base": root / "Qwen2-VL-2B-Instruct",
            "videoalign": root / "VideoReward",
            "clip-segmental": root / "clip-vit-large-patch14",
        }
        if not all(d.is_dir() for d in dirs.values()):
            dirs = random_checkpoints.build_all(root)
        onnx_dir = work / "onnx"
        command = [
            sys.executable, "-m", "service.cli", "compile", "export", "--out", str(onnx_dir),
            "--models", "videoalign", "clip-segmental", "--model-dir", f"videoalign={dirs['videoalign']}",
            "--model-dir", f"clip-segmental={dirs['clip-segmental']}", "--base-model-dir", f"{BASE_ID}={dirs['base']}",
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        export_s = time.perf_counter() - start
        sizes = {p.stem: size_mb(p) for p in onnx_dir.glob("*.onnx")}
        refused = {p.stem: tensorrt_onnx_support.refused(p) for p in onnx_dir.glob("*.onnx")}
        rows = check_vision(dirs, onnx_dir / "videoalign.vision.onnx") + check_clip(dirs, onnx_dir)
    lines = [
        "# ONNX export at the published sizes (random weights), onnxruntime CPU vs torch",
        "",
        f"`{' '.join(['vrs', *command[3:5], '...'])}` of videoalign + clip-segmental: {export_s:.0f} s.",
        f"torch {torch.__version__}, onnxruntime {ort.__version__}; command: "
        "`.venv/bin/python loadtests/check_full_size_export.py`",
        "",
        "| part | ONNX (MB, with external data) | input -> output | max abs diff | output max abs | onnxruntime s |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| `{p}` | {sizes[p]:,.0f} | {what} | {d:.2e} | {scale:.2f} | {s:.2f} |" for p, what, d, scale, s in rows
    ]
    lines += [
        "",
        "What TensorRT 10.0's ONNX parser would refuse (operators and input types against onnx-tensorrt's "
        "table, tests/tensorrt_onnx_support.py):",
        "",
        *(f"- `{p}`: {', '.join(r) or 'nothing'}" for p, r in sorted(refused.items())),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
