"""NVDEC decode: H.264 / HEVC / VP9 decoded on the GPU, frames never visit host memory.

Why PyAV's hardware decoding and not PyNvVideoCodec: PyAV 18 (the wheel this project already
pins) opens NVDEC through FFmpeg's ``hwaccel`` (``HWAccel(device_type="cuda",
is_hw_owned=True)``) and exports the decoded CUDA surfaces with ``VideoPlane.__dlpack__``
(NV12: luma [H, W], chroma [H/2, W/2, 2]; P010 likewise in 16-bit words). The container is
then opened by the very code the CPU path uses (service/decode.py): the demuxer allow-list,
the header limits, the demux index, the keyframe seeks and the sampled indices are the same
lines, not a second implementation. PyNvVideoCodec brings its own demuxer (no format
allow-list, its own seek and frame numbering), so every safety check and the frame-index
rule would have to be rebuilt for it, and it is one more CUDA-versioned wheel. Its raw
decode rate is the same NVDEC hardware; what ``loadtests/bench_gpu.py`` measures (NVDEC vs
CPU frames/s) decides whether the break-even below holds.

Colour conversion (NV12/P010 -> RGB) and the resize run in torch on the GPU
(service/colour.py, service/preprocess.py). The matrix and range follow the CPU path: FFmpeg's
converter, as PyAV calls it, takes the frame's own tags (BT.709, BT.2020, SMPTE 240M, FCC, else
BT.601; full range when the stream says so, else limited).

Policy (``DecodePolicy.choose``), per video, from its header:
- GPU decode only when the model device is CUDA and ``VRS_DECODE`` is ``auto`` or ``nvdec``;
- only codecs NVDEC decodes (``NVDEC_CODECS``) within NVDEC's size limits, at even frame sizes
  (FFmpeg's CPU converter interpolates the chroma of odd-sized frames, which the GPU conversion
  does not reproduce; generated videos have even sizes);
- under ``auto``, only frames of at least ``VRS_NVDEC_MIN_PIXELS`` (default 640x360): for small
  frames the CPU decoder is fast and NVDEC's per-stream set-up (a decoder session per video)
  dominates; re-measure the break-even with ``bench_gpu.py`` on the target GPU;
- when NVDEC refuses the stream (an unsupported profile or bit depth, a decoder error, no
  device), the video is decoded again on the CPU. Bad input (too large, too long, not a video)
  is refused by the shared checks before either decoder runs and is never retried.

Cache keys: GPU pixels differ from the CPU's by rounding (within a grey level or two, see
tests/test_colour.py), so cache keys name the decode path (``pixels_id``, in ``Engine.variants``):
a gateway whose policy can decode on the GPU never shares entries with a CPU-only one.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass
from typing import Literal

import av
import torch

from models.spec import ModelSpec
from service import colour, decode
from service.errors import TooLarge, Unprocessable, UnsupportedMedia
from service.ingest import EncodedVideo, RawFrames

log = logging.getLogger(__name__)

# NVDEC on Turing and later (H100/H200 included): decoder name -> largest width x height it decodes.
# AV1 is absent: PyAV's wheel opens AV1 streams with libdav1d, which has no hardware configs, so
# they decode on the CPU (dav1d is fast); NVDEC would need FFmpeg's native ``av1`` decoder.
NVDEC_CODECS: dict[str, tuple[int, int]] = {
    "h264": (4096, 4096),
    "hevc": (8192, 8192),
    "vp9": (8192, 8192),
}

Path = Literal["cpu", "nvdec"]


class NvdecRefused(RuntimeError):
    """NVDEC did not give a CUDA frame for this stream (the caller decodes on the CPU instead)."""


@dataclass(frozen=True)
class DecodePolicy:
    """Which decoder takes which video (see the module docstring)."""

    mode: Literal["auto", "cpu", "nvdec"] = "auto"
    device: torch.device = torch.device("cpu")
    min_pixels: int = 640 * 360

    @property
    def gpu_enabled(self) -> bool:
        return self.mode != "cpu" and self.device.type == "cuda"

    @property
    def pixels_id(self) -> str:
        """For cache keys: ``cpu`` when every video decodes on the CPU, else ``nvdec``."""
        return "nvdec" if self.gpu_enabled else "cpu"

    def choose(self, codec: str, width: int, height: int) -> Path:
        """The decode path for a stream of ``codec`` at ``width`` x ``height``."""
        if not self.gpu_enabled or codec not in NVDEC_CODECS:
            return "cpu"
        max_w, max_h = NVDEC_CODECS[codec]
        if width > max_w or height > max_h or width < 16 or height < 16 or width % 2 or height % 2:
            return "cpu"
        if self.mode == "auto" and width * height < self.min_pixels:
            return "cpu"
        return "nvdec"


CU_CTX_SCHED_BLOCKING_SYNC = 0x04


@functools.cache
def _share_primary_context(index: int) -> str | None:
    """Let FFmpeg's NVDEC decode into the CUDA primary context of device ``index``, the context torch
    uses, so that torch can read its surfaces; None when done, else why not (logged once).

    FFmpeg (libavutil/hwcontext_cuda.c) retains the primary context, which PyAV asks for with
    ``is_hw_owned``, only if its flags are exactly CU_CTX_SCHED_BLOCKING_SYNC; once torch has made
    the context active with the default flags, FFmpeg refuses ("Primary context already active with
    incompatible flags") and every video would fall back to the CPU. Since CUDA 11 the flags of an
    active primary context may be changed, so they are set here, once per device, through the
    driver API. The only effect on torch: a host thread waiting for the GPU sleeps instead of spinning.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        device, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
        steps = [
            ("cuInit", lambda: cuda.cuInit(0)),
            ("cuDeviceGet", lambda: cuda.cuDeviceGet(ctypes.byref(device), index)),
            (
                "cuDevicePrimaryCtxGetState",
                lambda: cuda.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(active)),
            ),
        ]
        for name, call in steps:
            if (status := call()) != 0:
                raise OSError(f"{name} returned CUDA error {status}")
        if flags.value != CU_CTX_SCHED_BLOCKING_SYNC:
            status = cuda.cuDevicePrimaryCtxSetFlags_v2(device, CU_CTX_SCHED_BLOCKING_SYNC)
            if status != 0:
                raise OSError(f"cuDevicePrimaryCtxSetFlags_v2 returned CUDA error {status}")
    except (OSError, AttributeError) as exc:
        log.warning("NVDEC disabled on cuda:%d: its primary context cannot be shared (%s)", index, exc)
        return str(exc)
    return None


