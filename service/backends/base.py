"""The backend interface: a padded frame batch in, float32 scores out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class FrameBatch:
    """One model call: frames uint8 [B, T, H, W, 3] padded along T, real frame counts [B], prompts."""

    frames: np.ndarray
    num_frames: np.ndarray  # int32 [B]
    prompts: list[str]

    @classmethod
    def pad(cls, clips: list[np.ndarray], prompts: list[str]) -> "FrameBatch":
        """Stack clips of equal H, W (any T) into one zero-padded batch."""
        longest = max(len(c) for c in clips)
        frames = np.zeros((len(clips), longest, *clips[0].shape[1:]), dtype=np.uint8)
        for i, clip in enumerate(clips):
            frames[i, : len(clip)] = clip
        counts = np.array([len(c) for c in clips], dtype=np.int32)
        return cls(frames=frames, num_frames=counts, prompts=list(prompts))


class Backend(Protocol):
    """Where forwards run: in this process, or in a Triton server."""

    # How many batches of one model may be in flight at once (the engine's micro-batchers obey it).
    max_concurrent_batches: int

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> tuple[bool, str]:
        """(ready, reason) — reason says what is missing when not ready."""
        ...

    async def infer(self, model: str, batch: FrameBatch) -> np.ndarray:
        """Scores float32 [B, K] for ``batch`` under ``model``."""
        ...
