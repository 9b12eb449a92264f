"""Print ``name==version`` for every distribution the device image lacks that ``roots`` need.

Walks the Requires-Dist metadata of this environment (the .venv the README's test command builds)
from the roots, with markers evaluated for the device's Python 3.12 on Linux, and leaves out what
the image already has (loadtests/device_image_packages.txt). Used by loadtests/gpu_wheels.sh.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

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


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


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


def main() -> None:
    image = {
        canonical(line.strip())
        for line in (Path(__file__).parent / "device_image_packages.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    need = closure(sys.argv[1:], image)
    print(" ".join(f"{name}=={version}" for name, version in sorted(need.items()) if name != "video-reward-service"))


if __name__ == "__main__":
    main()
