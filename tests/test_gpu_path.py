"""The GPU data path's code, run on the CPU (VRS_DEVICE=cpu): colour conversion, the decode policy
and its NVDEC fallback, placement, batch assembly, the pipelined backend, and what the API reports.

The GPU itself is exercised by tests/gpu/ (skipped without CUDA)."""

from __future__ import annotations

import asyncio
import io
import threading

import av
import httpx
import numpy as np
import pytest
import torch

from models import signal
from models.placement import CPU, Placement, resolve
from models.registry import RewardModel, Stages, builtin_models
from models.spec import FrameSampling, Resolution
from service import colour, decode, nvdec
from service.backends.base import FrameBatch
from service.backends.inprocess import InProcessBackend
from service.engine import Engine
from service.errors import TooLarge
from service.ingest import EncodedVideo
from tests import videos
from tests.conftest import start_server, test_settings

LIMITS = decode.Limits(10**9, 10**6, 10**6)
# A videoalign-like spec: bicubic resize to multiples of 28, as the GPU path feeds VideoReward.
BICUBIC = signal.SPEC.model_copy(
    update={
        "sampling": FrameSampling(mode="fps", fps=2, min_frames=4, max_frames=64, multiple_of=2, rounding="nearest"),
        "resolution": Resolution(max_pixels=448 * 448, min_pixels=128 * 28 * 28, size_factor=28, filter="bicubic"),
    }
)

# Tolerances, in grey levels of 255, NV12 -> RGB in torch vs FFmpeg's converter on the same frames.
# Measured: mean 1.15, max 3 (FFmpeg's fixed-point tables sit about one level below the exact
# BT.601 result, which the torch code computes in float32 and rounds). After a resize the
# difference is averaged over neighbours, never amplified beyond the filter's overshoot.
MEAN_LEVELS, MAX_LEVELS = 1.5, 4
MEAN_LEVELS_RESIZED, MAX_LEVELS_RESIZED = 1.5, 6


def _frames(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data)) as c:
        return [f for f in c.decode(video=0)]


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_nv12_to_rgb_matches_ffmpeg_on_the_same_frames(fmt):
    data = videos.encode(videos.moving_scene(6, 240, 416), fmt)
    for frame in _frames(data):
        ffmpeg = frame.to_ndarray(format="rgb24").astype(int)
        nv12 = frame.reformat(format="nv12")
        ours = (
            colour.nv12_to_rgb(torch.from_dlpack(nv12.planes[0]), torch.from_dlpack(nv12.planes[1])).numpy().astype(int)
        )
        diff = np.abs(ours - ffmpeg)
        assert diff.mean() <= MEAN_LEVELS and diff.max() <= MAX_LEVELS, (diff.mean(), diff.max())
        # The check can tell matrices apart: BT.709 on a BT.601 stream is far off.
        wrong = colour.nv12_to_rgb(torch.from_dlpack(nv12.planes[0]), torch.from_dlpack(nv12.planes[1]), "bt709")
        assert np.abs(wrong.numpy().astype(int) - ffmpeg).mean() > 2 * MEAN_LEVELS


# (AVCOL_SPC_*, AVCOL_RANGE_*) tags: untagged, BT.709, BT.2020, FCC, SMPTE 240M, full range, and
# matrices FFmpeg's converter refuses (YCgCo, BT.2020 CL), which both paths convert as untagged.
TAGS = [(2, 0), (1, 1), (9, 1), (4, 1), (7, 1), (2, 2), (9, 2), (8, 1), (10, 1)]


@pytest.mark.parametrize("colorspace, color_range", TAGS)
def test_gpu_conversion_follows_the_streams_matrix_and_range_as_the_cpu_path_does(colorspace, color_range):
    """The tags are set on decoded frames: the conversion reads only the tags and the planes."""
    (frame, *_) = _frames(videos.encode(videos.moving_scene(2, 120, 160)))
    frame.colorspace, frame.color_range = colorspace, color_range
    cpu = decode._cpu_rgb(frame).numpy().astype(int)
    frame.colorspace = colorspace  # (the CPU path clears a tag FFmpeg refuses)
    diff = np.abs(nvdec.nv12_to_rgb(frame).numpy().astype(int) - cpu)
    assert diff.mean() <= MEAN_LEVELS and diff.max() <= MAX_LEVELS, (diff.mean(), diff.max())


