"""Decoding and sampling with PyAV on real encoded videos."""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest
import torch

from models import signal
from models.spec import FrameSampling, Resolution
from service import decode, preprocess
from service.decode import Limits, sample_clips, sample_frames, sample_indices
from service.errors import Timeout, TooLarge, Unprocessable, UnsupportedMedia
from service.ingest import EncodedVideo, RawFrames
from tests import videos

LIMITS = Limits(max_pixels=4096 * 2304, max_duration_s=600, max_total_frames=36000)
NATIVE = Resolution(max_pixels=10**8, size_factor=1)  # no resizing: compare pixels directly


def spec_with(sampling: FrameSampling, resolution: Resolution = NATIVE):
    return signal.SPEC.model_copy(update={"sampling": sampling, "resolution": resolution})


def test_sample_indices_by_fps_follows_videoalign_rule():
    by_fps = FrameSampling(mode="fps", fps=2, min_frames=4, max_frames=768, multiple_of=2)
    # 10 s at 30 fps -> 20 frames at 2 fps, uniform over [0, 299]
    idx = sample_indices(300, 30.0, by_fps)
    assert len(idx) == 20 and idx[0] == 0 and idx[-1] == 299
    assert idx == np.linspace(0, 299, 20).round().astype(int).tolist()
    assert len(sample_indices(33, 16.0, by_fps)) == 4  # 4.1 -> clamped/rounded to an even 4
    assert len(sample_indices(53, 16.0, by_fps)) == 6  # 6.6 -> 6 (even, floored)
    with pytest.raises(Unprocessable):
        sample_indices(3, 16.0, by_fps)  # fewer frames than the minimum


def test_sample_indices_by_count_and_segments():
    assert sample_indices(33, 16.0, FrameSampling(mode="count", count=64, max_frames=64)) == list(range(33))
    assert len(sample_indices(300, 16.0, FrameSampling(mode="count", count=64, max_frames=64))) == 64
    segs = sample_indices(40, 16.0, FrameSampling(mode="segments", segments=4))
    assert segs == [5, 15, 25, 35]  # one frame from the middle of each segment


def test_stride_spacing_takes_the_first_frame_of_each_part_as_opencv_samplers_do():
    """UnifiedReward's script keeps frames ``int(i * total / n)`` of an OpenCV read; linspace would
    put the last sample on the last frame, up to total / n - 1 frames from the reference's."""
    stride = FrameSampling(mode="count", count=16, max_frames=16, spacing="stride")
    assert sample_indices(121, 16.0, stride) == [int(i * 121 / 16) for i in range(16)]
    assert sample_indices(121, 16.0, stride)[-1] == 113
    assert sample_indices(121, 16.0, FrameSampling(mode="count", count=16, max_frames=16))[-1] == 120
    assert sample_indices(10, 16.0, stride) == list(range(10))  # shorter than n: every frame


def test_videoscore2_floors_its_frame_count_as_current_qwen_vl_utils_does():
    """61 frames at 24 fps at 2 fps is 5.08 frames: qwen-vl-utils 0.0.10+ floors to 4 (0.0.8: 6)."""
    from models.judges import videoscore2

    assert len(sample_indices(61, 24.0, videoscore2.make_spec().sampling)) == 4


def test_target_size_keeps_aspect_and_bounds_area():
    policy = signal.SPEC.resolution
    for h, w in [(240, 416), (480, 480), (400, 640), (512, 512), (1080, 1920), (20, 20)]:
        th, tw = preprocess.target_size(h, w, policy)
        assert th % 16 == 0 and tw % 16 == 0
        assert policy.min_pixels <= th * tw <= policy.max_pixels
        assert abs(th / tw - h / w) / (h / w) < 0.15
    assert preprocess.target_size(240, 416, policy) == (192, 336)


