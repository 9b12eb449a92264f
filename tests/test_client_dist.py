"""The client as a trainer installs it: ``pip install clients/python`` alone in a fresh venv.

It must not bring torch, av, tritonclient or the server, must import without them (checked on
``sys.modules`` in that venv), must leave ``OMP_WAIT_POLICY`` alone, and must score against a real
gateway with the newest numpy pip picks (2.x; the server's own environment holds numpy 1.x).
The sources must also stay valid Python 3.9 (``requires-python = ">=3.9"``), checked statically
here since only Python 3.11 exists on this machine.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import videos
from tests.test_api import expected_scores
from tests.videos import unique_clip

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"

SCRIPT = """
import json, os, sys
import numpy as np
import vrs_client
from vrs_client import Client, Frames

url, frames_path, mp4_path = sys.argv[1:4]
with Client(url) as client:
    result = client.score([Frames(np.load(frames_path), 16), mp4_path], cache="bypass")
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "av", "tritonclient", "service", "models", "fastapi")),
    "omp": os.environ.get("OMP_WAIT_POLICY"),
    "numpy": np.__version__,
    "scores": [r.scores for r in result.results],
    "file": vrs_client.__file__,
}))
"""


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(CLIENT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv


def test_the_client_installs_alone_and_scores_without_torch(client_venv, gateway, tmp_path):
    listed = subprocess.run([str(client_venv / "bin" / "pip"), "list", "--format=json"], capture_output=True, text=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "vrs-client" in installed
    assert not installed & {"torch", "av", "tritonclient", "video-reward-service", "fastapi", "uvicorn"}, installed

    clip, other = unique_clip(), unique_clip(17, 64, 96)
    np.save(tmp_path / "clip.npy", clip)
    (tmp_path / "other.mp4").write_bytes(videos.encode(other))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: nothing of the repo leaks in
    done = subprocess.run(
        [
            str(client_venv / "bin" / "python"),
            "-c",
            SCRIPT,
            gateway.url,
            str(tmp_path / "clip.npy"),
            str(tmp_path / "other.mp4"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["modules"] == [] and report["omp"] is None
    assert report["file"].startswith(str(client_venv))  # the installed copy, not the repository's
    assert int(report["numpy"].split(".")[0]) >= 2
    assert report["scores"][0] == pytest.approx(expected_scores(clip), abs=1e-5)
    assert set(report["scores"][1]) == set(report["scores"][0])


def _pipe_annotations(tree: ast.Module) -> list[int]:
    """Lines where ``X | Y`` is evaluated at runtime on 3.9: class-body annotations (pydantic reads
    them) and module-level type aliases."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and any(
                    isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(stmt.annotation)
                ):
                    lines.append(stmt.lineno)
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.BinOp) and isinstance(stmt.value.op, ast.BitOr):
            lines.append(stmt.lineno)
    return lines


SOURCES = sorted(p for package in ("vrs_client", "vrs_wire") for p in (CLIENT / package).rglob("*.py"))  # not build/


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(CLIENT)))
def test_client_sources_are_python_3_9(path):
    source = path.read_text()
    tree = ast.parse(source, feature_version=(3, 9))  # no match, no parenthesised context managers...
    assert _pipe_annotations(tree) == [], f"{path}: X | Y evaluated at runtime fails on Python 3.9"
    zips = [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and getattr(n.func, "id", None) == "zip"
        and any(k.arg == "strict" for k in n.keywords)
    ]
    assert zips == [], f"{path}: zip(strict=...) is Python 3.10"
