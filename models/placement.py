"""Where a model runs: a torch device and a compute dtype, resolved from configuration.

``VRS_DEVICE``: ``auto`` (the first CUDA device if torch sees one, else ``cpu``), ``cpu``,
``cuda`` or ``cuda:N``. ``VRS_DTYPE``: ``auto`` (bfloat16 on CUDA, float32 on CPU: CPU bf16
matmuls are slow on most hosts and lose precision for nothing), ``bfloat16``, ``float16`` or
``float32``. Both are plain strings in settings; ``resolve`` turns them into a ``Placement``
that every loader takes (models/registry.py), so no loader decides its device by itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Placement:
    """A model's device and compute dtype."""

    device: torch.device
    dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> dict[str, str]:
        """For /v1/models and /readyz: ``{"device": "cuda:0", "dtype": "bfloat16"}``."""
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}


CPU = Placement(torch.device("cpu"), torch.float32)


def resolve_device(name: str) -> torch.device:
    """``auto|cpu|cuda|cuda:N`` -> a torch.device; a CUDA device that is not there is refused."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    index = int(m.group(1) or 0)
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r}: torch sees no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda})"
        )
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto|bfloat16|float16|float32`` -> a torch.dtype (``auto``: bf16 on CUDA, fp32 elsewhere)."""
    name = name.strip().lower()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve(device: str = "auto", dtype: str = "auto") -> Placement:
    """Settings' strings -> a Placement."""
    d = resolve_device(device)
    return Placement(d, resolve_dtype(dtype, d))
