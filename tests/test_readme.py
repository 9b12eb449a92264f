"""The README's shell and Python examples, run as written against a live gateway, so they cannot drift.

Every ```sh and ```python block runs, in README order, in one scratch folder (earlier blocks make
the files later ones use), except blocks right after a ``<!-- readme-test: skip (reason) -->``
line. The gateway is a real uvicorn server with the default settings on a free port; the only
rewrites are that address for ``http://127.0.0.1:8000``, this environment's ``bin/`` for
``.venv/bin/``, and ``curl -s`` made to fail on HTTP errors. In ```sh blocks showing a session
(lines starting ``$ ``), only those lines run. The repository root is on PYTHONPATH, as it is
for a reader running the examples from it.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.api import create_app
from tests.conftest import RunningServer, start_server, test_settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!-- readme-test: skip \((.+?)\) -->\s*$")


@dataclass(frozen=True)
class Example:
    line: int
    lang: str
    code: str
    skip: str | None  # the reason, for blocks marked not to run


def examples(text: str) -> list[Example]:
    out = []
    for match in FENCE.finditer(text):
        indent, lang, body = match.groups()
        if lang not in ("sh", "bash", "python"):
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = SKIP.search(before)
        code = "\n".join(line[len(indent) :] for line in body.splitlines())
        out.append(Example(text[: match.start()].count("\n") + 1, lang, code, marker.group(1) if marker else None))
    return out


EXAMPLES = examples(README.read_text())


def test_the_extractor_finds_the_examples():
    runnable = [e for e in EXAMPLES if e.skip is None]
    assert len(runnable) >= 7 and {e.lang for e in runnable} >= {"sh", "python"}
    # The skipped set stays small (installs, benchmarks, GPU, containers, clusters): say why in the marker.
    assert len([e for e in EXAMPLES if e.skip]) <= 20


def test_the_python_client_examples_need_only_the_clients_install():
    """The "Python client" section's examples import only what ``pip install ./clients/python`` brings
    (its packages and dependencies) and the standard library: ``tests.videos`` needs PyAV, which a
    trainer's environment need not have. (The runs below have the repository on PYTHONPATH.)"""
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())
    requirements = [re.match(r"[\w-]+", r).group() for r in client["project"]["dependencies"]]
    allowed = {*client["tool"]["setuptools"]["packages"], *(r.replace("-", "_") for r in requirements)}
    text = README.read_text()
    start = text.index("\n## Python client\n")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = [e for e in examples(section) if e.lang == "python"]
    assert blocks
    for block in blocks:
        for node in ast.walk(ast.parse(block.code)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{top} is not in a client-only install"


@pytest.fixture(scope="module")
def readme_server() -> Iterator[RunningServer]:
    running = start_server(create_app(test_settings()))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


def _runnable(example: Example, url: str) -> str:
    code = example.code.replace("http://127.0.0.1:8000", url).replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    if example.lang in ("sh", "bash"):
        code = code.replace("curl -s ", "curl -sS --fail-with-body ")
        session = [line[2:] for line in code.splitlines() if line.startswith("$ ")]
        if session:
            code = "\n".join(session)
    return code


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line{e.line}-{e.lang}" for e in EXAMPLES])
def test_readme_example_runs(example: Example, readme_server, workdir):
    if example.skip:
        pytest.skip(example.skip)
    code = _runnable(example, readme_server.url)
    command = (
        ["bash", "-euo", "pipefail", "-c", code] if example.lang in ("sh", "bash") else [sys.executable, "-c", code]
    )
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    env = {k: v for k, v in env.items() if not k.startswith("VRS_")}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"README line {example.line}:\n{code}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )
    if "curl" in code:
        assert '"error"' not in done.stdout, done.stdout[-2000:]
