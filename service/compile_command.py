"""``vrs compile``: ONNX export of the compiled parts, and TensorRT engine builds from them.

    vrs compile export --out ONNX_DIR [--models signal clip-segmental videoalign] [--model-dir NAME=PATH ...]
    vrs compile engine --onnx ONNX_DIR --repo REPO [--precision fp16|bf16|fp32] [--cache DIR] [--timing-cache FILE]

``export`` loads the models as the gateway does (VRS_MODELS, VRS_MODEL_DIRS, VRS_BASE_MODEL_DIRS,
extended by flags) and writes ``<part>.onnx`` + ``manifest.json``. ``engine`` builds each part's
plan into ``REPO/<part>/<version>/model.plan`` (the repository ``vrs triton --variant tensorrt``
writes around them), reusing plans from ``--cache`` built for the same graph, TensorRT and GPU;
without TensorRT it exits with status 2 and says what is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_NO_TENSORRT = 2


def add_parser(sub) -> None:
    compile_ = sub.add_parser("compile", help="Export models to ONNX and build TensorRT engines from them.")
    steps = compile_.add_subparsers(dest="compile_command", required=True)
    export = steps.add_parser("export", help="Write ONNX for each model's compiled parts, with a manifest of profiles.")
    export.add_argument("--out", type=Path, required=True, help="Directory for <part>.onnx and manifest.json.")
    export.add_argument("--models", nargs="+", default=None, help="Models to export (default: VRS_MODELS).")
    export.add_argument(
        "--model-dir", action="append", default=[], metavar="NAME=PATH", help="As in VRS_MODEL_DIRS (repeatable)."
    )
    export.add_argument(
        "--base-model-dir", action="append", default=[], metavar="ID=PATH", help="As in VRS_BASE_MODEL_DIRS."
    )
    export.add_argument(
        "--max-batch-size", type=int, default=None, help="Batch bound of the profiles (default: each spec's)."
    )

    engine = steps.add_parser(
        "engine", help="Build TensorRT plans from an export (needs TensorRT: NVIDIA's Triton image)."
    )
    engine.add_argument("--onnx", type=Path, required=True, help="The directory `vrs compile export` wrote.")
    engine.add_argument(
        "--repo", type=Path, required=True, help="Model repository: plans go to <part>/<version>/model.plan."
    )
    engine.add_argument(
        "--parts", nargs="+", default=None, help="Parts to build (default: every part in the manifest)."
    )
    engine.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    engine.add_argument("--timing-cache", type=Path, default=None, help="TensorRT timing cache file, read and updated.")
    engine.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="Engine cache directory (a volume): plans are reused when the graph, profiles, precision, TensorRT "
        "version and GPU are the same, and stored there after a build; holds the timing cache unless --timing-cache.",
    )
    engine.add_argument("--workspace-gib", type=float, default=8.0)
    engine.add_argument("--version", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    if args.compile_command == "export":
        return _export(args)
    return _engine(args)


def _export(args: argparse.Namespace) -> int:
    from models import export
    from service.triton_command import requested_models

    models, _, _, _ = requested_models(args, "vrs compile export")
    for model in models.values():
        for done in export.export(model, args.out, args.max_batch_size):
            print(f"{done.part.name}: {done.path} ({len(done.profiles)} profile(s))", flush=True)
    return 0


def _engine(args: argparse.Namespace) -> int:
    from models.tensorrt_build import TensorRTMissing, build_all, tensorrt_toolchain

    try:
        built = build_all(
            args.onnx, args.repo, args.parts, args.precision, args.timing_cache, args.version, args.cache,
            tensorrt_toolchain(args.workspace_gib),
        )  # fmt: skip
    except TensorRTMissing as exc:
        print(f"vrs compile engine: {exc}", file=sys.stderr)
        return EXIT_NO_TENSORRT
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"vrs compile engine: {exc}", file=sys.stderr)
        return 1
    for b in built:
        how = "from the engine cache" if b.cached else "built"
        print(f"{b.part}: {b.plan} ({b.bytes / 2**20:.1f} MiB, {how} in {b.seconds:.0f} s)", flush=True)
    return 0
