"""``vrs triton``: generate the model repository and serve it with the tritonserver from nvidia-pytriton."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from models.triton_repo import TritonOptions

if TYPE_CHECKING:
    from models.registry import RewardModel
    from service.config import Settings


def add_parser(sub) -> None:
    """Register ``vrs triton`` on the ``vrs`` subcommand parser."""
    triton = sub.add_parser(
        "triton",
        help="Generate a Triton model repository and serve it with the tritonserver bundled in nvidia-pytriton.",
    )
    triton.add_argument("--repo", type=Path, default=Path("triton-repo"), help="Model repository to (re)generate.")
    triton.add_argument("--models", nargs="+", default=None, help="Models to put in it (default: VRS_MODELS).")
    triton.add_argument(
        "--model-dir", action="append", default=[], metavar="NAME=PATH",
        help="Checkpoint directory of a learned model, as in VRS_MODEL_DIRS (which it extends; repeatable).",
    )  # fmt: skip
    triton.add_argument(
        "--base-model-dir", action="append", default=[], metavar="ID=PATH",
        help="Local directory of a base model a checkpoint names, as in VRS_BASE_MODEL_DIRS (extends it; repeatable).",
    )  # fmt: skip
    triton.add_argument("--host", default="127.0.0.1")
    triton.add_argument("--grpc-port", type=int, default=8001)
    triton.add_argument("--http-port", type=int, default=8003, help="Triton's HTTP port (8000 is the gateway's).")
    triton.add_argument("--metrics-port", type=int, default=8002)
    triton.add_argument("--max-batch-size", type=int, default=None, help="Default: each model's spec.")
    triton.add_argument("--max-queue-delay-us", type=int, default=TritonOptions.max_queue_delay_us)
    triton.add_argument("--max-queue-size", type=int, default=TritonOptions.max_queue_size)
    triton.add_argument("--queue-timeout-us", type=int, default=TritonOptions.queue_timeout_us)
    triton.add_argument("--instances", type=int, default=TritonOptions.instances)
    triton.add_argument(
        "--variant", choices=("python", "tensorrt"), default=None,
        help="python: the models' torch forwards (VRS_COMPILE=inductor compiles them); tensorrt: TensorRT plans "
        "from `vrs compile engine`, which the gateway calls with VRS_COMPILE=tensorrt. Default: tensorrt when "
        "VRS_COMPILE=tensorrt, else python (Triton and the gateway read the same settings).",
    )  # fmt: skip
    triton.add_argument("--verbose", action="store_true", help="Triton's verbose log.")
    triton.add_argument(
        "--write-only", action="store_true",
        help="Write the repository and exit, for another tritonserver to serve (the GPU image's init step).",
    )  # fmt: skip


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    """``["NAME=PATH", ...]`` -> ``{NAME: Path(PATH)}``."""
    out = {}
    for value in values:
        key, sep, path = value.partition("=")
        if not sep or not key or not path:
            raise SystemExit(f"{flag} takes NAME=PATH, got {value!r}")
        out[key] = Path(path)
    return out


def requested_models(
    args: argparse.Namespace, command: str
) -> tuple[dict[str, RewardModel], Settings, dict[str, Path], dict[str, Path]]:
    """The models ``--models`` (else ``VRS_MODELS``) names, loaded with the gateway's loader and
    settings plus ``--model-dir`` / ``--base-model-dir``, in that order; the settings; the checkpoint
    and base-model directories. A bad directory or an unknown name exits naming it (``command`` prefixes the message)."""
    from models.registry import ModelLoadError, builtin_models, load_models
    from service.config import Settings

    settings = Settings()
    names = args.models or settings.models
    model_dirs = settings.model_dirs | _pairs(args.model_dir, "--model-dir")
    base_dirs = settings.base_model_dirs | _pairs(args.base_model_dir, "--base-model-dir")
    try:
        available = builtin_models() | load_models(names, model_dirs, base_dirs)
    except ModelLoadError as exc:
        raise SystemExit(f"{command}: {exc}") from exc
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"{command}: unknown models {unknown}; available: {sorted(available)}")
    return {n: available[n] for n in names}, settings, model_dirs, base_dirs


def variant(args: argparse.Namespace, settings: Settings | None = None) -> str:
    """``--variant``, else the one VRS_COMPILE implies (tensorrt for tensorrt, python otherwise)."""
    if getattr(args, "variant", None):
        return args.variant
    from service.config import Settings

    return "tensorrt" if (settings or Settings()).compile == "tensorrt" else "python"


def write_repo(args: argparse.Namespace) -> Path:
    """Write the repository for the requested models. Checkpoint-backed models are loaded here once,
    with the gateway's loader and settings, for their specs and so that a bad directory stops the
    command naming the path before Triton starts; Triton's python model loads them again."""
    from models.placement import resolve
    from models.triton_repo import write_python_repo

    chosen, settings, model_dirs, base_dirs = requested_models(args, "vrs triton")
    options = TritonOptions(
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size,
        queue_timeout_us=args.queue_timeout_us,
        instances=args.instances,
        device=resolve(settings.device, settings.dtype).device.type,  # "cuda" -> KIND_GPU instances
        dtype=settings.dtype,
        compile=settings.compile if settings.compile == "inductor" else "none",
    )
    if variant(args, settings) == "tensorrt":
        from models.triton_repo import write_tensorrt_repo

        try:
            return write_tensorrt_repo(args.repo.resolve(), chosen, options, model_dirs)
        except ValueError as exc:
            raise SystemExit(f"vrs triton --variant tensorrt: {exc}") from exc
    return write_python_repo(args.repo.resolve(), chosen, options, model_dirs, base_dirs)


