"""Client-side videos: paths, URLs, container bytes or numpy frames -> the wire's video references.

Three forms of the same videos:

- ``parts``: multipart (the default): a ``{"file": name}`` reference per video and a binary part
  for it (container bytes, a path's file streamed from disk, or numpy frames streamed from the
  array's own memory as an ``application/x-npy`` part); URLs stay ``{"url"}``.
- ``video_ref``: JSON with base64 (``{"data"}``, ``{"frames", "fps"}``), the older form.
- ``digest_ref``: ``{"sha256"}`` of a video sent before (``reuse=True``); nothing is uploaded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional, Union

import numpy as np

from vrs_wire import npy
from vrs_wire.schemas import NPY_MEDIA_TYPE


@dataclass(frozen=True)
class Frames:
    """Decoded frames uint8 [T, H, W, 3] and their frame rate, sent as .npy (no mp4 encode)."""

    array: np.ndarray
    fps: float


Video = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Frames]
"""A path, an http(s) URL, container bytes (mp4, webm, ...), a uint8 [T,H,W,3] array (give ``fps``), or Frames."""

Part = tuple[str, Union[bytes, IO[bytes], io.RawIOBase], str]  # (file name, content, content type), as httpx takes it


def _is_url(video: Video) -> bool:
    return isinstance(video, str) and video.startswith(("http://", "https://"))


def _frames(video: Video, fps: Optional[float]) -> Optional[Frames]:
    """``video`` as Frames when it is raw frames (checked), else None."""
    if isinstance(video, Frames):
        return Frames(npy.check_frames(video.array), float(video.fps))
    if isinstance(video, np.ndarray):
        if fps is None:
            raise ValueError("numpy frames need fps (pass fps=... or wrap them in Frames(array, fps))")
        return Frames(npy.check_frames(video), float(fps))
    return None


def part(video: Video, name: str, fps: Optional[float]) -> tuple[dict[str, Any], Optional[Part]]:
    """The reference and multipart part of one video (no part for a URL). A path's part is an open
    file, streamed by the HTTP client; the caller closes it."""
    if _is_url(video):
        return {"url": video}, None
    frames = _frames(video, fps)
    if frames is not None:
        return {"file": name, "fps": frames.fps}, (f"{name}.npy", npy.NpyReader(frames.array), NPY_MEDIA_TYPE)
    if isinstance(video, (bytes, bytearray, memoryview)):
        return {"file": name}, (name, bytes(video), "application/octet-stream")
    path = Path(video)  # type: ignore[arg-type]
    return {"file": name}, (path.name, path.open("rb"), "application/octet-stream")


def video_ref(video: Video, fps: Optional[float] = None) -> dict[str, Any]:
    """The JSON form of one video: ``{"url"}``, ``{"data"}`` (base64 container) or ``{"frames", "fps"}``."""
    if _is_url(video):
        return {"url": video}
    frames = _frames(video, fps)
    if frames is not None:
        reader = npy.NpyReader(frames.array)
        return {"frames": base64.b64encode(reader.read()).decode("ascii"), "fps": frames.fps}
    if isinstance(video, (bytes, bytearray, memoryview)):
        return {"data": base64.b64encode(video).decode("ascii")}
    return {"data": base64.b64encode(Path(video).read_bytes()).decode("ascii")}  # type: ignore[arg-type]


def digest_ref(video: Video, fps: Optional[float] = None) -> dict[str, Any]:
    """The content address of one video (``vrs_wire.npy``'s digests); URLs stay URLs."""
    if _is_url(video):
        return {"url": video}
    frames = _frames(video, fps)
    if frames is not None:
        return {"sha256": npy.frames_digest(frames.array), "fps": frames.fps}
    if isinstance(video, (bytes, bytearray, memoryview)):
        return {"sha256": npy.container_digest(video)}
    h = hashlib.sha256()
    with Path(video).open("rb") as f:  # type: ignore[arg-type]
        for chunk in iter(lambda: f.read(npy.CHUNK), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest()}


def close_parts(parts: list[tuple[str, Part]]) -> None:
    for _, (_, content, _) in parts:
        if hasattr(content, "close"):
            content.close()
