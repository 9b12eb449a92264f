"""``vrs score`` as a subprocess: against a real gateway and in-process (--local), on a folder."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from vrs_client import Client

from service.api import create_app
from tests import videos
from tests.conftest import RunningServer, forward, free_port, start_server, test_settings

VRS = str(Path(sys.executable).with_name("vrs"))


def vrs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VRS_")} | (env or {})
    return subprocess.run([VRS, "score", *args], capture_output=True, text=True, timeout=300, env=clean)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, group_frames) -> Path:
    """Three videos (one in a subfolder, one webm) and a file that is not a video."""
    root = tmp_path_factory.mktemp("rollouts")
    (root / "nested").mkdir()
    (root / "clean.mp4").write_bytes(videos.encode(group_frames[0]))
    (root / "nested" / "blurred.webm").write_bytes(videos.encode(group_frames[1], "webm"))
    (root / "dark.MP4").write_bytes(videos.encode(group_frames[3]))
    (root / "notes.txt").write_text("not a video")
    return root


EXPECTED_FILES = ["clean.mp4", "dark.MP4", "nested/blurred.webm"]


def test_score_a_folder_against_a_server(scoring_gateway, folder, tmp_path):
    weights = "signal-rk.sharpness=2,signal-rk.exposure=1"
    out_json, out_csv = tmp_path / "scores.json", tmp_path / "scores.csv"
    done = vrs(
        str(folder),
        "--server",
        scoring_gateway.url,
        "--model",
        "signal-rk",
        "--weights",
        weights,
        "--batch-size",
        "2",
        "--json",
        str(out_json),
        "--csv",
        str(out_csv),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out_json.read_text())
    paths = [Path(r["path"]).relative_to(folder).as_posix() for r in report["results"]]
    assert paths == EXPECTED_FILES
    assert report["weights"] == {"signal-rk.sharpness": 2.0, "signal-rk.exposure": 1.0}
    assert report["models"] == [{"name": "signal-rk", "version": "1.0.0"}]
    # The same numbers the client gets for the same files.
    with Client(scoring_gateway.url) as client:
        direct = client.score(
            [folder / p for p in EXPECTED_FILES],
            models=["signal-rk"],
            weights={"signal-rk.sharpness": 2, "signal-rk.exposure": 1},
        ).results
    for row, item in zip(report["results"], direct):
        assert row["scores"] == item.scores and row["overall"] == item.overall
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert [r["path"] for r in rows] == [r["path"] for r in report["results"]]
    assert [float(r["overall"]) for r in rows] == [r["overall"] for r in report["results"]]
    assert float(rows[0]["signal-rk.sharpness"]) == report["results"][0]["scores"]["signal-rk.sharpness"]
    # The table on stdout: a header and one line per video; progress on stderr.
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["path", "overall", "signal-rk.sharpness"] and len(lines) == 4
    assert lines[1].startswith(str(folder / "clean.mp4")) and f"{report['results'][0]['overall']:.4f}" in lines[1]
    assert "3/3" in done.stderr


def test_score_in_process_matches_the_server(scoring_gateway, folder):
    paths = [str(folder / "clean.mp4"), str(folder / "nested")]
    done = vrs(*paths, "--local", "--preset", "signal-temporal", "--csv", "-")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [Path(r["path"]).name for r in rows] == ["clean.mp4", "blurred.webm"]
    with Client(scoring_gateway.url) as client:
        served = client.score([folder / "clean.mp4", folder / "nested" / "blurred.webm"], preset="signal-temporal")
    for row, item in zip(rows, served.results):
        assert float(row["overall"]) == pytest.approx(item.overall, abs=1e-6)
        smoothness = item.scores["signal.motion_smoothness"]
        assert float(row["signal.motion_smoothness"]) == pytest.approx(smoothness, abs=1e-6)


def test_errors_exit_nonzero_with_a_message(scoring_gateway, folder, tmp_path):
    # Arguments the service refuses are bad arguments too: exit 2, one line, nothing scored.
    for where in (["--server", scoring_gateway.url], ["--local"]):
        refused = vrs(str(folder), *where, "--preset", "nope", "--json", str(tmp_path / "out.json"))
        assert refused.returncode == 2 and "preset: unknown preset 'nope'" in refused.stderr
        assert not (tmp_path / "out.json").exists()
        unknown = vrs(str(folder), *where, "--model", "nope")
        assert unknown.returncode == 2 and "unknown model 'nope'" in unknown.stderr
    missing = vrs(str(tmp_path / "nothing-here"), "--local")
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    empty = vrs(str(tmp_path), "--local")
    assert empty.returncode == 2 and "no videos found" in empty.stderr
    bad_weights = vrs(str(folder), "--local", "--weights", "signal.sharpness")
    assert bad_weights.returncode == 2 and "--weights" in bad_weights.stderr
    for weight in ("true", '"2"', "null"):  # JSON true was taken as 1.0
        not_a_number = vrs(str(folder), "--local", "--weights", f'{{"signal.sharpness": {weight}}}')
        assert not_a_number.returncode == 2, not_a_number.stderr
        assert f"--weights: 'signal.sharpness' must be a number, got {weight}" in not_a_number.stderr


def test_failed_videos_are_reported_by_path_and_the_rest_scored(scoring_gateway, folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a-clean.mp4").write_bytes((folder / "clean.mp4").read_bytes())
    (bad / "b-corrupt.mp4").write_bytes(b"\x00not a video" * 100)
    (bad / "c-unreadable.mp4").symlink_to("/proc/self/mem")  # a file whose read fails (EIO), even as root
    (bad / "d-dark.mp4").write_bytes((folder / "dark.MP4").read_bytes())
    (bad / "e-audio.mp4").write_bytes(videos.audio_only())
    for where in (["--server", scoring_gateway.url], ["--local"]):
        done = vrs(str(bad), *where, "--json", str(tmp_path / "out.json"))
        assert done.returncode == 1, done.stderr
        report = json.loads((tmp_path / "out.json").read_text())
        assert [Path(r["path"]).name for r in report["results"]] == ["a-clean.mp4", "d-dark.mp4"]
        # Each bad video by its path with its own reason (not "refused", not its index in the request).
        assert f"{bad / 'b-corrupt.mp4'}: unsupported_media: cannot open as a video container" in done.stderr
        assert f"{bad / 'c-unreadable.mp4'}: cannot read" in done.stderr
        assert f"{bad / 'e-audio.mp4'}: no_video_stream: " in done.stderr
        assert "refused" not in done.stderr and "(item" not in done.stderr
        assert "3 of 5 videos failed" in done.stderr
        fast = vrs(str(bad), *where, "--fail-fast", "--json", str(tmp_path / "fast.json"))
        assert fast.returncode == 1 and "--fail-fast" in fast.stderr
        assert not (tmp_path / "fast.json").exists()


@pytest.fixture(scope="module")
def small_bodies_gateway() -> Iterator[str]:
    """A gateway that refuses request bodies over 16 000 bytes (413 too_large, the request as a whole)."""
    running = start_server(create_app(test_settings(max_request_bytes=16_000)))
    yield running.url
    running.stop()


def test_a_request_refused_as_a_whole_is_sent_again_one_video_at_a_time(small_bodies_gateway, folder, tmp_path):
    """Chunks of 2: [a, big] is over the body limit, [c, d] is not. Only big fails; the rest is written."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.mp4").write_bytes((folder / "clean.mp4").read_bytes())
    (files / "b-big.mp4").write_bytes(videos.encode(videos.moving_scene(33, 240, 416)))  # 22 KB alone
    (files / "c.mp4").write_bytes((folder / "dark.MP4").read_bytes())
    (files / "d.mp4").write_bytes((folder / "clean.mp4").read_bytes())
    out = tmp_path / "out.csv"
    done = vrs(str(files), "--server", small_bodies_gateway, "--batch-size", "2", "--csv", str(out))
    assert done.returncode == 1, done.stderr
    assert [Path(r["path"]).name for r in csv.DictReader(io.StringIO(out.read_text()))] == ["a.mp4", "c.mp4", "d.mp4"]
    assert f"{files / 'b-big.mp4'}: HTTP 413 too_large: " in done.stderr and "1 of 4 videos failed" in done.stderr


