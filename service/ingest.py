"""Ingest: turn what a client sent into an encoded video (container bytes) or raw frames.

The four wire forms (multipart file, base64 container, base64 .npy frames, URL) all end as
one of two things that decoding understands: ``EncodedVideo`` or ``RawFrames``.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from service.errors import BadInput, TooLarge
from service.fetch import UrlFetcher


@dataclass(frozen=True)
class EncodedVideo:
    """A video container (mp4, webm, ...): bytes, or a seekable file (an upload spooled to disk)."""

    data: bytes | BinaryIO
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @contextmanager
    def reading(self) -> Iterator[BinaryIO]:
        """The container as a stream from its start; a file is read by one thread at a time."""
        if isinstance(self.data, bytes):
            yield io.BytesIO(self.data)  # shares the bytes, no copy
            return
        with self._lock:
            self.data.seek(0)
            yield self.data


@dataclass(frozen=True)
class RawFrames:
    """Decoded frames uint8 [T, H, W, 3] and their frame rate."""

    frames: np.ndarray
    fps: float


@dataclass(frozen=True)
class VideoURL:
    url: str


VideoSource = EncodedVideo | RawFrames | VideoURL


def decode_base64(text: str, *, max_bytes: int, what: str) -> bytes:
    """Strictly decode standard base64 (a ``data:...;base64,`` prefix is allowed)."""
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise TooLarge(f"{what} is larger than the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(f"{what} is not valid base64: {exc}", code="bad_base64") from exc


def parse_frames_npy(data: bytes, fps: float) -> RawFrames:
    """Parse a ``.npy`` holding uint8 [T, H, W, 3] frames; refuse anything else."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError / EOFError / OSError for malformed files
        raise BadInput(f"frames are not a readable .npy array: {exc}", code="bad_frames") from exc
    if not isinstance(array, np.ndarray):
        raise BadInput("frames must be a single .npy array, not an archive", code="bad_frames")
    if array.dtype != np.uint8:
        raise BadInput(f"frames must have dtype uint8, got {array.dtype}", code="bad_frames")
    if array.ndim != 4 or array.shape[-1] != 3:
        raise BadInput(f"frames must have shape [T, H, W, 3], got {list(array.shape)}", code="bad_frames")
    if 0 in array.shape:
        raise BadInput(f"frames are empty: shape {list(array.shape)}", code="no_frames")
    if not fps > 0:
        raise BadInput(f"fps must be positive, got {fps}", code="bad_frames")
    return RawFrames(frames=array, fps=float(fps))


async def resolve(source: VideoSource, fetcher: UrlFetcher) -> EncodedVideo | RawFrames:
    """Fetch URL sources; pass the others through."""
    if isinstance(source, VideoURL):
        return EncodedVideo(await fetcher.fetch(source.url))
    return source
