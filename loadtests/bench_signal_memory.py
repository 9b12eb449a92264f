"""Peak memory of one `signal` forward, per batch size, each in a fresh process.

The in-process backend runs one batch at a time, so a batch's working set is what a gateway's
memory limit must hold beside its bodies and decoded clips (k8s/base gateway-deployment.yaml).
Input: uint8 [B, 64, 256, 256, 3] (the spec's largest clip); reported: peak RSS above the input
(ru_maxrss), in MB, and as float32 planes of the input's pixels (one plane = 4 bytes a pixel).

    .venv/bin/python loadtests/bench_signal_memory.py [B ...]     (default 1 4 8 16)
"""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import resource, sys, torch
from models import signal
b = int(sys.argv[1])
frames = torch.randint(0, 256, (b, 64, 256, 256, 3), dtype=torch.uint8)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
signal.forward(frames, torch.full((b,), 64))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1, 4, 8, 16]
    print("| batch | peak above input (MB) | float planes |\n|--:|--:|--:|")
    for b in sizes:
        out = subprocess.run([sys.executable, "-c", CHILD, str(b)], capture_output=True, text=True, check=True)
        mb = float(out.stdout.split()[-1])
        planes = mb * 2**20 / (4 * b * 64 * 256 * 256)
        print(f"| {b} | {mb:.0f} | {planes:.1f} |")


if __name__ == "__main__":
    main()
