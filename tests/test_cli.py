"""``vrs score`` as a subprocess: against a real gateway and in-process (--local), on a folder."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import videos
from vrs_client import Client

VRS = str(Path(sys.executable).with_name("vrs"))


def vrs(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRS_")}
    return subprocess.run([VRS, "score", *args], capture_output=True, text=True, timeout=300, env=env)


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
    done = vrs(str(folder), "--server", scoring_gateway.url, "--model", "signal-rk", "--weights", weights,
               "--batch-size", "2", "--json", str(out_json), "--csv", str(out_csv))
    assert done.returncode == 0, done.stderr
    report = json.loads(out_json.read_text())
    paths = [Path(r["path"]).relative_to(folder).as_posix() for r in report["results"]]
    assert paths == EXPECTED_FILES
    assert report["weights"] == {"signal-rk.sharpness": 2.0, "signal-rk.exposure": 1.0}
    assert report["models"] == [{"name": "signal-rk", "version": "1.0.0"}]
    # The same numbers the client gets for the same files.
    with Client(scoring_gateway.url) as client:
        direct = client.score([folder / p for p in EXPECTED_FILES], models=["signal-rk"],
                              weights={"signal-rk.sharpness": 2, "signal-rk.exposure": 1}).results
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
    refused = vrs(str(folder), "--server", scoring_gateway.url, "--preset", "nope")
    assert refused.returncode == 1 and "preset: unknown preset 'nope'" in refused.stderr
    missing = vrs(str(tmp_path / "nothing-here"), "--local")
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    empty = vrs(str(tmp_path), "--local")
    assert empty.returncode == 2 and "no videos found" in empty.stderr
    bad_weights = vrs(str(folder), "--local", "--weights", "signal.sharpness")
    assert bad_weights.returncode == 2 and "--weights" in bad_weights.stderr