def run(args: argparse.Namespace) -> None:
    """Write the repository, start tritonserver over it, and stay in the foreground until stopped."""
    from service.triton_server import LocalTriton

    repo = write_repo(args)  # the models loaded for their specs are released before Triton loads them
    if args.write_only:
        print(f"Triton model repository written: {repo}", flush=True)
        return
    if variant(args) == "tensorrt":
        _check_plans_can_be_served(repo)
    server = LocalTriton(
        repo,
        args.grpc_port,
        args.http_port,
        args.metrics_port,
        host=args.host,
        verbose=args.verbose,
        inherit_output=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the server on SIGTERM too
    try:
        try:
            server.start()
        except RuntimeError as exc:  # Triton exited or never got ready; its log (above) says why
            raise SystemExit(f"vrs triton: {exc}") from exc
        print(
            f"Triton ready: gRPC {server.grpc_url}, repository {repo}; set VRS_BACKEND=triton VRS_TRITON_URL={server.grpc_url}",
            flush=True,
        )
        assert server.process is not None  # start() started it
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _check_plans_can_be_served(repo: Path) -> None:
    """Refuse, naming what is missing, to start a server that cannot load the plans: plans not built
    yet, or the tritonserver bundled with nvidia-pytriton, which has the python backend only."""
    from models.triton_repo import missing_plans
    from service.triton_server import bundled_backends

    missing = missing_plans(repo)
    if missing:
        raise SystemExit(
            f"vrs triton --variant tensorrt: no engine built yet for {', '.join(str(p) for p in missing)}; build them "
            f"with `vrs compile export --out ONNX_DIR` then `vrs compile engine --onnx ONNX_DIR --repo {repo}` "
            '(in NVIDIA\'s Triton image, README "Compiled models")'
        )
    if "tensorrt" not in bundled_backends():
        raise SystemExit(
            f"vrs triton --variant tensorrt: the tritonserver bundled with nvidia-pytriton has no TensorRT backend "
            f"(it has: {', '.join(bundled_backends())}); serve {repo} with NVIDIA's Triton image: "
            f"`tritonserver --model-repository={repo}`"
        )
