"""Client-side video references: paths, URLs, container bytes or numpy frames -> the wire's VideoRef."""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Frames:
    """Decoded frames uint8 [T, H, W, 3] and their frame rate, sent as .npy (no mp4 encode)."""

    array: np.ndarray
    fps: float


Video = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Frames
"""A path, an http(s) URL, container bytes (mp4, webm, ...), a uint8 [T,H,W,3] array (give ``fps``), or Frames."""


def video_ref(video: Video, fps: float | None = None) -> dict[str, object]:
    """The wire form of one video: ``{"url"}``, ``{"data"}`` (base64 container) or ``{"frames", "fps"}``."""
    if isinstance(video, Frames):
        return _frames_ref(video.array, video.fps)
    if isinstance(video, np.ndarray):
        if fps is None:
            raise ValueError("numpy frames need fps (pass fps=... or wrap them in Frames(array, fps))")
        return _frames_ref(video, fps)
    if isinstance(video, (bytes, bytearray, memoryview)):
        return {"data": base64.b64encode(video).decode("ascii")}
    if isinstance(video, str) and video.startswith(("http://", "https://")):
        return {"url": video}
    return {"data": base64.b64encode(Path(video).read_bytes()).decode("ascii")}


def _frames_ref(array: np.ndarray, fps: float) -> dict[str, object]:
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {array.dtype} {list(array.shape)}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return {"frames": base64.b64encode(buf.getvalue()).decode("ascii"), "fps": float(fps)}
