"""The backend interface: a padded frame batch in, float32 scores out, and the one place batches are built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class FrameBatch:
    """One model call: frames uint8 [B, T, H, W, 3] padded along T on the backend's device, real
    frame counts int32 [B] (host), prompts."""

    frames: torch.Tensor
    num_frames: torch.Tensor
    prompts: list[str]

    @classmethod
    def assemble(
        cls, clips: Sequence[torch.Tensor | np.ndarray], prompts: Sequence[str], device: torch.device | str = "cpu"
    ) -> FrameBatch:
        """Stack clips of equal H, W (any T) into one zero-padded batch on ``device``.

        Every batch is built here (the engine, Triton's python model, the benchmarks). Each clip is
        copied once, straight into its slot of the batch: from pinned host memory to a GPU that copy
        is asynchronous; clips already on the device (NVDEC) never touch the host.
        """
        tensors = [torch.as_tensor(c) for c in clips]
        longest = max(len(c) for c in tensors)
        frames = torch.empty((len(tensors), longest, *tensors[0].shape[1:]), dtype=torch.uint8, device=device)
        for i, clip in enumerate(tensors):
            frames[i, : len(clip)].copy_(clip, non_blocking=True)
            frames[i, len(clip) :].zero_()
        counts = torch.tensor([len(c) for c in clips], dtype=torch.int32)
        return cls(frames=frames, num_frames=counts, prompts=list(prompts))

    @classmethod
    def by_size(
        cls, clips: Sequence[torch.Tensor | np.ndarray], prompts: Sequence[str], device: torch.device | str = "cpu"
    ) -> list[tuple[list[int], FrameBatch]]:
        """One batch per frame size (H, W), in first-seen order: (positions of its clips, batch)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, clip in enumerate(clips):
            groups.setdefault(tuple(clip.shape[1:3]), []).append(i)
        return [
            (members, cls.assemble([clips[i] for i in members], [prompts[i] for i in members], device))
            for members in groups.values()
        ]


class Backend(Protocol):
    """Where forwards run: in this process, or in a Triton server."""

    # How many batches of one model may be in flight at once (the engine's micro-batchers obey it).
    max_concurrent_batches: int
    # Where the engine assembles batches for this backend (a GPU for in-process CUDA models; the host for Triton).
    device: torch.device

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> tuple[bool, str]:
        """(ready, reason) — reason says what is missing when not ready."""
        ...

    async def infer(self, model: str, batch: FrameBatch) -> np.ndarray:
        """Scores float32 [B, K] for ``batch`` under ``model``."""
        ...
