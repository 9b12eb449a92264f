"""Build TensorRT plans from the exported ONNX parts, with the TensorRT Python API.

``build_all(onnx_dir, repo)`` reads ``onnx_dir/manifest.json`` (models/export.py) and builds each
part into ``repo/<part>/<version>/model.plan``, with one optimisation profile per entry of the
part's ``profiles`` (models/profiles.py), fp16 or bf16 kernels allowed (weights stay fp32 where a
layer needs it) and a timing cache shared across builds, so a rebuild on the same GPU skips most
kernel timing.

TensorRT is only importable in NVIDIA's containers (or where its native libraries were
installed); without it every entry point raises ``TensorRTMissing`` naming what is missing, and
``vrs compile engine`` exits with status 2.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from models import profiles

PRECISIONS = ("fp16", "bf16", "fp32")


class TensorRTMissing(RuntimeError):
    """TensorRT's Python API cannot be imported here."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:  # the PyPI wheels are stubs that fetch from NVIDIA's index; libraries may be absent
        raise TensorRTMissing(
            f"TensorRT's Python API is not installed (import tensorrt: {exc}). Build engines where the Triton "
            "that serves them runs, with the same TensorRT version: in nvcr.io/nvidia/tritonserver:<yy.mm>-py3 "
            "add the matching wheel (pip install tensorrt==<that image's TensorRT version>), or use "
            "nvcr.io/nvidia/tensorrt:<same yy.mm>-py3; a plan only loads in the TensorRT version that built it."
        ) from exc
    return trt


@dataclass(frozen=True)
class Built:
    part: str
    plan: Path
    seconds: float
    bytes: int


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    part_profiles: list[profiles.Profile],
    precision: str = "fp16",
    timing_cache: Path | None = None,
    workspace_gib: float = 8.0,
) -> Built:
    """Parse ``onnx_path``, add the profiles, build, write the serialized engine to ``plan_path``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    trt = import_tensorrt()
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 1024**3))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    for profile in part_profiles:
        shapes = builder.create_optimization_profile()
        for name, r in profile.items():
            shapes.set_shape(name, r.min, r.opt, r.max)
        config.add_optimization_profile(shapes)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(engine))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return Built(plan_path.parent.parent.name, plan_path, time.perf_counter() - start, plan_path.stat().st_size)


def build_all(
    onnx_dir: Path,
    repo: Path,
    parts: list[str] | None = None,
    precision: str = "fp16",
    timing_cache: Path | None = None,
    version: int = 1,
    workspace_gib: float = 8.0,
) -> list[Built]:
    """Build every part in ``onnx_dir/manifest.json`` (or those named) into ``repo``."""
    import_tensorrt()  # fail before reading anything large
    manifest_path = onnx_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no export manifest (run `vrs compile export` first)")
    manifest = json.loads(manifest_path.read_text())
    unknown = sorted(set(parts or ()) - set(manifest))
    if unknown:
        raise ValueError(f"parts {unknown} are not in {manifest_path} (exported: {sorted(manifest)})")
    built = []
    for name in parts or sorted(manifest):
        entry = manifest[name]
        built.append(
            build_plan(
                onnx_dir / entry["onnx"],
                repo / name / str(version) / "model.plan",
                profiles.from_json(entry["profiles"]),
                precision,
                timing_cache,
                workspace_gib,
            )  # fmt: skip
        )
    return built