def test_one_decode_serves_several_specs_exactly_as_separate_decodes(monkeypatch):
    data = videos.encode(videos.moving_scene(60, 240, 416), gop=8)
    specs = [
        signal.SPEC,
        spec_with(
            FrameSampling(mode="fps", fps=2, min_frames=2, max_frames=32, multiple_of=2),
            Resolution(max_pixels=128 * 224, size_factor=28, filter="bicubic"),
        ),
        spec_with(FrameSampling(mode="segments", segments=5)),
    ]
    alone = [sample_frames(EncodedVideo(data), spec, LIMITS) for spec in specs]
    converted = []
    real_decode_at = decode._decode_at
    monkeypatch.setattr(decode, "_decode_at", lambda *a: converted.append(a[4]) or real_decode_at(*a))
    together = sample_clips(EncodedVideo(data), specs, LIMITS)
    assert len(converted) == 1  # one pass over the container
    assert converted[0] == sorted(set().union(*(c.indices for c in alone)))  # each frame converted once
    for one, clip in zip(alone, together):
        assert clip.indices == one.indices
        torch.testing.assert_close(clip.frames, one.frames, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_container_frames_match_the_source(fmt):
    frames = videos.moving_scene(33, 240, 416)
    clip = sample_frames(EncodedVideo(videos.encode(frames, fmt)), spec_with(signal.SPEC.sampling), LIMITS)
    assert clip.total_frames == 33 and clip.fps == pytest.approx(16.0)
    assert clip.frames.shape == (33, 240, 416, 3) and clip.frames.dtype == torch.uint8
    error = float(np.abs(clip.frames.numpy().astype(int) - frames).mean())
    assert error < 6, f"mean abs error {error:.2f}"  # lossy codec + 4:2:0 chroma; the neighbouring frame is ~10 off


@pytest.mark.parametrize("colorspace", [8, 10, 14], ids=["ycgco", "bt2020-cl", "ictcp"])
def test_streams_tagged_with_a_matrix_ffmpeg_cannot_convert_still_decode(colorspace):
    """FFmpeg 8's converter refuses these matrix tags (EOPNOTSUPP), which made valid videos 422
    "corrupt or truncated"; their frames now convert as untagged ones, as older FFmpeg did."""
    data = videos.encode(videos.moving_scene(8, 120, 160), colorspace=colorspace)
    tagged = sample_frames(EncodedVideo(data), spec_with(signal.SPEC.sampling), LIMITS)
    with av.open(io.BytesIO(data)) as container:  # the same frames, their tag cleared by hand
        untagged = []
        for frame in container.decode(video=0):
            frame.colorspace = 2  # AVCOL_SPC_UNSPECIFIED
            untagged.append(frame.to_ndarray(format="rgb24"))
    # One encode: two encodes of the same frames at these tags differ (FFmpeg's RGB->YUV at them varies).
    np.testing.assert_array_equal(tagged.frames.numpy(), np.stack(untagged))


@pytest.mark.parametrize("fmt, codec", [("mpeg", "mpeg2video"), ("nut", "ffv1"), ("nut", "mpeg4")])
def test_demuxers_that_seek_short_of_the_keyframe_do_not_loop(fmt, codec):
    """MPEG-PS and NUT land before the keyframe a seek asks for; the seeking loop used to seek
    again at once, forever (a 4 KB upload held a decode worker and its memory grew until the
    process was killed). Each seek must now aim past the last one: the frames equal a full decode.
    A deadline stops the test rather than hang it if that regresses."""
    data = videos.encode(videos.moving_scene(33, 64, 64), fmt, codec=codec, gop=4)
    sparse = spec_with(FrameSampling(mode="fps", fps=2, min_frames=4, max_frames=768, multiple_of=2))
    with av.open(io.BytesIO(data)) as c:
        everything = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    limits = Limits(LIMITS.max_pixels, LIMITS.max_duration_s, LIMITS.max_total_frames, deadline=time.monotonic() + 60)
    clip = sample_frames(EncodedVideo(data), sparse, limits)
    for got, i in zip(clip.frames, clip.indices, strict=True):
        np.testing.assert_array_equal(got.numpy(), everything[i])


def test_decoding_stops_at_the_requests_deadline():
    """Decoding runs in a thread asyncio cannot cancel: past the deadline its loops stop themselves."""
    data = videos.encode(videos.moving_scene(33, 64, 64))
    late = Limits(LIMITS.max_pixels, LIMITS.max_duration_s, LIMITS.max_total_frames, deadline=time.monotonic() - 1)
    with pytest.raises(Timeout):
        sample_frames(EncodedVideo(data), signal.SPEC, late)


def test_frames_sharing_a_timestamp_are_counted_in_order():
    """Matroska keeps milliseconds: at 2000 fps two frames share a timestamp (was: KeyError, 422)."""
    frames = videos.moving_scene(12, 64, 64)
    data = videos.encode(frames, "mkv", fps=2000)
    clip = sample_frames(EncodedVideo(data), spec_with(FrameSampling(mode="count", count=12, max_frames=12)), LIMITS)
    assert clip.indices == list(range(12))
    with av.open(io.BytesIO(data)) as c:
        for got, want in zip(clip.frames, c.decode(video=0), strict=True):
            np.testing.assert_array_equal(got.numpy(), want.to_ndarray(format="rgb24"))


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_sparse_sampling_with_seeks_equals_decoding_everything(fmt, monkeypatch):
    """Seeking between far-apart samples must return exactly the frames a full decode gives."""

    def no_fallback(*args):
        raise AssertionError("timestamp matching failed and fell back to counting frames")

    monkeypatch.setattr(decode, "_decode_in_order", no_fallback)
    data = videos.encode(videos.moving_scene(120, 96, 160), fmt, gop=8)
    with av.open(io.BytesIO(data)) as c:
        everything = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    sparse = spec_with(FrameSampling(mode="fps", fps=2, min_frames=4, max_frames=768, multiple_of=2))
    clip = sample_frames(EncodedVideo(data), sparse, LIMITS)
    assert clip.indices == sample_indices(120, 16.0, sparse.sampling) and len(clip.indices) == 14
    for got, i in zip(clip.frames, clip.indices):
        np.testing.assert_array_equal(got.numpy(), everything[i])


def test_raw_frames_and_container_sample_the_same_indices():
    frames = videos.moving_scene(53, 480, 480)
    spec = signal.SPEC.model_copy(update={"sampling": FrameSampling(mode="count", count=16, max_frames=16)})
    raw = sample_frames(RawFrames(frames, 16.0), spec, LIMITS)
    enc = sample_frames(EncodedVideo(videos.encode(frames)), spec, LIMITS)
    assert raw.indices == enc.indices
    assert raw.frames.shape == enc.frames.shape == (16, 256, 256, 3)


def test_header_claiming_16000x16000_is_refused_before_decoding():
    """Refused while the container is opened: stream probing decodes a frame, and its decoder
    already has the pixel limit (it used to allocate the whole 16000x16000 frame first)."""
    with pytest.raises(TooLarge, match=f"limit of {LIMITS.max_pixels} pixels"):
        sample_frames(EncodedVideo(videos.lying_header_avi()), signal.SPEC, LIMITS)


def test_overlong_duration_is_refused():
    data = videos.encode(videos.moving_scene(40, 64, 64), fps=1)  # 40 s
    with pytest.raises(TooLarge, match="lasts"):
        sample_frames(EncodedVideo(data), signal.SPEC, Limits(4096 * 2304, 30.0, 36000))
    with pytest.raises(TooLarge, match="lasts"):
        sample_frames(RawFrames(videos.moving_scene(40, 64, 64), 1.0), signal.SPEC, Limits(4096 * 2304, 30.0, 36000))


def test_hls_playlists_are_not_opened():
    """Playlist demuxers would fetch the URLs or files they name; only real containers are enabled."""
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
    with pytest.raises(UnsupportedMedia):
        sample_frames(EncodedVideo(playlist), signal.SPEC, LIMITS)


def test_uint8_bilinear_resize_is_within_one_level_of_float32():
    """The fast uint8 kernel stands in for the float32 one (see preprocess.resize)."""
    frames = videos.moving_scene(4, 480, 480)
    fast = preprocess.resize(torch.from_numpy(frames), (256, 256), signal.SPEC.resolution).numpy()
    slow = preprocess.resize(
        torch.from_numpy(frames), (256, 256), signal.SPEC.resolution.model_copy(update={"filter": "bicubic"})
    ).numpy()
    float_bilinear = torch.nn.functional.interpolate(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(256, 256), mode="bilinear", antialias=True
    )
    reference = float_bilinear.round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
    assert np.abs(fast.astype(int) - reference).max() <= 1
    assert np.abs(slow.astype(int) - reference).max() > 1  # the check can tell filters apart


# 20 frames at 30 fps, then 20 frames 200 ms apart: 4.66 s of video whose header says 30 fps.
VFR_TIMES = [33 * i for i in range(20)] + [660 + 200 * i for i in range(20)]


@pytest.mark.parametrize("fmt", ["mkv", "mp4"])
def test_variable_frame_rate_video_is_not_taken_for_truncated(fmt):
    """40 frames at a nominal 30 fps last 1.33 s by count, but their timestamps span the declared 4.5 s."""
    data = videos.encode_vfr(videos.moving_scene(40, 64, 96), VFR_TIMES, fmt)
    clip = sample_frames(EncodedVideo(data), signal.SPEC, LIMITS)
    assert clip.total_frames == 40


def test_a_held_last_frame_is_not_taken_for_truncated():
    """17 frames at 25 fps, the last held for 10 s (a freeze at the end): the header's 10.68 s are
    all there (the last frame's duration is the container's, not the median interval)."""
    raw = videos.encode(videos.moving_scene(17, 64, 64), "h264", codec="libx264")
    data = videos.retimed(raw, "mp4", [40 * i for i in range(17)], last_ms=10_000)
    assert sample_frames(EncodedVideo(data), signal.SPEC, LIMITS).total_frames == 17


def test_a_late_start_is_not_taken_for_truncated():
    """Matroska counts a first frame at 5 s into its duration: 17 frames from 5 s on are all there."""
    raw = videos.encode(videos.moving_scene(17, 64, 64), "h264", codec="libx264")
    data = videos.retimed(raw, "mkv", [5000 + 40 * i for i in range(17)])
    assert sample_frames(EncodedVideo(data), signal.SPEC, LIMITS).total_frames == 17


def test_truncated_variable_frame_rate_video_is_still_refused():
    data = videos.encode_vfr(videos.moving_scene(40, 64, 96), VFR_TIMES, "mkv")
    with av.open(io.BytesIO(data)) as container:  # cut inside the slow part: frames stop at about 2.5 s
        stream = container.streams.video[0]
        cut = next(p.pos for p in container.demux(stream) if p.pts is not None and p.pts >= 2500)
    with pytest.raises(Unprocessable) as refused:
        sample_frames(EncodedVideo(data[:cut]), signal.SPEC, LIMITS)
    assert refused.value.code == "truncated_video"


def _every_frame(data: bytes) -> list[np.ndarray]:
    """The reference: every frame a sequential decode gives, in order."""
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


WRAP_MS = (1 << 33) // 90 - 2000  # MPEG-TS timestamps (33 bits at 90 kHz) wrap 2 s into the video


@pytest.mark.parametrize(
    "fmt, times_ms",
    [
        ("mp4", [-400 + 40 * i for i in range(120)]),  # an edit list hides the first 10 frames (a trimmed clip)
        ("mpegts", [WRAP_MS + 40 * i for i in range(120)]),
    ],
    ids=["mp4-edit-list", "mpegts-wrap"],
)
def test_streams_that_start_hidden_or_wrap_sample_what_a_full_decode_gives(fmt, times_ms):
    """Found by a probe: the edit list's hidden frames were counted (240 frames taken for 250, and
    refused or shifted), and a wrapping MPEG-TS was refused (its count-in-order fallback seeked to
    0, which lands mid-stream)."""
    data = videos.encode_vfr(videos.moving_scene(120, 64, 96), times_ms, fmt, nominal_fps=25)
    everything = _every_frame(data)
    spec = spec_with(FrameSampling(mode="count", count=16, max_frames=16))
    clip = sample_frames(EncodedVideo(data), spec, LIMITS)
    assert clip.total_frames == len(everything) == (110 if fmt == "mp4" else 120)
    assert clip.indices == sample_indices(len(everything), clip.fps, spec.sampling)
    for got, i in zip(clip.frames, clip.indices):
        np.testing.assert_array_equal(got.numpy(), everything[i])


def test_a_frame_just_before_an_open_gops_keyframe_is_reached_by_its_seek(monkeypatch):
    """In an open GOP the B-frames just before a keyframe in display order are decoded after it: a
    seek asked for such a frame lands on that keyframe, past it, and the whole video was decoded
    again by counting. Seeks now ask for the keyframe before the frame."""

    def no_fallback(*args):
        raise AssertionError("timestamp matching failed and fell back to counting frames")

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 64, 96, "yuv420p"
        stream.options = {
            "preset": "veryfast",
            "x264-params": "keyint=25:min-keyint=25:scenecut=0:bframes=3:open-gop=1",
        }
        for array in videos.moving_scene(97, 64, 96):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = buf.getvalue()
    everything = _every_frame(data)
    monkeypatch.setattr(decode, "_decode_in_order", no_fallback)
    spec = spec_with(FrameSampling(mode="count", count=5, max_frames=5))
    clip = sample_frames(EncodedVideo(data), spec, LIMITS)
    assert 24 in clip.indices  # just before the keyframe at 25
    for got, i in zip(clip.frames, clip.indices):
        np.testing.assert_array_equal(got.numpy(), everything[i])
