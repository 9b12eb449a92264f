"""``vrs triton``: generate the model repository and serve it with the tritonserver from nvidia-pytriton."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from models.triton_repo import TritonOptions


def add_parser(sub) -> None:
    """Register ``vrs triton`` on the ``vrs`` subcommand parser."""
    triton = sub.add_parser(
        "triton", help="Generate a Triton model repository and serve it with the tritonserver bundled in nvidia-pytriton."
    )
    triton.add_argument("--repo", type=Path, default=Path("triton-repo"), help="Model repository to (re)generate.")
    triton.add_argument("--models", nargs="+", default=None, help="Models to put in it (default: VRS_MODELS).")
    triton.add_argument("--host", default="127.0.0.1")
    triton.add_argument("--grpc-port", type=int, default=8001)
    triton.add_argument("--http-port", type=int, default=8003, help="Triton's HTTP port (8000 is the gateway's).")
    triton.add_argument("--metrics-port", type=int, default=8002)
    triton.add_argument("--max-batch-size", type=int, default=None, help="Default: each model's spec.")
    triton.add_argument("--max-queue-delay-us", type=int, default=TritonOptions.max_queue_delay_us)
    triton.add_argument("--max-queue-size", type=int, default=TritonOptions.max_queue_size)
    triton.add_argument("--queue-timeout-us", type=int, default=TritonOptions.queue_timeout_us)
    triton.add_argument("--instances", type=int, default=TritonOptions.instances)
    triton.add_argument("--verbose", action="store_true", help="Triton's verbose log.")


def run(args: argparse.Namespace) -> None:
    """Write the repository, start tritonserver over it, and stay in the foreground until stopped."""
    from models.registry import builtin_models
    from models.triton_repo import write_python_repo
    from service.config import Settings
    from service.triton_server import LocalTriton

    available = builtin_models()
    names = args.models or Settings().models
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; available: {sorted(available)}")
    options = TritonOptions(
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size,
        queue_timeout_us=args.queue_timeout_us,
        instances=args.instances,
    )
    repo = write_python_repo(args.repo.resolve(), {n: available[n] for n in names}, options)
    server = LocalTriton(
        repo, args.grpc_port, args.http_port, args.metrics_port, host=args.host, verbose=args.verbose, inherit_output=True
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the server on SIGTERM too
    try:
        server.start()
        print(f"Triton ready: gRPC {server.grpc_url}, repository {repo}; set VRS_BACKEND=triton VRS_TRITON_URL={server.grpc_url}", flush=True)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
