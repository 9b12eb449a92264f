"""Decode and sample: pick the frames a model's spec asks for and return them resized.

Containers are decoded with PyAV (FFmpeg). Limits are checked from the container header
before any frame is decoded, only the demuxers of real video containers are enabled, and
the decoder itself refuses frames larger than the pixel limit (a header can lie). Frames
the model does not need are decoded only when the codec needs them as references and are
never converted to RGB; a keyframe seek skips whole GOPs between far-apart samples.

Clips are torch tensors. A ``FramePath`` says how a decoded frame becomes RGB: the default is
FFmpeg's software decoder and converter on the CPU (clips land in pinned host memory when CUDA
is present, so the one host->device copy at batch assembly is asynchronous); service/nvdec.py
plugs in NVDEC with a GPU colour conversion through the same checks, index and seeks.
"""

from __future__ import annotations

import bisect
import io
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, cast

import av
import torch

from models.spec import FrameSampling, ModelSpec
from service import preprocess
from service.errors import Timeout, TooLarge, Unprocessable, UnsupportedMedia
from service.ingest import EncodedVideo, RawFrames

# Demuxers we accept. Playlist and concat formats (hls, concat, ...) are deliberately absent:
# they open further URLs or files named inside the upload.
CONTAINER_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,flv,ogg,gif,mpeg,nut"


Convert = Callable[[av.VideoFrame, int], list[torch.Tensor | None]]  # (frame, source index) -> one per spec


# Matrices (AVCOL_SPC_*) FFmpeg 8's swscale converts: RGB/unspecified/BT.601 family, BT.709, FCC,
# SMPTE 240M, BT.2020 NCL. It refuses the others (reserved, YCgCo, BT.2020 CL, ICtCp, ...) with
# EOPNOTSUPP, which would fail a valid video: those frames convert as untagged ones (BT.601), as
# FFmpeg's older converter did. The GPU path's conversion follows the same table (service/nvdec.py).
CONVERTED_COLORSPACES = frozenset({0, 1, 2, 4, 5, 6, 7, 9})
UNSPECIFIED_COLORSPACE = 2


def convertible(frame: av.VideoFrame) -> av.VideoFrame:
    """``frame``, its matrix tag cleared if FFmpeg's converter refuses it (CONVERTED_COLORSPACES)."""
    if int(frame.colorspace) not in CONVERTED_COLORSPACES:
        frame.colorspace = UNSPECIFIED_COLORSPACE
    return frame


def _cpu_rgb(frame: av.VideoFrame) -> torch.Tensor:
    return torch.from_numpy(convertible(frame).to_ndarray(format="rgb24"))


@dataclass(frozen=True)
class FramePath:
    """How decoded frames become RGB uint8 [H, W, 3] tensors: the decoder FFmpeg opens (``hwaccel``,
    an ``av.codec.hwaccel.HWAccel`` or None for software) and the conversion of one frame."""

    name: str  # "cpu", "nvdec": named in cache keys when pixels differ (service/cache.py)
    to_rgb: Callable[[av.VideoFrame], torch.Tensor]
    hwaccel: object | None = None


CPU_PATH = FramePath("cpu", _cpu_rgb)


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    max_duration_s: float
    max_total_frames: int
    # time.monotonic() by which the request that wants this video has given up: decoding runs in a
    # worker thread that asyncio cannot cancel, so the demux and decode loops stop there themselves.
    deadline: float | None = None

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Timeout("decoding stopped: the request's time is up")


@dataclass
class Clip:
    """Sampled, resized frames of one video for one model (one spec)."""

    frames: torch.Tensor  # uint8 [n, h, w, 3], on the host (pinned when CUDA is present) or a GPU
    indices: list[int]  # which source frames (0-based, presentation order)
    total_frames: int
    fps: float