def test_a_full_range_bt2020_stream_decodes_alike_on_both_paths():
    data = videos.encode(videos.moving_scene(8, 120, 160), colorspace=9, color_range=2)
    (cpu,) = decode.sample_container(data, [signal.SPEC], LIMITS)
    (gpu_way,) = decode.sample_container(data, [signal.SPEC], LIMITS, nvdec.NV12_ON_CPU)
    diff = (gpu_way.frames.int() - cpu.frames.int()).abs().float()
    assert diff.mean() <= MEAN_LEVELS_RESIZED and diff.max() <= MAX_LEVELS_RESIZED, (diff.mean(), diff.max())
    # the check can tell: BT.601 or limited range read into this stream is at least a level further off
    (frame, *_) = _frames(data)
    cpu_rgb, nv12 = decode._cpu_rgb(frame).numpy().astype(int), frame.reformat(format="nv12")
    planes = torch.from_dlpack(nv12.planes[0]), torch.from_dlpack(nv12.planes[1])
    off = {
        tags: np.abs(colour.nv12_to_rgb(*planes, *tags).numpy().astype(int) - cpu_rgb).mean()
        for tags in (("bt2020", True), ("bt601", True), ("bt2020", False))
    }
    assert off[("bt601", True)] > off[("bt2020", True)] + 1 and off[("bt2020", False)] > off[("bt2020", True)] + 1, off


def test_an_odd_sized_chroma_plane_is_extended_not_refused():
    y = torch.full((5, 7), 120, dtype=torch.uint8)
    uv = torch.full((2, 3, 2), 128, dtype=torch.uint8)  # [H//2, W//2]: one row and column short
    rgb = colour.nv12_to_rgb(y, uv)
    assert rgb.shape == (5, 7, 3) and int(rgb.int().max() - rgb.int().min()) == 0


def test_p010_gives_the_same_rgb_as_nv12():
    """10-bit surfaces (HEVC/AV1 Main10 from NVDEC) go through the same matrix after scaling."""
    (frame, *_) = _frames(videos.encode(videos.moving_scene(2, 120, 160)))
    nv12, p010 = frame.reformat(format="nv12"), frame.reformat(format="p010le")
    a = colour.nv12_to_rgb(torch.from_dlpack(nv12.planes[0]), torch.from_dlpack(nv12.planes[1]))
    y10, uv10 = torch.from_dlpack(p010.planes[0]), torch.from_dlpack(p010.planes[1])
    assert y10.dtype in (torch.uint16, torch.int16) and uv10.shape == (60, 80, 2)
    b = colour.nv12_to_rgb(y10, uv10)
    assert (a.int() - b.int()).abs().max() <= 1


@pytest.mark.parametrize("spec", [signal.SPEC, BICUBIC], ids=["signal", "bicubic28"])
def test_gpu_conversion_path_samples_the_same_indices_within_tolerance(spec):
    """The NVDEC path's conversion and resize, on software frames, through the shared container code."""
    data = videos.encode(videos.moving_scene(53, 480, 480), gop=8)
    (cpu,) = decode.sample_container(data, [spec], LIMITS)
    (gpu_way,) = decode.sample_container(data, [spec], LIMITS, nvdec.NV12_ON_CPU)
    assert gpu_way.indices == cpu.indices and gpu_way.frames.shape == cpu.frames.shape
    diff = (gpu_way.frames.int() - cpu.frames.int()).abs().float()
    assert diff.mean() <= MEAN_LEVELS_RESIZED and diff.max() <= MAX_LEVELS_RESIZED, (diff.mean(), diff.max())
    scores = [signal.forward(c.frames[None], torch.tensor([len(c.indices)]), [""]) for c in (cpu, gpu_way)]
    # FFmpeg's ~1 level lower output moves mean luma by ~1/255 and exposure (1 - |2 mean - 1|) by
    # up to twice that: 0.02 on scores in [0, 1] covers two levels of systematic shift.
    torch.testing.assert_close(scores[0], scores[1], atol=2e-2, rtol=0)


def test_nvdec_refusal_falls_back_to_the_cpu_decoder():
    """NVDEC refuses at open (CUDA device 63 exists nowhere: not here, nor on a GPU host, where this
    test runs too), and the video is decoded on the CPU instead."""
    data = videos.encode(videos.moving_scene(17, 480, 640))
    policy = nvdec.DecodePolicy("nvdec", torch.device("cuda", 63), min_pixels=0)
    assert policy.choose("h264", 640, 480) == "nvdec"
    (got,) = nvdec.sample_clips(EncodedVideo(data), [signal.SPEC], LIMITS, policy)
    (want,) = decode.sample_clips(EncodedVideo(data), [signal.SPEC], LIMITS)
    assert got.indices == want.indices
    torch.testing.assert_close(got.frames, want.frames, rtol=0, atol=0)


