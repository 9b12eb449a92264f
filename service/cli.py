"""The ``vrs`` command."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from service import compile_command, score_command, triton_command
from service.telemetry import configure_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vrs", description="Video reward-model service.")
    # Bad arguments: one line on stderr and exit 2, not argparse's usage dump.
    parser.error = _one_line_error  # type: ignore[method-assign]  # argparse offers no hook for this
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="Run the HTTP gateway (settings from VRS_* environment variables). One process: scale out with "
        "replicas (README 'Deploy'). SIGTERM drains for VRS_SHUTDOWN_GRACE_S, then exits.",
    )
    serve.add_argument("--host", default=None, help="Bind address (default: VRS_HOST or 127.0.0.1).")
    serve.add_argument("--port", type=int, default=None, help="Port (default: VRS_PORT or 8000).")
    serve.add_argument("--log-level", default="info")
    score_command.add_parser(sub)
    triton_command.add_parser(sub)
    compile_command.add_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "score":
        sys.exit(score_command.run(args))
    if args.command == "compile":
        sys.exit(compile_command.run(args))
    if args.command == "triton":
        return triton_command.run(args)

    if args.command == "serve":
        from service import lifecycle
        from service.api import create_app
        from service.config import Settings

        overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
        settings = Settings(**overrides)
        configure_logging(args.log_level)
        app = create_app(settings)
        lifecycle.serve(app, settings.host, settings.port)


def _one_line_error(message: str) -> NoReturn:
    print(f"vrs: {message} (see vrs --help)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
