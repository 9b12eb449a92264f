"""Benchmark the service's ingest + decode + sample path against a tight PyAV decode loop.

For synthetic videos (``tests.videos``) of the design's shapes (T x H x W: 33x240x416,
53x480x480, 53x400x640, 49x512x512) in mp4 (H.264) and webm (VP9), and for a longer
240x480x480 clip encoded with a GOP of 16, it times in one process:

- ``pyav_loop``: the baseline trainers use today: decode every frame with PyAV
  (``thread_type="AUTO"``) and convert each to an RGB ndarray;
- ``service``: ``ingest.EncodedVideo(data)`` then ``decode.sample_frames(video, spec, limits)``
  (index, seek, decode, sample, resize);
- ``service_b64``: the same after ``ingest.decode_base64`` of the base64 text;
- ``raw_npy``: ``ingest.parse_npy`` of the frames as ``.npy`` then ``sample_frames``.

The spec is ``models.signal.SPEC`` (64 frames, so every frame of a short clip); the long
clip is also sampled at 2 fps (VideoAlign-like) to show what keyframe seeks save.

Source frames/s is the video's frame count divided by the median wall time of the whole
path; sampled frames/s counts the frames the path delivers. The paths measured on one
video run interleaved (round-robin, rotating order) after a warm-up, so ratios compare
like with like even on a busy machine. Torch keeps its default thread count.

Run: ``.venv/bin/python loadtests/bench_decode.py [--quick] [--out PATH]``. Results go to
``loadtests/results/bench_decode.json`` by default; a Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the service does (service/__init__.py)

import av  # noqa: E402
import torch  # noqa: E402

from models import signal  # noqa: E402
from models.spec import FrameSampling, ModelSpec  # noqa: E402
from service import decode, ingest  # noqa: E402
from tests import videos  # noqa: E402

FPS = 16
DESIGN_SHAPES = ((33, 240, 416), (53, 480, 480), (53, 400, 640), (49, 512, 512))
LONG_SHAPE = (240, 480, 480)
LONG_GOP = 16
LIMITS = decode.Limits(max_pixels=4096 * 2304, max_duration_s=600, max_total_frames=36000)
MAX_BYTES = 200 * 1024**2  # the service's default max_video_bytes
SPARSE_SPEC = signal.SPEC.model_copy(
    update={"sampling": FrameSampling(mode="fps", fps=2, min_frames=4, max_frames=768, multiple_of=2)}
)
SPECS = {"signal": signal.SPEC, "2fps": SPARSE_SPEC}
DEFAULT_OUT = ROOT / "loadtests" / "results" / "bench_decode.json"


@dataclass(frozen=True)
class Video:
    """One input as the service receives it: container bytes (mp4/webm) or ``.npy`` frames."""

    shape: tuple[int, int, int]  # T, H, W
    fmt: str  # "mp4", "webm" or "npy"
    payload: bytes
    gop: int | None = None

    @property
    def name(self) -> str:
        t, h, w = self.shape
        gop = f" gop{self.gop}" if self.gop else ""
        return f"{t}x{h}x{w} {self.fmt}{gop}"


@dataclass(frozen=True)
class Row:
    """One video scored for one spec: a line of the report."""

    video: Video
    spec_name: str

    @property
    def name(self) -> str:
        return f"{self.video.name} [{self.spec_name}]"


# --- inputs -----------------------------------------------------------------------------


def keyframe_count(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(p.is_keyframe for p in container.demux(container.streams.video[0]) if p.size)


def design_videos(shape: tuple[int, int, int]) -> list[Video]:
    frames = videos.moving_scene(*shape)
    encoded = [Video(shape, fmt, videos.encode(frames, fmt=fmt, fps=FPS)) for fmt in ("mp4", "webm")]
    return [*encoded, Video(shape, "npy", videos.npy_bytes(frames))]


def long_videos() -> list[Video]:
    frames = videos.moving_scene(*LONG_SHAPE)
    return [
        Video(LONG_SHAPE, fmt, videos.encode(frames, fmt=fmt, fps=FPS, gop=LONG_GOP), LONG_GOP)
        for fmt in ("mp4", "webm")
    ]


# --- the paths under test ---------------------------------------------------------------


def pyav_loop(data: bytes) -> int:
    """Baseline: decode every frame and convert it to RGB. Returns the number of frames."""
    count = 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def service_container(data: bytes, spec: ModelSpec) -> decode.Clip:
    return decode.sample_frames(ingest.EncodedVideo(data), spec, LIMITS)


def service_base64(text: str, spec: ModelSpec) -> decode.Clip:
    data = ingest.decode_base64(text, max_bytes=MAX_BYTES, what="data")
    return decode.sample_frames(ingest.EncodedVideo(data), spec, LIMITS)


def service_npy(data: bytes, spec: ModelSpec) -> decode.Clip:
    return decode.sample_frames(ingest.parse_npy(data, FPS), spec, LIMITS)


def row_paths(row: Row) -> dict[str, Callable[[], object]]:
    """The service paths timed for ``row`` (the PyAV baseline belongs to the video, not the row)."""
    spec, payload = SPECS[row.spec_name], row.video.payload
    if row.video.fmt == "npy":
        return {"raw_npy": partial(service_npy, payload, spec)}
    text = base64.b64encode(payload).decode("ascii")
    return {"service": partial(service_container, payload, spec), "service_b64": partial(service_base64, text, spec)}


# --- timing -----------------------------------------------------------------------------


def time_interleaved(tasks: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of ``repeats`` runs of each task, round-robin with a rotating start."""
    names = list(tasks)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            tasks[name]()
            times[name].append(time.perf_counter() - start)
    return times


