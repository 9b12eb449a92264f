"""``vrs score``: score video files or folders against a running server or in-process, with a progress
bar; print a table, or write JSON / CSV.

For evaluation jobs: a video that cannot be read or that the service refuses is reported on stderr
by its path and its own reason, and the others are still scored and written (exit status 1 says
some failed). A request the service refuses as a whole (too large, timed out, overloaded) is sent
again one video at a time, so only the videos at fault fail. A server that cannot be reached stops
the run; what was scored until then is still written (exit status 1). ``--fail-fast`` stops at the
first failure instead and writes nothing. Exit status 2: bad arguments, the service's refusals of
the arguments included (``ARGUMENT_CODES``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import ValidationError
from tqdm import tqdm
from vrs_client import APIError, AsyncClient
from vrs_wire.schemas import ErrorDetail, ItemScore, ScoreItem, ScoreRequest, ScoreResponse, ScoringOptions, VideoRef

from service import operations
from service.compose import build_engine
from service.errors import ServiceError
from service.ingest import EncodedVideo, ScoreInput

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".gif", ".ts", ".flv", ".ogv", ".mpg", ".mpeg"}
)
ScoreChunk = Callable[[list[bytes]], Awaitable[ScoreResponse]]
ARGUMENT_CODES = frozenset({"unknown_model", "bad_weights", "unknown_preset", "cannot_normalise", "missing_prompt"})
"""Codes of a request refused as a whole for what the command's arguments asked (models, weights,
preset, normalisation, prompt): every chunk would fail the same way, so the run stops, exit status 2."""


class Failed(Exception):
    """Videos of a chunk the service refused one by one: their indices in the chunk and why."""

    def __init__(self, reasons: dict[int, str]) -> None:
        super().__init__(f"{len(reasons)} videos refused")
        self.reasons = reasons


class ChunkRefused(Exception):
    """The service refused a chunk as a whole, not for the arguments (too large, timeout, overloaded,
    a dropped connection): its videos are sent again one by one; a single video's refusal is its failure."""


class Aborted(Exception):
    """The run cannot go on: the server cannot be reached, the engine cannot be built, the service
    refused the arguments (``status`` 2), or --fail-fast."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _refused(code: str, reason: str) -> Exception:
    """The exception for a request refused as a whole with ``code``: the arguments' fault, or the chunk's."""
    return Aborted(reason, status=2) if code in ARGUMENT_CODES else ChunkRefused(reason)


@dataclass
class Scores:
    """What a run has so far: the response's models and weights, a row per scored video, failures by path."""

    header: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


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
    p.add_argument("--fail-fast", action="store_true", help="Stop at the first video that fails; write nothing.")
    p.error = lambda message: _usage_error(message)  # one line on stderr, exit 2 (not argparse's usage dump)


