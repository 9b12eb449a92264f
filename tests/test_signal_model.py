"""The `signal` model: each dimension moves the right way on controlled degradations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import signal
from service.decode import Limits, sample_frames
from service.ingest import EncodedVideo, RawFrames
from tests import videos

LIMITS = Limits(max_pixels=4096 * 2304, max_duration_s=600, max_total_frames=36000)
DIMS = signal.SPEC.dimension_names
SHAPES = [(33, 240, 416), (53, 480, 480), (53, 400, 640), (49, 512, 512)]  # DESIGN section 1


def scores(frames: np.ndarray, fmt: str | None = None) -> dict[str, float]:
    """Score frames through the service's sampling path (optionally via a real encode)."""
    source = RawFrames(frames, 16.0) if fmt is None else EncodedVideo(videos.encode(frames, fmt))
    clip = sample_frames(source, signal.SPEC, LIMITS).frames.numpy()
    out = signal.forward(torch.from_numpy(clip[None]), torch.tensor([len(clip)]))
    return dict(zip(DIMS, out[0].tolist()))


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def clean(request) -> np.ndarray:
    return videos.moving_scene(*request.param, speed=3.0)


def test_scores_are_in_range(clean):
    s = scores(clean)
    assert set(s) == set(DIMS)
    assert all(0.0 <= v <= 1.0 for v in s.values()), s


def test_blur_lowers_sharpness(clean):
    assert scores(videos.blur(clean))["sharpness"] < 0.5 * scores(clean)["sharpness"]


def test_flicker_lowers_temporal_stability(clean):
    base = scores(clean)["temporal_stability"]
    assert base > 0.8
    assert scores(videos.flicker(clean, amount=0.15))["temporal_stability"] < 0.5 * base


def test_dropped_and_duplicated_frames_lower_motion_smoothness(clean):
    base = scores(clean)["motion_smoothness"]
    assert scores(videos.stutter(clean))["motion_smoothness"] < base - 0.15


@pytest.mark.parametrize("gain", [0.3, 2.2], ids=["under", "over"])
def test_bad_exposure_lowers_exposure(clean, gain):
    base = scores(clean)["exposure"]
    assert base > 0.8
    assert scores(videos.exposure(clean, gain))["exposure"] < 0.5 * base


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_degradations_survive_a_real_encode(fmt):
    clean = videos.moving_scene(33, 240, 416, speed=3.0)
    base = scores(clean, fmt)
    assert scores(videos.blur(clean), fmt)["sharpness"] < 0.5 * base["sharpness"]
    assert scores(videos.flicker(clean, 0.15), fmt)["temporal_stability"] < 0.5 * base["temporal_stability"]
    assert scores(videos.stutter(clean), fmt)["motion_smoothness"] < base["motion_smoothness"] - 0.15
    assert scores(videos.exposure(clean, 0.3), fmt)["exposure"] < 0.5 * base["exposure"]


def test_static_video_is_perfectly_stable_and_smooth():
    still = np.repeat(videos.moving_scene(1, 240, 416), 20, axis=0)
    s = scores(still)
    assert s["temporal_stability"] == pytest.approx(1.0)
    assert s["motion_smoothness"] == pytest.approx(1.0)


def test_contrast_and_colourfulness_respond():
    clean = videos.moving_scene(17, 240, 416)
    grey = np.repeat(clean.mean(axis=-1, keepdims=True), 3, axis=-1).astype(np.uint8)
    flat = (clean.astype(np.float32) * 0.3 + 128 * 0.7).astype(np.uint8)
    assert scores(grey)["colourfulness"] < 0.2 * scores(clean)["colourfulness"]
    assert scores(flat)["contrast"] < 0.5 * scores(clean)["contrast"]


def test_padding_does_not_change_scores():
    """An item scored alone equals the same item zero-padded in a batch with a longer one."""
    short = sample_frames(RawFrames(videos.moving_scene(9, 128, 128), 16.0), signal.SPEC, LIMITS).frames.numpy()
    long = sample_frames(
        RawFrames(videos.flicker(videos.moving_scene(20, 128, 128)), 16.0), signal.SPEC, LIMITS
    ).frames.numpy()
    alone = signal.forward(torch.from_numpy(short[None]), torch.tensor([9]))
    batch = np.zeros((2, 20, *short.shape[1:]), dtype=np.uint8)
    batch[0, :9], batch[1] = short, long
    together = signal.forward(torch.from_numpy(batch), torch.tensor([9, 20]))
    assert together.dtype == torch.float32 and together.shape == (2, len(DIMS))
    np.testing.assert_allclose(together[0].numpy(), alone[0].numpy(), atol=1e-6)
    assert not np.allclose(together[1].numpy(), alone[0].numpy(), atol=1e-3)