def test_a_server_lost_mid_run_stops_it_and_what_was_scored_is_written(scoring_gateway, folder, tmp_path):
    """A proxy answers the first request, then shuts down: the next chunk cannot connect (after the
    client's retries, about 7.5 s), the run stops with exit 1 and the first chunk's rows are written."""
    proxy: list[RunningServer] = []

    async def forward_then_go_away(request: Request) -> Response:
        proxy[0].server.should_exit = True  # stops listening while this request is answered
        await asyncio.sleep(0.5)
        return await forward(request, scoring_gateway.url)

    proxy.append(start_server(Starlette(routes=[Route("/v1/score", forward_then_go_away, methods=["POST"])])))
    out = tmp_path / "out.json"
    done = vrs(str(folder), "--server", proxy[0].url, "--batch-size", "2", "--json", str(out))
    proxy[0].stop()
    assert done.returncode == 1, done.stderr
    assert [Path(r["path"]).relative_to(folder).as_posix() for r in json.loads(out.read_text())["results"]] == (
        EXPECTED_FILES[:2]
    )
    assert f"cannot reach the server at {proxy[0].url}" in done.stderr
    assert "stopped; 0 failed and 1 not scored" in done.stderr


def test_an_unreachable_server_is_named(folder):
    url = f"http://127.0.0.1:{free_port()}"
    done = vrs(str(folder / "clean.mp4"), "--server", url)
    assert done.returncode == 1 and f"cannot reach the server at {url}" in done.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--local", "--server", "http://x"], "not allowed with argument"),
        (["--weights", "signal.sharpness=1", "--preset", "signal-spatial"], "not both"),
        (["--batch-size", "0"], "--batch-size"),
        (["--json", "-", "--csv", "-"], "stdout"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_argument_combinations_exit_2_with_one_line(folder, args, fragment):
    done = vrs(str(folder / "clean.mp4"), *args)
    assert done.returncode == 2 and fragment in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_local_honours_the_configured_models_and_backend(folder, tiny_dirs):
    env = {
        "VRS_MODELS": '["signal", "clip-segmental"]',
        "VRS_MODEL_DIRS": json.dumps({"clip-segmental": str(tiny_dirs["clip"])}),
    }
    done = vrs(
        str(folder / "clean.mp4"), "--local", "--model", "clip-segmental", "--prompt", "a scene", "--json", "-", env=env
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [m["name"] for m in report["models"]] == ["clip-segmental"]
    assert all(k.startswith("clip-segmental.") for k in report["results"][0]["scores"])
    triton = f"127.0.0.1:{free_port()}"  # nothing listens there: the command must try Triton, not torch
    done = vrs(str(folder / "clean.mp4"), "--local", env={"VRS_BACKEND": "triton", "VRS_TRITON_URL": triton})
    assert done.returncode == 1 and "triton backend is not ready" in done.stderr and triton in done.stderr
