"""``vrs score``: score video files or folders against a running server or in-process, with a progress
bar; print a table, or write JSON / CSV."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx
from tqdm import tqdm

from models.registry import builtin_models
from service import operations
from service.backends.inprocess import InProcessBackend
from service.config import Settings
from service.engine import Engine, ScoreInput
from service.errors import ServiceError
from service.ingest import EncodedVideo
from vrs_wire.schemas import ItemScore, ScoreRequest, ScoreResponse
from vrs_client import APIError, AsyncClient

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".gif", ".ts", ".flv", ".ogv", ".mpg", ".mpeg"}
)
ScoreChunk = Callable[[list[Path]], Awaitable[ScoreResponse]]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="Score video files or folders (against --server, or in-process with --local).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="Video files, or folders searched for videos by extension.")
    p.add_argument("--prompt", default=None, help="Prompt the videos were generated from (one for all).")
    p.add_argument("--model", action="append", dest="models", default=None, help="Model to score with (repeatable).")
    p.add_argument("--weights", default=None, help='JSON {"model.dim": w} or model.dim=w,model.dim=w.')
    p.add_argument("--preset", default=None, help="A named weight preset from the server's configuration.")
    p.add_argument("--normalise", action="store_true", help="Normalise each dimension by the model's mean/std.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--server", default="http://127.0.0.1:8000", help="Gateway URL (default %(default)s).")
    where.add_argument("--local", action="store_true", help="Score in this process (VRS_* settings), no server.")
    p.add_argument("--json", dest="json_path", default=None, metavar="FILE", help="Write JSON ('-': stdout).")
    p.add_argument("--csv", dest="csv_path", default=None, metavar="FILE", help="Write CSV ('-': stdout).")
    p.add_argument("--batch-size", type=int, default=8, help="Videos per request (default %(default)s).")


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 scored, 1 the service refused (message on stderr)."""
    try:
        paths = find_videos(args.paths)
        options = {
            "models": args.models,
            "weights": parse_weights(args.weights) if args.weights else None,
            "preset": args.preset,
            "normalise": args.normalise,
        }
    except ValueError as exc:
        print(f"vrs score: {exc}", file=sys.stderr)
        return 2
    score = _score_local if args.local else _score_remote
    try:
        header, rows = asyncio.run(score(paths, args, options))
    except (ServiceError, APIError, httpx.HTTPError, OSError) as exc:  # refused, unreachable, unreadable
        print(f"vrs score: {exc}", file=sys.stderr)
        return 1
    report = {"models": header["models"], "weights": header["weights"], "results": rows}
    if args.json_path:
        _write(args.json_path, lambda f: json.dump(report, f, indent=2))
    if args.csv_path:
        _write(args.csv_path, lambda f: write_csv(rows, f))
    if "-" not in (args.json_path, args.csv_path):
        print(table(rows))
    return 0


def find_videos(paths: list[str]) -> list[Path]:
    """Files as given; folders searched recursively for video extensions (sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"no such file or folder: {raw}")
    if not found:
        raise ValueError(f"no videos found in {', '.join(paths)}")
    return found


def parse_weights(text: str) -> dict[str, float]:
    """``{"signal.sharpness": 2}`` or ``signal.sharpness=2,signal.exposure=1``."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--weights is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("--weights JSON must be an object")
        return {str(k): float(v) for k, v in value.items()}
    try:
        return {k.strip(): float(v) for k, v in (pair.split("=", 1) for pair in text.split(",") if pair.strip())}
    except ValueError:
        raise ValueError(f"--weights: expected model.dim=w,... or JSON, got {text!r}") from None


async def _score_remote(paths: list[Path], args: argparse.Namespace, options: dict) -> tuple[dict, list[dict]]:
    given = {k: v for k, v in options.items() if v is not None}
    async with AsyncClient(args.server) as client:
        return await _score_all(paths, args.batch_size, lambda chunk: client.score(chunk, args.prompt, **given))


async def _score_local(paths: list[Path], args: argparse.Namespace, options: dict) -> tuple[dict, list[dict]]:
    settings = Settings()
    available = builtin_models()
    models = {name: available[name] for name in settings.models if name in available}
    engine = Engine(settings, models, InProcessBackend(models, settings.inference_threads))

    async def score_chunk(chunk: list[Path]) -> ScoreResponse:
        body = ScoreRequest(items=[{"video": {"file": str(p)}, "prompt": args.prompt} for p in chunk], **options)
        data = await asyncio.gather(*(asyncio.to_thread(p.read_bytes) for p in chunk))
        return await operations.score(engine, body, [ScoreInput(EncodedVideo(d), args.prompt) for d in data])

    await engine.start()
    try:
        return await _score_all(paths, args.batch_size, score_chunk)
    finally:
        await engine.stop()


async def _score_all(paths: list[Path], batch_size: int, score_chunk: ScoreChunk) -> tuple[dict, list[dict]]:
    """Score in chunks of ``batch_size`` with a progress bar on stderr; rows carry each video's path."""
    rows: list[dict[str, Any]] = []
    header: dict[str, Any] = {}
    with tqdm(total=len(paths), unit="video", file=sys.stderr, desc="scoring") as bar:
        for chunk in _chunks(paths, max(1, batch_size)):
            response = await score_chunk(chunk)
            header = {"models": [m.model_dump() for m in response.models], "weights": response.weights}
            rows += [_row(path, item) for path, item in zip(chunk, response.results, strict=True)]
            bar.update(len(chunk))
    return header, rows


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _row(path: Path, item: ItemScore) -> dict[str, Any]:
    return {"path": str(path), "overall": item.overall, "scores": item.scores, "cached": item.cached}


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: path, overall, then every dimension (4 decimals)."""
    keys = list(rows[0]["scores"])
    head = ["path", "overall", *keys]
    body = [[r["path"], f"{r['overall']:.4f}", *(f"{r['scores'][k]:.4f}" for k in keys)] for r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join(line(cells) for cells in [head, *body])


def write_csv(rows: list[dict[str, Any]], out: TextIO) -> None:
    keys = list(rows[0]["scores"])
    writer = csv.writer(out)
    writer.writerow(["path", "overall", *keys, "cached"])
    for r in rows:
        writer.writerow([r["path"], r["overall"], *(r["scores"][k] for k in keys), r["cached"]])


def _write(target: str, dump: Callable[[TextIO], None]) -> None:
    if target == "-":
        dump(sys.stdout)
        sys.stdout.write("\n")
        return
    with open(target, "w", newline="") as f:
        dump(f)