def _usage_error(message: str) -> None:
    print(f"vrs score: {message}", file=sys.stderr)
    sys.exit(2)


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 every video scored; 1 some failed, or the run stopped (server unreachable,
    engine not built, --fail-fast); 2 bad arguments, or arguments the service refused. Messages on
    stderr; what was scored is written unless --fail-fast stopped the run or the arguments were bad."""
    try:
        options = _options(args)
        paths = find_videos(args.paths)
    except ValueError as exc:
        print(f"vrs score: {exc}", file=sys.stderr)
        return 2
    score = _score_local if args.local else _score_remote
    scores = Scores()
    try:
        asyncio.run(score(paths, args, options, scores))
        aborted = None
    except Aborted as exc:
        if args.fail_fast or exc.status == 2:
            print(f"vrs score: {exc}", file=sys.stderr)
            return exc.status
        aborted = exc
    for path, reason in scores.failures.items():
        print(f"vrs score: {path}: {reason}", file=sys.stderr)
    if scores.rows:
        rows = scores.rows
        report = {"models": scores.header["models"], "weights": scores.header["weights"], "results": rows}
        if args.json_path:
            _write(args.json_path, lambda f: json.dump(report, f, indent=2))
        if args.csv_path:
            _write(args.csv_path, lambda f: write_csv(rows, f))
        if "-" not in (args.json_path, args.csv_path):
            print(table(rows))
    if aborted is not None:
        print(f"vrs score: {aborted}", file=sys.stderr)
        unscored = len(paths) - len(scores.rows) - len(scores.failures)
        print(f"vrs score: stopped; {len(scores.failures)} failed and {unscored} not scored", file=sys.stderr)
        return aborted.status
    if scores.failures:
        print(f"vrs score: {len(scores.failures)} of {len(paths)} videos failed", file=sys.stderr)
        return 1
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The scoring options, checked as the wire checks them (ValueError with one line)."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.json_path == "-" and args.csv_path == "-":
        raise ValueError("--json - and --csv - both write to stdout; give one of them a file")
    if args.weights and args.preset:
        raise ValueError("give --weights or --preset, not both")
    options = {
        "models": args.models,
        "weights": parse_weights(args.weights) if args.weights else None,
        "preset": args.preset,
        "normalise": args.normalise,
    }
    try:
        ScoringOptions.model_validate(options)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(map(str, first['loc'])) or 'options'}: {first['msg']}") from None
    return {k: v for k, v in options.items() if v is not None}


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
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"--weights: {k!r} must be a number, got {json.dumps(v)}")
        return {str(k): float(v) for k, v in value.items()}
    try:
        return {k.strip(): float(v) for k, v in (pair.split("=", 1) for pair in text.split(",") if pair.strip())}
    except ValueError:
        raise ValueError(f"--weights: expected model.dim=w,... or JSON, got {text!r}") from None


async def _score_remote(paths: list[Path], args: argparse.Namespace, options: dict, scores: Scores) -> None:
    async with AsyncClient(args.server) as client:

        async def score_chunk(chunk: list[bytes]) -> ScoreResponse:
            try:
                return await client.score(chunk, args.prompt, **options)
            except APIError as exc:
                if exc.item is None:
                    raise _refused(exc.code, f"HTTP {exc.status} {exc.code}: {exc.message}") from None
                bad: list[APIError | ErrorDetail] = [exc, *exc.other_errors]
                raise Failed({e.item: f"{e.code}: {e.message}" for e in bad if e.item is not None}) from None
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # after the client's retries
                raise Aborted(f"cannot reach the server at {args.server}: {exc!r}") from None
            except httpx.HTTPError as exc:  # a read timeout, a connection dropped mid-request: this chunk's
                raise ChunkRefused(f"{type(exc).__name__}: {exc}") from None

        await _score_all(paths, args, score_chunk, scores)


async def _score_local(paths: list[Path], args: argparse.Namespace, options: dict, scores: Scores) -> None:
    """In this process, with the engine ``vrs serve`` would build from the same VRS_* settings."""
    try:
        engine = build_engine()
    except (ValueError, OSError) as exc:  # a configured model that is not there, an unreadable checkpoint
        raise Aborted(f"cannot build the engine from VRS_* settings: {exc}") from None

    async def score_chunk(chunk: list[bytes]) -> ScoreResponse:
        body = ScoreRequest(
            items=[ScoreItem(video=VideoRef(file=str(i)), prompt=args.prompt) for i in range(len(chunk))], **options
        )
        try:
            return await operations.score(engine, body, [ScoreInput(EncodedVideo(d), args.prompt) for d in chunk])
        except ServiceError as exc:
            if exc.item is None:
                raise _refused(exc.code, f"{exc.code}: {exc.message}") from None
            raise Failed({e.item: f"{e.code}: {e.message}" for e in [exc, *exc.others] if e.item is not None}) from None

    try:
        await engine.start()
        ready, reason = await engine.ready()
        if not ready:
            raise Aborted(f"the {engine.settings.backend} backend is not ready: {reason}")
        await _score_all(paths, args, score_chunk, scores)
    finally:
        await engine.stop()


async def _score_all(paths: list[Path], args: argparse.Namespace, score_chunk: ScoreChunk, scores: Scores) -> None:
    """Score in chunks of ``--batch-size`` with a progress bar on stderr, into ``scores`` (so what was
    scored survives an Aborted); rows carry each video's path, unreadable videos go to the failures."""
    with tqdm(total=len(paths), unit="video", file=sys.stderr, desc="scoring") as bar:
        for chunk in _chunks(paths, args.batch_size):
            readable: list[tuple[Path, bytes]] = []
            for path, data in zip(chunk, await asyncio.gather(*(_read(p) for p in chunk))):
                if isinstance(data, OSError):
                    scores.failures[str(path)] = f"cannot read: {data.strerror or data}"
                else:
                    readable.append((path, data))
            await _score_files(readable, score_chunk, scores, args.fail_fast)
            if scores.failures and args.fail_fast:
                failed, reason = next(iter(scores.failures.items()))
                raise Aborted(f"{failed}: {reason} (--fail-fast: nothing written)")
            bar.update(len(chunk))


async def _score_files(
    files: list[tuple[Path, bytes]], score_chunk: ScoreChunk, scores: Scores, fail_fast: bool
) -> None:
    """Score ``files`` in one request. Videos the service refuses go to the failures by path, with
    their own reasons, and the rest is sent again; a request refused as a whole is sent again one
    video at a time. With ``fail_fast``, nothing more is sent after a failure."""
    while files and not (scores.failures and fail_fast):
        try:
            response = await score_chunk([data for _, data in files])
        except Failed as exc:
            scores.failures |= {str(files[i][0]): reason for i, reason in exc.reasons.items()}
            files = [f for i, f in enumerate(files) if i not in exc.reasons]
            continue
        except ChunkRefused as exc:
            if len(files) == 1:
                scores.failures[str(files[0][0])] = str(exc)
            else:
                for one in files:
                    await _score_files([one], score_chunk, scores, fail_fast)
            return
        scores.header = {"models": [m.model_dump() for m in response.models], "weights": response.weights}
        scores.rows += [_row(path, item) for (path, _), item in zip(files, response.results)]
        return


async def _read(path: Path) -> bytes | OSError:
    try:
        return await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        return exc


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

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

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