def sample_indices(total: int, fps: float, sampling: FrameSampling) -> list[int]:
    """Source frame indices to take from a video of ``total`` frames at ``fps``."""
    m = sampling.multiple_of
    if sampling.mode == "segments":
        n = sampling.segments
        assert n is not None  # FrameSampling._check: the mode's field is set
        return [min(total - 1, int((s + 0.5) * total / n)) for s in range(n)]
    if sampling.spacing == "every":
        step = (total - 1) // sampling.max_frames + 1
        n = len(range(0, total, step)) // m * m
    else:
        wanted = total / fps * sampling.fps if sampling.mode == "fps" else float(sampling.count)  # type: ignore[operator, arg-type]  # FrameSampling._check: the mode's field is set
        lo = math.ceil(sampling.min_frames / m) * m
        hi = math.floor(min(sampling.max_frames, total) / m) * m
        x = min(max(wanted, lo), hi, total) / m
        n = (round(x) if sampling.rounding == "nearest" else math.floor(x)) * m  # round(): ties to even
    if n < max(1, sampling.min_frames):
        raise Unprocessable(
            f"video has {total} frames; the model needs at least {max(sampling.min_frames, m)}", code="too_few_frames"
        )
    if sampling.spacing == "every":
        return [i * step for i in range(n)]
    if sampling.spacing == "stride":
        return [i * total // n for i in range(n)]
    return torch.linspace(0, total - 1, n).round().long().tolist()


def sample_frames(video: EncodedVideo | RawFrames, spec: ModelSpec, limits: Limits) -> Clip:
    """Decode (if needed), sample and resize ``video`` as ``spec`` asks. Blocking: run in a worker."""
    return sample_clips(video, [spec], limits)[0]


def sample_clips(video: EncodedVideo | RawFrames, specs: Sequence[ModelSpec], limits: Limits) -> list[Clip]:
    """Decode (if needed), sample and resize ``video`` as each spec asks, one clip per spec.

    A container is decoded once for all specs: each frame any spec samples is decoded and
    converted to RGB once, then resized for every spec that wants it. Blocking: run in a worker.
    """
    if isinstance(video, RawFrames):
        return [_sample_raw(video, spec, limits) for spec in specs]
    with video.reading() as stream:
        return sample_container(stream, specs, limits)


def _check_size(height: int, width: int, limits: Limits) -> None:
    if height <= 0 or width <= 0:
        raise Unprocessable(f"video has no valid frame size ({width}x{height})", code="bad_frame_size")
    if height * width > limits.max_pixels:
        raise TooLarge(f"frame size {width}x{height} exceeds the limit of {limits.max_pixels} pixels")


def _check_length(total: int, fps: float, limits: Limits) -> None:
    if total > limits.max_total_frames:
        raise TooLarge(f"video has more than {limits.max_total_frames} frames")
    if total / fps > limits.max_duration_s:
        raise TooLarge(f"video lasts {total / fps:.1f} s; the limit is {limits.max_duration_s:g} s")


def _sample_raw(video: RawFrames, spec: ModelSpec, limits: Limits) -> Clip:
    total, height, width, _ = video.frames.shape
    _check_size(height, width, limits)
    _check_length(total, video.fps, limits)
    indices = sample_indices(total, video.fps, spec.sampling)
    size = preprocess.target_size(height, width, spec.resolution, len(indices))
    frames = preprocess.resize(torch.from_numpy(video.frames[indices]), size, spec.resolution)
    return Clip(_host(frames), indices, total, video.fps)


def _stack(frames: list[torch.Tensor]) -> torch.Tensor:
    """Stack a clip's frames; host frames go straight into pinned memory when CUDA is present."""
    first = frames[0]
    if first.device.type != "cpu" or not torch.cuda.is_available():
        return torch.stack(frames)
    out = torch.empty((len(frames), *first.shape), dtype=first.dtype, pin_memory=True)
    return torch.stack(frames, out=out)


def _host(frames: torch.Tensor) -> torch.Tensor:
    """Host frames in pinned memory when a GPU may take them (an asynchronous copy later), else as they are."""
    return frames.pin_memory() if frames.device.type == "cpu" and torch.cuda.is_available() else frames


def open_container(data: bytes | BinaryIO, limits: Limits, hwaccel=None) -> av.container.InputContainer:
    """Open a container. Stream probing decodes frames, so the decoders it opens already refuse
    frames over the pixel limit (``max_pixels``): a header claiming 16000x16000 allocates nothing."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        options = {"format_whitelist": CONTAINER_FORMATS}
        return av.open(
            stream, mode="r", container_options=options, options={"max_pixels": str(limits.max_pixels)}, hwaccel=hwaccel
        )
    except av.FFmpegError as exc:
        reason = exc.strerror or str(exc)
        raise UnsupportedMedia(
            f"cannot open as a video container: corrupt, truncated or not a video ({reason})"
        ) from exc


def sample_container(
    data: bytes | BinaryIO, specs: Sequence[ModelSpec], limits: Limits, path: FramePath = CPU_PATH
) -> list[Clip]:
    """Decode a container (bytes, or a stream at its start) along ``path`` (all checks, the index and
    the seeks are the same on every path)."""
    origin = None if isinstance(data, bytes) else data.tell()
    with open_container(data, limits, path.hwaccel) as container:
        if not container.streams.video:
            kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
            raise UnsupportedMedia(f"no video stream in the file (streams: {', '.join(kinds)})", code="no_video_stream")
        stream = container.streams.video[0]
        height, width = stream.codec_context.height, stream.codec_context.width
        if height == width == 0:  # probing, under the pixel limit, could not set a frame size
            raise TooLarge(
                f"the decoder refused this video's frame size at the limit of {limits.max_pixels} pixels "
                "(or its header gives none)"
            )
        _check_size(height, width, limits)
        declared = _declared_seconds(container, stream)
        if declared and declared > limits.max_duration_s:
            raise TooLarge(f"video lasts {declared:.1f} s; the limit is {limits.max_duration_s:g} s")

        try:
            timestamps, keyframes, last_duration = _index(container, stream, limits)
            if not timestamps:
                raise Unprocessable("video has no frames", code="no_frames")
            fps = _frame_rate(stream, timestamps)
            _check_length(len(timestamps), fps, limits)
            present = _present_seconds(stream, timestamps, fps, last_duration)
            if declared and present < 0.9 * declared - 1 / fps:
                raise Unprocessable(
                    f"truncated video: the header declares {declared:.2f} s but only {present:.2f} s of frames are present",
                    code="truncated_video",
                )
            plans = [
                (indices, preprocess.target_size(height, width, spec.resolution, len(indices)))
                for spec in specs
                for indices in [sample_indices(len(timestamps), fps, spec.sampling)]
            ]
            wanted_by = [set(indices) for indices, _ in plans]
            _prepare(stream, limits, path)

            def convert(frame: av.VideoFrame, index: int) -> list[torch.Tensor | None]:
                """RGB once, resized for each spec that samples this frame: memory stays at the outputs' size."""
                _check_size(frame.height, frame.width, limits)  # the bitstream may disagree with the header
                rgb = path.to_rgb(frame)[None]
                resized: dict[tuple, torch.Tensor] = {}  # specs with the same size and filter share one resize
                out: list[torch.Tensor | None] = []
                for spec, (_, size), wanted in zip(specs, plans, wanted_by):
                    key = (size, spec.resolution.filter, spec.resolution.antialias)
                    if index in wanted and key not in resized:
                        resized[key] = preprocess.resize(rgb, size, spec.resolution)[0]
                    out.append(resized[key] if index in wanted else None)
                return out

            union = sorted(set().union(*wanted_by))
            got = _decode_at(container, stream, timestamps, keyframes, union, convert, limits)
            if got is None:  # count frames in order, from the very start: a fresh demuxer (a seek to 0
                # lands past the start of a stream whose timestamps begin below 0 or wrap, as MPEG-TS's do)
                if origin is not None:
                    data.seek(origin)  # type: ignore[union-attr]  # a stream: origin is set
                with open_container(data, limits, path.hwaccel) as again:
                    first = again.streams.video[0]
                    _prepare(first, limits, path)
                    got = _decode_in_order(again, first, union, convert, limits)
        except av.FFmpegError as exc:
            raise Unprocessable(f"corrupt or truncated video: {exc.strerror or exc}", code="corrupt_video") from exc
        return [
            # got[i][m] is a frame for every index that spec m samples
            Clip(_stack(cast(list[torch.Tensor], [got[i][m] for i in indices])), indices, len(timestamps), fps)
            for m, (indices, _) in enumerate(plans)
        ]


def _prepare(stream, limits: Limits, path: FramePath) -> None:
    """Decoder settings for the frames themselves: the pixel limit, and threads (frame threads
    each add a decode surface on NVDEC, 32 at most; the hardware needs none)."""
    stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
    stream.thread_type = "SLICE" if path.hwaccel is not None else "AUTO"


def _declared_seconds(container, stream) -> float | None:
    """The video's duration according to the header: the stream's, else the file's if it has one stream."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def _index(container, stream, limits: Limits) -> tuple[list[int | None], list[int], int | None]:
    """Demux (no decoding) to list every frame's timestamp in presentation order, the keyframes',
    and how long the last frame lasts if the container says. Frames without a timestamp, or two
    frames with one timestamp (a millisecond time base cannot tell 1000+ fps apart), leave only
    their order: every timestamp is then None and frames are counted."""
    stamps: list[int | None] = []
    keyframes: list[int] = []
    last: tuple[int | None, int | None] = (None, None)  # (pts, duration) of the latest frame
    for packet in container.demux(stream):
        limits.check_time()
        if packet.size == 0 or packet.is_discard:
            continue  # a flush packet, or one an edit list hides (decoded as a reference, never shown)
        stamps.append(packet.pts)
        if packet.pts is not None and (last[0] is None or packet.pts >= last[0]):
            last = (packet.pts, packet.duration or None)
        if packet.is_keyframe and packet.pts is not None:
            keyframes.append(packet.pts)
        if len(stamps) > limits.max_total_frames:
            raise TooLarge(f"video has more than {limits.max_total_frames} frames")
    if any(s is None for s in stamps) or len(set(stamps)) < len(stamps):
        return [None] * len(stamps), [], None  # fall back to counting frames in order
    return sorted(stamps), sorted(keyframes), last[1]  # type: ignore[type-var]  # no None: checked above


def _present_seconds(stream, timestamps: list[int | None], fps: float, last_duration: int | None = None) -> float:
    """How long the frames present last: by their timestamps, so a variable frame rate is not
    mistaken for missing frames; by count / rate when the stream has no timestamps. The last
    frame lasts what the container says (a held last frame), else the median frame interval.
    Measured from the first frame or from time zero, whichever is longer: some headers (Matroska)
    count a late start in the duration."""
    if len(timestamps) < 2 or timestamps[0] is None:
        return len(timestamps) / fps
    # _index: every timestamp is an int once the first one is
    last = last_duration or statistics.median(b - a for a, b in zip(timestamps, timestamps[1:]))  # type: ignore[operator]  # all ints
    end = timestamps[-1] + last  # type: ignore[operator]  # all ints
    return float((end - min(timestamps[0], 0)) * stream.time_base)


def _frame_rate(stream, timestamps: list[int | None]) -> float:
    if stream.average_rate:
        return float(stream.average_rate)
    if len(timestamps) > 1 and timestamps[0] is not None:
        span = (timestamps[-1] - timestamps[0]) * stream.time_base  # type: ignore[operator]  # all ints (_index)
        if span > 0:
            return float((len(timestamps) - 1) / span)
    return float(Fraction(stream.guessed_rate or 25))


def _decode_at(
    container, stream, timestamps, keyframes, indices, convert: Convert, limits: Limits
) -> dict[int, list[torch.Tensor | None]] | None:
    """Decode and convert the frames at ``indices`` (source index -> converted), matched by
    timestamp; None when they must be counted in order instead (the stream has no timestamps, or
    the decoder's did not line up with the demuxer's). Each seek asks for the keyframe at or
    before the next target, not the target: a demuxer asked for a frame that precedes a keyframe
    in display order but follows it in decoding order (open GOPs) lands on that later keyframe,
    past the frame."""
    if timestamps[0] is None:
        return None
    index_of = {timestamps[i]: i for i in indices}
    wanted = set(index_of)
    targets = sorted(wanted)
    got: dict[int, list[torch.Tensor | None]] = {}
    t = 0
    aimed = _keyframe_at_or_before(keyframes, targets[0])
    container.seek(targets[0] if aimed is None else aimed, stream=stream, backward=True, any_frame=False)
    while True:
        # Seek again whenever a keyframe lies between here and the next target (decoding from it
        # skips the frames in between), but only to a keyframe later than the last one aimed at:
        # demuxers that land before the keyframe asked for (MPEG-PS, NUT) would otherwise seek
        # back and forth forever. Each seek aims further, so there are at most one per keyframe.
        jump = False
        for frame in container.decode(stream):
            limits.check_time()
            if frame.pts is None:
                break
            if frame.pts in wanted and frame.pts not in got:
                got[frame.pts] = convert(frame, index_of[frame.pts])
            while t < len(targets) and targets[t] <= frame.pts:
                t += 1
            if t == len(targets):
                break
            key = _keyframe_at_or_before(keyframes, targets[t])
            if key is not None and key > frame.pts and (aimed is None or key > aimed):
                aimed, jump = key, True
                break
        if not jump:
            break  # all targets passed, or the stream ended
        container.seek(aimed, stream=stream, backward=True, any_frame=False)
    if len(got) < len(targets):
        return None
    return {index_of[pts]: value for pts, value in got.items()}


def _keyframe_at_or_before(keyframes: list[int], target: int) -> int | None:
    k = bisect.bisect_right(keyframes, target) - 1
    return keyframes[k] if k >= 0 else None


def _decode_in_order(
    container, stream, indices, convert: Convert, limits: Limits
) -> dict[int, list[torch.Tensor | None]]:
    wanted = set(indices)
    got: dict[int, list[torch.Tensor | None]] = {}
    for i, frame in enumerate(container.decode(stream)):
        limits.check_time()
        if i in wanted:
            got[i] = convert(frame, i)
        if len(got) == len(wanted):
            break
    if len(got) < len(wanted):
        raise Unprocessable(f"only {len(got)} of {len(wanted)} sampled frames could be decoded", code="corrupt_video")
    return got
