"""Wheel lists and wheel trimming for the device machine (used by loadtests/gpu_wheels.sh).

``python loadtests/device_wheels.py ROOT...`` prints ``name==version`` for every distribution the
device image lacks that the roots need: it walks the Requires-Dist metadata of this environment
(the .venv the README's test command builds) from the roots, with markers evaluated for the
device's Python 3.12 on Linux, and leaves out what the image already has
(loadtests/device_image_packages.txt).

``python loadtests/device_wheels.py --slim-pytriton WHEEL`` rewrites the nvidia-pytriton wheel
without the python-backend stubs of other Pythons than the device's 3.12 and the libpython 3.13
that one of them links (53 -> 37 MB), so it fits in one device call beside a numpy 1.x for the stub.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import re
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canonical

DEVICE_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
}


def closure(roots: list[str], have: set[str]) -> dict[str, str]:
    """{canonical name: version} of the roots and what they require on the device, not descending
    into the distributions in ``have`` (the image's own satisfy their requirements)."""
    found: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        extras = set(req.extras)
        key = canonical(req.name)
        if key in have:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # an optional dependency this environment does not install
        new = key not in found
        found[key] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None:
                wanted = new
            else:
                wanted = any(sub.marker.evaluate(DEVICE_ENV | {"extra": e}) for e in extras | {""})
                wanted = wanted and (new or any(f'extra == "{e}"' in str(sub.marker) for e in extras))
            if wanted:
                todo.append(sub)
    return found


def slim_pytriton(wheel: Path, python: str = "3.12") -> None:
    """Rewrite ``wheel`` in place without the stubs for other Pythons and libpython 3.13; its RECORD
    lists exactly what remains."""

    def kept(name: str) -> bool:
        stub = re.match(r"pytriton/tritonserver/python_backend_stubs/([0-9.]+)/", name)
        return not (stub and stub.group(1) != python) and not re.match(r"nvidia_pytriton\.libs/libpython3-", name)

    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for info in src.infolist():
            if info.filename == record_name or not kept(info.filename):
                continue
            data = src.read(info)
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{info.filename},sha256={digest},{len(data)}")
        dst.writestr(record_name, "\n".join([*lines, f"{record_name},,"]) + "\n")
    slim.replace(wheel)


def main() -> None:
    if sys.argv[1:2] == ["--slim-pytriton"]:
        slim_pytriton(Path(sys.argv[2]))
        return
    image = {
        canonical(line.strip())
        for line in (Path(__file__).parent / "device_image_packages.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    need = closure(sys.argv[1:], image)
    print(" ".join(f"{name}=={version}" for name, version in sorted(need.items()) if name != "video-reward-service"))


if __name__ == "__main__":
    main()
