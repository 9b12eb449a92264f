"""Raw frames on the wire as ``.npy`` (format version 1.0), and the digests that address videos.

A ``.npy`` file is a 10-byte preamble (magic, version, header length), a Python-literal header
(``descr``, ``fortran_order``, ``shape``) padded so the data starts at a multiple of 64 bytes,
then the array's bytes. ``header`` writes that header for uint8 [T, H, W, 3] frames, so client and
server agree byte for byte on what a frames digest covers, whatever wrote the file.

Digests (``{"sha256": ...}`` references):

- a container (mp4, webm, ...): sha256 of its bytes;
- raw frames: sha256 of ``header(shape) + frames bytes`` (what ``np.save`` writes for a C-ordered
  uint8 array), sent together with ``fps``.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterator

import numpy as np

MAGIC = b"\x93NUMPY"
ALIGN = 64
CHUNK = 1 << 20


def header(shape: tuple[int, ...]) -> bytes:
    """The .npy v1.0 preamble and header of a C-ordered uint8 array of ``shape``."""
    shape_text = "(" + ", ".join(str(int(n)) for n in shape) + ("," if len(shape) == 1 else "") + ")"
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': " + shape_text + ", }"
    pad = -(len(MAGIC) + 4 + len(text) + 1) % ALIGN
    body = (text + " " * pad + "\n").encode("latin1")
    return MAGIC + b"\x01\x00" + struct.pack("<H", len(body)) + body


def check_frames(array: np.ndarray) -> np.ndarray:
    """``array`` as C-contiguous uint8 [T, H, W, 3], or ValueError."""
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {array.dtype} {list(array.shape)}")
    return np.ascontiguousarray(array)


def container_digest(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def frames_digest(frames: np.ndarray) -> str:
    """sha256 of the frames' .npy file (``header`` + bytes), computed without writing it."""
    frames = check_frames(frames)
    h = hashlib.sha256(header(frames.shape))
    h.update(memoryview(frames).cast("B"))  # type: ignore[arg-type]  # numpy 1.x stubs: ndarray a Buffer only on 3.12+
    return h.hexdigest()


class NpyReader(io.RawIOBase):
    """A read-only stream of the frames' .npy file that copies nothing up front: the header, then
    the array's own memory in chunks (an HTTP client can send it as a multipart part)."""

    def __init__(self, frames: np.ndarray) -> None:
        super().__init__()
        self._frames = check_frames(frames)
        self._parts = (memoryview(header(self._frames.shape)), memoryview(self._frames).cast("B"))  # type: ignore[arg-type]  # as above
        self.size = sum(p.nbytes for p in self._parts)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        written = 0
        for chunk in self._chunks(len(out)):
            out[written : written + chunk.nbytes] = chunk
            written += chunk.nbytes
        self._pos += written
        return written

    def _chunks(self, wanted: int) -> Iterator[memoryview]:
        start = self._pos
        for part in self._parts:
            if wanted <= 0:
                return
            if start < part.nbytes:
                piece = part[start : start + wanted]
                yield piece
                wanted -= piece.nbytes
                start = 0
            else:
                start -= part.nbytes
