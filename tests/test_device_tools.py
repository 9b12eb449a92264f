"""The tools that prepare a device run (loadtests/device_wheels.py): what gets carried, the
trimmed Triton wheel, and the calls' time plan. A mistake here costs a GPU session's scarce device time, so it is caught here."""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "loadtests"))

import device_wheels  # noqa: E402


def test_the_carried_set_is_what_the_service_needs_minus_the_image():
    image = {device_wheels.canonical(n) for n in ("torch", "numpy", "transformers", "pytest", "httpx", "grpcio")}
    need = device_wheels.closure(["video-reward-service[models]", "pytest-asyncio"], image)
    for name in ("av", "fastapi", "starlette", "uvicorn", "httptools", "pydantic", "pydantic-core", "redis",
                 "tritonclient", "python-multipart", "pytest-asyncio"):  # fmt: skip
        assert name in need, name
    assert not image & set(need)  # the image's own, and nothing only they require
    assert "video-reward-service" in need  # the root itself (main() leaves it out: it travels as source)


def test_slim_pytriton_keeps_one_stub_and_a_true_record(tmp_path: Path):
    wheel = tmp_path / "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
    stubs = "pytriton/tritonserver/python_backend_stubs"
    files = {
        "pytriton/__init__.py": b"",
        "pytriton/tritonserver/bin/tritonserver": b"server",
        f"{stubs}/3.11/triton_python_backend_stub": b"stub 3.11",
        f"{stubs}/3.12/triton_python_backend_stub": b"stub 3.12",
        f"{stubs}/3.13/triton_python_backend_stub": b"stub 3.13",
        "nvidia_pytriton.libs/libpython3-419a3a08.13.so.1.0": b"libpython 3.13",
        "nvidia_pytriton.libs/libtritonserver-717102f0.so": b"core",
        "nvidia_pytriton-0.7.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n",
    }
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("nvidia_pytriton-0.7.0.dist-info/RECORD", "".join(f"{n},,\n" for n in files))
    device_wheels.slim_pytriton(wheel, "3.12")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = z.read("nvidia_pytriton-0.7.0.dist-info/RECORD").decode().splitlines()
        kept = {n for n in files if not ("/3.11/" in n or "/3.13/" in n or "libpython3-" in n)}
        assert names == kept | {"nvidia_pytriton-0.7.0.dist-info/RECORD"}
        for line in record[:-1]:
            name, digest, size = line.split(",")
            data = z.read(name)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)
        assert {line.split(",")[0] for line in record} == names


SESSION_DEVICE_S = 900  # a session's device time, the machine's start and every call included
START_S = 150  # a machine's start and the transfer of the tree and .whl (README: "a minute or more")
INSTALL_S = 20  # device_run.sh's install of the carried wheels, before the first step


def test_the_device_calls_fit_the_sessions_device_time():
    """README "GPU benchmark: one command" plans the device calls: each call's ``timeout_s`` holds
    its steps' limits in loadtests/device_run.sh plus the install, no call asks for more than run's
    600 s, and the machine's start plus every call fit a session's 15 minutes of device time. A
    step over budget would cut a call short and lose the steps after it; a plan over the session's
    time would lose the last call."""
    import re

    script = (ROOT / "loadtests" / "device_run.sh").read_text()
    limits = {name: int(s) for name, s in re.findall(r"\bstep (\w+) (\d+)", script)}
    step_of = {"probe": ["probe"], "bench_gpu": ["bench_gpu"], "tests": ["tests_gpu"], "compile": ["bench_compile"],
               "inductor": ["tests_inductor"], "triton": ["tests_triton", "bench_transport"]}  # fmt: skip
    default = re.search(r"\$\{1:-([\w,]+)\}", script).group(1)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### GPU benchmark: one command") :]
    calls = re.findall(r"^\| (\d) \| `[^`]*` \| (\d+) \| `sh loadtests/device_run.sh ?([\w,]*)` \|", section, re.M)
    assert [c[0] for c in calls] == ["1", "2"], calls
    for _, timeout_s, steps in calls:
        total = INSTALL_S + sum(limits[s] for step in (steps or default).split(",") for s in step_of[step])
        assert total <= int(timeout_s) <= 600, (steps or default, total, timeout_s)
    assert START_S + sum(int(timeout_s) for _, timeout_s, _ in calls) <= SESSION_DEVICE_S
    assert "bench_gpu" in default.split(","), "call 1 is issue 11's benchmark"
