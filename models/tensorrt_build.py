"""Build TensorRT plans from the exported ONNX parts, with the TensorRT Python API.

``build_all(onnx_dir, repo)`` reads ``onnx_dir/manifest.json`` (models/export.py) and builds each
part into ``repo/<part>/<version>/model.plan``, with one optimisation profile per entry of the
part's ``profiles`` (models/profiles.py), fp16 or bf16 kernels allowed (weights stay fp32 where a
layer needs it) and a timing cache shared across builds, so a rebuild on the same GPU skips most
kernel timing.

A plan loads only with the TensorRT version that built it, on the GPU model it was built for.
With ``cache`` (a volume shared by restarts and replicas) each plan is kept under a key of what
determines it: the ONNX graph and its weights, the profiles, the precision, the TensorRT version
and the GPU; a later build with the same key copies the plan instead of building it (a Triton pod
restarting on the same kind of GPU starts in seconds, not minutes). The timing cache lives there too.

TensorRT is only importable in NVIDIA's containers (or where its native libraries were
installed); without it every entry point raises ``TensorRTMissing`` naming what is missing, and
``vrs compile engine`` exits with status 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from models import profiles

PRECISIONS = ("fp16", "bf16", "fp32")


class TensorRTMissing(RuntimeError):
    """TensorRT's Python API cannot be imported here."""


def import_tensorrt():
    """TensorRT's Python API: ``tensorrt`` (NVIDIA's full wheels), else ``tensorrt_bindings`` (the
    bindings-only wheel over an image's own libraries, as the deploy Dockerfile installs it)."""
    try:
        import tensorrt as trt
    except ImportError:
        pass
    else:
        return trt
    try:
        import tensorrt_bindings as trt
    except ImportError as exc:  # the PyPI wheels are stubs that fetch from NVIDIA's index; libraries may be absent
        raise TensorRTMissing(
            f"TensorRT's Python API is not installed (import tensorrt, import tensorrt_bindings: {exc}). "
            "Build engines where the Triton that serves them runs, with the same TensorRT version: in "
            "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 add the bindings that match its TensorRT (the deploy "
            "Dockerfile's triton stage does), or use nvcr.io/nvidia/tensorrt:<same yy.mm>-py3; a plan only "
            "loads in the TensorRT version that built it."
        ) from exc
    return trt


@dataclass(frozen=True)
class Built:
    part: str
    plan: Path
    seconds: float
    bytes: int
    cached: bool = False  # copied from the engine cache, not built


@dataclass(frozen=True)
class Toolchain:
    """What builds plans, and the target they are then tied to (TensorRT version and GPU model).
    ``build(onnx_path, plan_path, profiles, precision, timing_cache)`` writes one plan."""

    target: str
    build: Callable[[Path, Path, list[profiles.Profile], str, Path | None], None]


def tensorrt_toolchain(workspace_gib: float = 8.0) -> Toolchain:
    """TensorRT on this machine's first GPU (raises TensorRTMissing where TensorRT is absent)."""
    trt = import_tensorrt()
    return Toolchain(f"TensorRT {trt.__version__} on {gpu_name()}", partial(build_plan, workspace_gib=workspace_gib))


def gpu_name() -> str:
    """The GPU plans are built for: its name and compute capability (from torch, which the image has)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{torch.cuda.get_device_name()} sm_{major}{minor}"
    except Exception:  # noqa: BLE001 - an unknown GPU only means plans are not shared with other GPUs
        pass
    return "unknown GPU"


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    part_profiles: list[profiles.Profile],
    precision: str = "fp16",
    timing_cache: Path | None = None,
    workspace_gib: float = 8.0,
) -> None:
    """Parse ``onnx_path``, add the profiles, build, write the serialized engine to ``plan_path``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    trt = import_tensorrt()
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
    _write_atomically(plan_path, bytes(engine))
    if timing_cache is not None:
        _write_atomically(timing_cache, bytes(config.get_timing_cache().serialize()))


def plan_key(onnx_path: Path, part_profiles: list[profiles.Profile], precision: str, target: str) -> str:
    """Hash of everything a plan depends on: the graph file and its external weights, the
    profiles, the precision and the target (TensorRT version and GPU)."""
    digest = hashlib.sha256()
    for path in sorted(onnx_path.parent.glob(f"{onnx_path.name}*")):  # <part>.onnx and <part>.onnx.data
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    digest.update(json.dumps([profiles.as_json(part_profiles), precision, target]).encode())
    return digest.hexdigest()[:32]


def build_all(
    onnx_dir: Path,
    repo: Path,
    parts: list[str] | None = None,
    precision: str = "fp16",
    timing_cache: Path | None = None,
    version: int = 1,
    cache: Path | None = None,
    toolchain: Toolchain | None = None,
) -> list[Built]:
    """Build every part in ``onnx_dir/manifest.json`` (or those named) into ``repo``, reusing and
    filling ``cache`` when given (its timing cache too, unless ``timing_cache`` names another).
    ``toolchain`` defaults to TensorRT here (tests, which cannot have TensorRT, pass a stand-in)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    toolchain = toolchain or tensorrt_toolchain()  # fails before reading anything large
    manifest_path = onnx_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no export manifest (run `vrs compile export` first)")
    manifest = json.loads(manifest_path.read_text())
    unknown = sorted(set(parts or ()) - set(manifest))
    if unknown:
        raise ValueError(f"parts {unknown} are not in {manifest_path} (exported: {sorted(manifest)})")
    if cache is not None and timing_cache is None:
        timing_cache = cache / f"timing-{hashlib.sha256(toolchain.target.encode()).hexdigest()[:16]}.cache"
    built = []
    for name in parts or sorted(manifest):
        onnx_path, part_profiles = onnx_dir / manifest[name]["onnx"], profiles.from_json(manifest[name]["profiles"])
        plan = repo / name / str(version) / "model.plan"
        start = time.perf_counter()
        kept = (
            cache / name / f"{plan_key(onnx_path, part_profiles, precision, toolchain.target)}.plan" if cache else None
        )
        hit = kept is not None and kept.is_file()
        if hit:
            assert kept is not None  # hit
            _write_atomically(plan, kept)
        else:
            toolchain.build(onnx_path, plan, part_profiles, precision, timing_cache)
            if kept is not None:
                _write_atomically(kept, plan)
        built.append(Built(name, plan, time.perf_counter() - start, plan.stat().st_size, hit))
    return built


def _write_atomically(path: Path, data: bytes | Path) -> None:
    """Write ``data`` (bytes, or a file's content, copied without reading it into memory) to
    ``path`` via a temporary file and a rename, so a replica sharing the cache volume never reads
    half a plan."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        if isinstance(data, Path):
            with open(data, "rb") as source:
                shutil.copyfileobj(source, tmp)
        else:
            tmp.write(data)
    os.replace(tmp.name, path)