def nvdec_path(device: torch.device) -> decode.FramePath:
    """A FramePath that decodes with NVDEC on ``device`` and converts to RGB there."""
    from av.codec.hwaccel import HWAccel

    if (reason := _share_primary_context(device.index or 0)) is not None:
        raise NvdecRefused(f"the CUDA primary context cannot be shared with FFmpeg: {reason}")
    hwaccel = HWAccel(
        device_type="cuda", device=str(device.index or 0), allow_software_fallback=False, is_hw_owned=True
    )

    def to_rgb(frame: av.VideoFrame) -> torch.Tensor:
        if frame.format.name != "cuda":
            raise NvdecRefused(f"the decoder gave a {frame.format.name} frame, not a CUDA surface")
        return nv12_to_rgb(frame)

    return decode.FramePath("nvdec", to_rgb, hwaccel)


def nv12_to_rgb(frame: av.VideoFrame) -> torch.Tensor:
    """RGB uint8 [H, W, 3] of an NV12/P010 frame, on the device that holds the frame's planes.

    A CUDA frame's planes are DLPack views of the decoder's surface (no copy). FFmpeg writes them
    on the legacy default stream, which orders them before torch's work on its default stream.
    A software frame in another format is first converted to NV12 by FFmpeg: that is how the
    CPU tests run the GPU path's conversion (tests/test_gpu_path.py).
    """
    if frame.format.name not in ("cuda", "nv12", "p010le"):
        frame = decode.convertible(frame).reformat(format="nv12")
    # The capsule is taken without a stream: PyAV refuses the stream torch.from_dlpack(plane) would
    # pass for a CUDA plane; ordering comes from the legacy default stream (see above).
    y = torch.from_dlpack(frame.planes[0].__dlpack__())
    uv = torch.from_dlpack(frame.planes[1].__dlpack__())
    return colour.nv12_to_rgb(y, uv, matrix_of(frame), full_range=int(frame.color_range) == FULL_RANGE)


# The GPU path's conversion on software frames: same checks, index, seeks and resize as NVDEC,
# runnable anywhere (tests, and bench_gpu.py's --smoke run).
NV12_ON_CPU = decode.FramePath("nv12-cpu", nv12_to_rgb)


# AVCOL_SPC_* -> matrix; every other tag converts as BT.601 on the CPU path too (decode.CONVERTED_COLORSPACES).
MATRICES: dict[int, colour.Matrix] = {1: "bt709", 4: "fcc", 7: "smpte240m", 9: "bt2020"}
FULL_RANGE = 2  # AVCOL_RANGE_JPEG


def matrix_of(frame: av.VideoFrame) -> colour.Matrix:
    """The matrix the CPU path's converter uses for this frame."""
    return MATRICES.get(int(frame.colorspace), "bt601")


def probe(video: EncodedVideo, limits: decode.Limits) -> tuple[str, int, int] | None:
    """(codec, width, height) of the first video stream from the header, or None if unreadable or
    over the pixel limit (the CPU path then reports why). Opened as the CPU path opens it, so
    probing allocates no frame over the limit."""
    try:
        with video.reading() as stream, decode.open_container(stream, limits) as c:
            if not c.streams.video:
                return None
            ctx = c.streams.video[0].codec_context
            return (ctx.name, ctx.width, ctx.height) if ctx.width and ctx.height else None
    except (UnsupportedMedia, av.FFmpegError):
        return None


def sample_clips(
    video: EncodedVideo | RawFrames, specs: list[ModelSpec], limits: decode.Limits, policy: DecodePolicy
) -> list[decode.Clip]:
    """``decode.sample_clips`` with the decoder ``policy`` picks; NVDEC failures fall back to the CPU."""
    if isinstance(video, RawFrames) or not policy.gpu_enabled:
        return decode.sample_clips(video, specs, limits)
    header = probe(video, limits)
    if header is None or policy.choose(*header) == "cpu":
        return decode.sample_clips(video, specs, limits)
    try:
        with video.reading() as stream:
            return decode.sample_container(stream, specs, limits, nvdec_path(policy.device))
    except TooLarge:
        raise  # the shared limits: the same answer on the CPU, never retried
    except Unprocessable as exc:
        if exc.code != "corrupt_video":
            raise  # too few frames, truncated, ...: decided by the shared index, never retried
        reason: Exception = exc
    except (UnsupportedMedia, NvdecRefused, NotImplementedError, RuntimeError, av.FFmpegError) as exc:
        reason = exc  # the header opened on the CPU (``probe``): this is NVDEC's refusal (no device, profile, ...)
    log.info("NVDEC refused a %s %dx%d stream (%s); decoding on the CPU", *header, reason)
    return decode.sample_clips(video, specs, limits)
