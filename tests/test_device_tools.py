"""The tools that prepare a device run (loadtests/device_wheels.py): what gets carried, and the
trimmed Triton wheel. A mistake here costs a GPU session's scarce device time, so it is caught here."""

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


def test_each_device_call_fits_its_600_s_with_room_for_the_install():
    """The step limits in loadtests/device_run.sh, per call of README "GPU benchmark: one command"
    (call 1: the default steps; call 2: ``inductor,triton``), plus the probe, stay under 570 s:
    run's timeout_s is 600 and the wheels' install comes first. A step over budget would cut the
    call short and lose the steps after it."""
    import re

    script = (ROOT / "loadtests" / "device_run.sh").read_text()
    limits = {name: int(s) for name, s in re.findall(r"\bstep (\w+) (\d+)", script)}
    step_of = {"bench_gpu": ["bench_gpu"], "tests": ["tests_gpu"], "compile": ["bench_compile"],
               "inductor": ["tests_inductor"], "triton": ["tests_triton", "bench_transport"]}  # fmt: skip
    default = re.search(r"\$\{1:-([\w,]+)\}", script).group(1).split(",")
    for call in (default, ["inductor", "triton"]):
        total = limits["probe"] + sum(limits[s] for step in call for s in step_of[step])
        assert total <= 570, (call, total)
