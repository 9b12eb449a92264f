"""Synthetic test videos: a textured scene in smooth motion, its controlled degradations,
and real encodings of it (H.264 mp4, VP9 webm) made with PyAV.

The scene is deterministic, so a clean clip and its degraded twin differ only by the
degradation under test.
"""

from __future__ import annotations

import io
import itertools
import struct
from fractions import Fraction

import av
import numpy as np

_stamps = itertools.count(1)


def unique_clip(frames: int = 9, height: int = 64, width: int = 64, speed: float = 2.0) -> np.ndarray:
    """A moving scene whose content no other request in this session has sent (see ``stamp``)."""
    return stamp(moving_scene(frames, height, width, speed))


def stamp(frames: np.ndarray) -> np.ndarray:
    """Write a session-wide counter into every frame as 16 black/white 4x4 blocks along the top
    edge (width >= 64), so no score cache can answer for the clip. Full-contrast blocks survive
    brightness changes and lossy encoding, which a one-pixel mark does not."""
    n = next(_stamps)
    out = frames.copy()
    for bit in range(16):
        out[:, :4, 4 * bit : 4 * bit + 4] = 255 if n >> bit & 1 else 0
    return out


def moving_scene(frames: int = 33, height: int = 240, width: int = 416, speed: float = 2.0) -> np.ndarray:
    """A sharp, colourful scene translating diagonally at `speed` px/frame: uint8 [T,H,W,3]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        x = xx + speed * t
        y = yy + 0.5 * speed * t
        checker = ((np.floor(x / 16) + np.floor(y / 16)) % 2) * 60.0
        waves = 40.0 * np.sin(x / 9.0) * np.cos(y / 13.0)
        r = 70 + checker + waves
        g = 110 + 0.5 * checker - waves + 30 * np.sin((x + y) / 31.0)
        b = 150 - 0.6 * checker + 35 * np.cos(x / 23.0)
        out[t] = np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)
    return out


def blur(frames: np.ndarray, radius: int = 4) -> np.ndarray:
    """Box blur applied `radius` times per axis (close to a Gaussian): lowers sharpness."""
    x = frames.astype(np.float32)
    k = 2 * radius + 1
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="edge")
        c = np.cumsum(padded, axis=axis, dtype=np.float64)
        zero = np.zeros_like(np.take(c, [0], axis=axis))
        c = np.concatenate([zero, c], axis=axis)
        n = x.shape[axis]
        x = (np.take(c, np.arange(k, k + n), axis=axis) - np.take(c, np.arange(0, n), axis=axis)) / k
    return np.clip(x, 0, 255).astype(np.uint8)


def flicker(frames: np.ndarray, amount: float = 0.35) -> np.ndarray:
    """Alternate frame brightness by +-`amount`: lowers temporal stability."""
    gain = np.where(np.arange(len(frames)) % 2 == 0, 1.0 + amount, 1.0 - amount)
    return np.clip(frames.astype(np.float32) * gain[:, None, None, None], 0, 255).astype(np.uint8)


def stutter(frames: np.ndarray) -> np.ndarray:
    """Drop every third frame and duplicate its neighbour (same length): lowers motion smoothness."""
    idx = np.arange(len(frames))
    idx[2::3] = idx[1::3][: len(idx[2::3])]
    idx[5::6] = np.minimum(idx[5::6] + 1, len(frames) - 1)
    return frames[idx]


def exposure(frames: np.ndarray, gain: float) -> np.ndarray:
    """Scale brightness by `gain` (<1 under-exposes, >1 over-exposes and clips)."""
    return np.clip(frames.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def encode(
    frames: np.ndarray,
    fmt: str = "mp4",
    fps: int = 16,
    codec: str | None = None,
    crf: int = 18,
    gop: int | None = None,
    colorspace: int | None = None,
    color_range: int | None = None,
) -> bytes:
    """Encode uint8 [T,H,W,3] frames into a container in memory (mp4/H.264 or webm/VP9).

    ``gop`` sets the keyframe interval (short GOPs exercise the decoder's seeking); ``colorspace``
    and ``color_range`` (AVCOL_SPC_*, AVCOL_RANGE_*) tag the stream, as cameras and HDR tools do."""
    codec = codec or {"mp4": "libx264", "webm": "libvpx-vp9", "mkv": "libx264"}[fmt]
    buf = io.BytesIO()
    fmt_name = {"mkv": "matroska"}.get(fmt, fmt)
    with av.open(buf, mode="w", format=fmt_name) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        if color_range is not None:
            stream.codec_context.color_range = color_range
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"} | (
                {"keyint": str(gop), "min-keyint": str(gop)} if gop else {}
            )
        elif codec == "libvpx-vp9":
            stream.options = {"crf": str(crf + 12), "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def encode_vfr(frames: np.ndarray, times_ms: list[int], fmt: str = "mkv", nominal_fps: int = 30) -> bytes:
    """H.264 with the given presentation time per frame (milliseconds): a variable-frame-rate
    video, as screen recorders and phones write them, with a nominal rate in the header."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format={"mkv": "matroska"}.get(fmt, fmt)) as container:
        stream = container.add_stream("libx264", rate=Fraction(nominal_fps))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "18", "preset": "veryfast"}
        for array, t in zip(frames, times_ms, strict=True):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def retimed(data: bytes, fmt: str, times_ms: list[int], last_ms: int | None = None) -> bytes:
    """The video stream of ``data`` remuxed into ``fmt`` with one presentation time per frame
    (milliseconds) and, if given, the last frame's duration: a held last frame, a late start."""
    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(out, "w", format={"mkv": "matroska"}.get(fmt, fmt)) as target:
        packets = [p for p in source.demux(source.streams.video[0]) if p.size]
        stream = target.add_stream_from_template(source.streams.video[0])
        stream.time_base = Fraction(1, 1000)
        for i, (packet, t) in enumerate(zip(packets, times_ms, strict=True)):
            packet.stream, packet.time_base, packet.pts, packet.dts = stream, Fraction(1, 1000), t, t
            following = times_ms[i + 1] if i + 1 < len(times_ms) else None
            packet.duration = (following - t) if following is not None else (last_ms or 40)
            target.mux(packet)
    return out.getvalue()


def audio_only(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """An m4a (AAC) file with no video stream."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialise an array as a .npy file."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def lying_header_avi(width: int = 16000, height: int = 16000) -> bytes:
    """A tiny raw-video AVI whose headers claim ``width`` x ``height`` frames (the data is 16x16)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as container:
        stream = container.add_stream("rawvideo", rate=16)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        for frame in moving_scene(4, 16, 16):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
    data = buf.getvalue()
    # avih holds (width, height); BITMAPINFOHEADER holds (width, -height) for top-down RGB.
    for old, new in (((16, 16), (width, height)), ((16, -16), (width, -height))):
        data = data.replace(struct.pack("<ii", *old), struct.pack("<ii", *new))
    return data