def path_stats(runs: list[float], source_frames: int, delivered_frames: int) -> dict:
    median = statistics.median(runs)
    return {
        "median_s": median,
        "min_s": min(runs),
        "runs_s": runs,
        "source_fps": source_frames / median,
        "sampled_fps": delivered_frames / median,
    }


def measure_group(rows: list[Row], repeats: int) -> list[dict]:
    """Time every path of ``rows`` interleaved in one pool; check outputs on the warm-up run."""
    tasks: dict[str, Callable[[], object]] = {}
    for row in rows:
        if row.video.fmt != "npy":
            tasks[f"{row.video.name}: pyav_loop"] = partial(pyav_loop, row.video.payload)
        tasks.update({f"{row.name}: {path}": fn for path, fn in row_paths(row).items()})
    warm = {name: fn() for name, fn in tasks.items()}
    times = time_interleaved(tasks, repeats)
    return [summarise(row, warm, times) for row in rows]


def summarise(row: Row, warm: dict[str, object], times: dict[str, list[float]]) -> dict:
    total = row.video.shape[0]
    result: dict = {"video": row.video.name, "format": row.video.fmt, "spec": row.spec_name, "total_frames": total}
    if row.video.fmt != "npy":
        decoded = warm[f"{row.video.name}: pyav_loop"]
        assert decoded == total, f"{row.video.name}: PyAV decoded {decoded} of {total} frames"
        result["keyframes"] = keyframe_count(row.video.payload)
        result["pyav_loop"] = path_stats(times[f"{row.video.name}: pyav_loop"], total, total)
    for path in row_paths(row):
        clip = warm[f"{row.name}: {path}"]
        assert isinstance(clip, decode.Clip) and clip.total_frames == total, f"{row.name}: {path} saw {clip}"
        result["sampled_frames"] = len(clip.indices)
        result["output_shape"] = list(clip.frames.shape)
        result[path] = path_stats(times[f"{row.name}: {path}"], total, len(clip.indices))
    if "pyav_loop" in result and "service" in result:
        result["service_vs_pyav"] = result["service"]["source_fps"] / result["pyav_loop"]["source_fps"]
    return result


# --- report -----------------------------------------------------------------------------


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "av": av.__version__,
        "ffmpeg": {name: ".".join(map(str, v)) for name, v in av.library_versions.items()},
    }


def markdown_table(rows: list[dict]) -> str:
    def fps(row: dict, path: str, key: str = "source_fps") -> str:
        return f"{row[path][key]:.0f}" if path in row else "—"

    lines = [
        "| video | spec | sampled -> shape | PyAV loop f/s | service f/s | service / PyAV "
        "| base64 path f/s | sampled f/s |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        service = "raw_npy" if row["format"] == "npy" else "service"
        ratio = f"{row['service_vs_pyav']:.2f}x" if "service_vs_pyav" in row else "—"
        shape = "x".join(map(str, row["output_shape"][1:3]))
        lines.append(
            f"| {row['video']} | {row['spec']} | {row['sampled_frames']} -> {shape} | {fps(row, 'pyav_loop')} "
            f"| {fps(row, service)} | {ratio} | {fps(row, 'service_b64')} | {fps(row, service, 'sampled_fps')} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 timed runs per path instead of 9")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    repeats = 3 if args.quick else 9
    started = time.perf_counter()
    load_before = os.getloadavg()
    print("encoding test videos ...", file=sys.stderr)
    groups = [[Row(v, "signal") for v in design_videos(shape)] for shape in DESIGN_SHAPES]
    groups.append([Row(v, spec) for v in long_videos() for spec in SPECS])
    results: list[dict] = []
    for group in groups:
        print(f"timing {group[0].video.shape} ...", file=sys.stderr)
        results.extend(measure_group(group, repeats))
    report = {
        "machine": machine_info(),
        "settings": {"repeats": repeats, "warmup": 1, "statistic": "median", "fps": FPS, "limits": asdict(LIMITS)},
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "wall_s": time.perf_counter() - started,
        "rows": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    info = report["machine"]
    print(
        f"{info['platform']}, {info['cpu_count']} CPUs, torch threads {info['torch_threads']}, "
        f"median of {repeats}, load average {load_before[0]:.2f} -> {report['load_average']['after'][0]:.2f}\n"
    )
    print(markdown_table(results))
    print(f"\nwrote {args.out} in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