def test_shared_limits_are_not_retried_on_the_cpu(monkeypatch):
    data = videos.encode(videos.moving_scene(17, 480, 640))
    policy = nvdec.DecodePolicy("nvdec", torch.device("cuda", 0), min_pixels=0)
    calls = []
    # No GPU here: the GPU path's conversion on software frames stands in for an NVDEC that opens the stream.
    monkeypatch.setattr(nvdec, "nvdec_path", lambda device: nvdec.NV12_ON_CPU)
    monkeypatch.setattr(nvdec.decode, "sample_clips", lambda *a: calls.append(a))  # the CPU decoder
    with pytest.raises(TooLarge):
        nvdec.sample_clips(EncodedVideo(data), [signal.SPEC], decode.Limits(100 * 100, 10**6, 10**6), policy)
    assert calls == []


_ONE_HUGE_FRAME = """
import io, sys
from fractions import Fraction
import av
buf = io.BytesIO()
with av.open(buf, "w", format="matroska") as c:
    s = c.add_stream("libx264", rate=Fraction(16))
    s.height, s.width, s.pix_fmt, s.options = 16000, 16000, "yuv420p", {"preset": "ultrafast"}
    frame = av.VideoFrame(16000, 16000, "yuv420p")
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    for packet in [*s.encode(frame), *s.encode()]:
        c.mux(packet)
open(sys.argv[1], "wb").write(buf.getvalue())
"""
_PROBE_PEAK = """
import resource, sys
from service import decode, nvdec
from service.ingest import EncodedVideo
video = EncodedVideo(open(sys.argv[1], "rb").read())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
header = nvdec.probe(video, decode.Limits(4096 * 2304, 600, 36000))
print(header, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_probing_for_nvdec_allocates_no_frame_over_the_pixel_limit(tmp_path):
    """A CUDA host probes every container for the NVDEC policy before the shared decode opens it:
    that probe opened without the pixel limit, so one 750 KB 16000x16000 H.264 frame grew the
    process by ~590 MB before the 413. Each step in its own process, to read its peak RSS."""
    import subprocess
    import sys

    bomb = tmp_path / "bomb.mkv"
    subprocess.run([sys.executable, "-c", _ONE_HUGE_FRAME, str(bomb)], check=True, timeout=120)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE_PEAK, str(bomb)], check=True, timeout=120, capture_output=True, text=True
    ).stdout.split()
    assert int(out[-1]) < 250, out  # MB of peak growth (the frame alone is 384 MB); the header may still be read


def test_decode_policy():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    auto = nvdec.DecodePolicy("auto", cuda, min_pixels=640 * 360)
    assert auto.choose("h264", 1280, 720) == "nvdec" and auto.choose("hevc", 3840, 2160) == "nvdec"
    assert auto.choose("h264", 480, 270) == "cpu"  # below the break-even
    assert auto.choose("mpeg4", 1920, 1080) == "cpu"  # not an NVDEC codec here
    assert auto.choose("h264", 8192, 4320) == "cpu"  # beyond NVDEC's H.264 limit
    assert auto.choose("vp9", 1281, 721) == "cpu"  # odd sizes: FFmpeg interpolates their chroma
    assert auto.choose("libdav1d", 1920, 1080) == "cpu"  # AV1 opens with dav1d, which has no NVDEC config
    assert nvdec.DecodePolicy("nvdec", cuda, min_pixels=640 * 360).choose("h264", 480, 270) == "nvdec"
    assert nvdec.DecodePolicy("cpu", cuda).choose("h264", 1920, 1080) == "cpu"
    assert nvdec.DecodePolicy("auto", cpu).choose("h264", 1920, 1080) == "cpu"
    assert auto.pixels_id == "nvdec" and nvdec.DecodePolicy("auto", cpu).pixels_id == "cpu"


def test_cache_keys_name_the_decode_path_and_the_device():
    """A gateway that can decode on the GPU keys its entries apart from a CPU one (building its
    engine touches no GPU); the weight-free signal model computes in float32 where its frames are."""
    models = builtin_models()
    cuda = Placement(torch.device("cuda", 0), torch.bfloat16)
    on_cpu = Engine(test_settings(), models, InProcessBackend(models))
    on_cuda = Engine(test_settings(), models, InProcessBackend(models, placement=cuda))
    assert on_cpu.variants["signal"] == "cpu.cpu.float32.none"
    assert on_cuda.variants["signal"] == "nvdec.cuda.float32.none"


def test_placement_resolution():
    assert resolve("cpu", "auto") == CPU
    assert resolve("cpu", "bfloat16") == Placement(torch.device("cpu"), torch.bfloat16)
    assert resolve("auto", "auto").device == (
        torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    )
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        resolve("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve("cuda:0")
    assert Placement(torch.device("cuda", 1), torch.bfloat16).describe() == {"device": "cuda:1", "dtype": "bfloat16"}


def test_batch_assembly_pads_once_on_the_target_device():
    a, b = torch.full((3, 4, 4, 3), 7, dtype=torch.uint8), torch.full((1, 4, 4, 3), 9, dtype=torch.uint8)
    batch = FrameBatch.assemble([a, b.numpy()], ["x", "y"], "cpu")
    assert batch.frames.shape == (2, 3, 4, 4, 3) and batch.num_frames.tolist() == [3, 1]
    assert (batch.frames[0] == 7).all() and (batch.frames[1, 0] == 9).all() and (batch.frames[1, 1:] == 0).all()


def test_batches_by_frame_size_keep_each_clip_with_its_prompt():
    small, large = torch.zeros((2, 8, 8, 3), dtype=torch.uint8), torch.ones((3, 16, 16, 3), dtype=torch.uint8)
    groups = FrameBatch.by_size([small, large, small + 5], ["a", "b", "c"], "cpu")
    assert [members for members, _ in groups] == [[0, 2], [1]]
    (_, first), (_, second) = groups
    assert first.prompts == ["a", "c"] and first.num_frames.tolist() == [2, 2] and (first.frames[1] == 5).all()
    assert second.prompts == ["b"] and second.frames.shape == (1, 3, 16, 16, 3)


async def test_host_stage_of_the_next_batch_overlaps_the_device_stage():
    """Batch 2's ``pre`` runs while batch 1's ``core`` is still running (core waits for it)."""
    second_pre_ran = threading.Event()
    threads: dict[str, str] = {}

    def pre(frames, counts, prompts):
        threads.setdefault("pre", threading.current_thread().name)
        if prompts == ["second"]:
            second_pre_ran.set()
        return frames, counts, prompts

    def core(prepared):
        frames, counts, prompts = prepared
        threads.setdefault("core", threading.current_thread().name)
        if prompts == ["first"]:
            assert second_pre_ran.wait(10), "the second batch's host stage did not run during the first's core"
        return signal.forward(frames, counts)

    staged = RewardModel(signal.SPEC.model_copy(update={"name": "staged"}), signal.forward, stages=Stages(pre, core))
    backend = InProcessBackend({"staged": staged})
    assert backend.max_concurrent_batches == 2
    await backend.start()
    try:
        clip = torch.from_numpy(videos.moving_scene(5, 64, 64))
        first, second = (FrameBatch.assemble([clip], [p]) for p in ("first", "second"))
        out = await asyncio.gather(backend.infer("staged", first), backend.infer("staged", second))
    finally:
        await backend.close()
    np.testing.assert_allclose(out[0], signal.forward(first.frames, first.num_frames).numpy())
    assert threads["pre"].startswith("inference-pre") and threads["core"].startswith("inference_")


def test_models_and_readyz_say_where_each_model_runs():
    running = start_server(
        __import__("service.api", fromlist=["create_app"]).create_app(
            test_settings(models=["signal"], device="cpu", dtype="auto"), models=builtin_models()
        )
    )
    try:
        expected = {"signal": {"backend": "inprocess", "device": "cpu", "dtype": "float32", "decode": "cpu"}}
        assert httpx.get(f"{running.url}/v1/models").json()["placement"] == expected
        ready = httpx.get(f"{running.url}/readyz")
        assert ready.status_code == 200 and ready.json()["placement"] == expected
    finally:
        running.stop()


def test_triton_python_model_runs_on_gpu_instances_when_the_device_is_cuda():
    from models.triton_repo import TritonOptions, python_config

    model = builtin_models()["signal"]
    on_gpu = python_config(model, TritonOptions(device="cuda", dtype="bfloat16"))
    assert "kind: KIND_GPU" in on_gpu and 'key: "device" value: { string_value: "cuda" }' in on_gpu
    assert 'key: "dtype" value: { string_value: "bfloat16" }' in on_gpu
    assert "kind: KIND_CPU" in python_config(model, TritonOptions())
