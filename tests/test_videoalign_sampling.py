"""VideoAlign's frame sampling and resizing against the real ``qwen-vl-utils`` package.

VideoAlign's ``vision_process.py`` is qwen-vl-utils 0.0.8's (same constants: fps 2, frames in
[4, min(768, total)], count rounded to an even number with Python's ``round``, sides multiples
of 28, area in [128*28*28, max_frame_pixels], bicubic with antialias); so the test runs
qwen-vl-utils 0.0.8's own ``fetch_video`` with VideoAlign's arguments (``fps``, ``max_pixels``)
and compares with the gateway's ``sample_frames`` for the videoalign spec.

What is and is not the package's code: qwen-vl-utils reads a video with ``torchvision.io.read_video``
and resizes with ``torchvision.transforms.functional.resize``. torchvision cannot be installed here:
the only wheels for torch 2.13 are CUDA builds whose compiled ops fail to load against the CPU
torch, and an installed-but-unloadable torchvision breaks transformers' imports. So the package is
imported with a small stand-in for those two functions: the reader decodes every frame with PyAV
to RGB24 (what ``read_video`` did) and the resize is torchvision's tensor path for uint8 input
(float32 ``interpolate(mode="bicubic", antialias=True, align_corners=False)``, clamp to [0, 255],
round). Frame counts, frame indices, the target size rule and the min/max pixel handling are the
package's own code. Frame indices are read back by a second run whose frames carry their index.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.videoalign import checkpoint, make_spec
from service.decode import Limits, sample_frames, sample_indices
from service.ingest import EncodedVideo
from tests import videos

SPEC = make_spec(checkpoint.VideoRewardConfig(base="Qwen/Qwen2-VL-2B-Instruct"), version="test")
PIXEL_TOLERANCE = 1  # grey levels; observed 0 (same decoder, same resize kernel)

_index_coded = False  # the stand-in reader returns frames whose pixels encode their index


def _read_video(path, start_pts=0.0, end_pts=None, pts_unit="sec", output_format="TCHW"):
    path = str(path).removeprefix("file://")
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        fps = float(stream.average_rate)
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    if _index_coded:
        i = torch.arange(len(video))
        video = torch.zeros_like(video)
        video[:, 0], video[:, 1] = (i % 256).view(-1, 1, 1).to(torch.uint8), (i // 256).view(-1, 1, 1).to(torch.uint8)
    return video, torch.empty(0), {"video_fps": fps}


def _resize(video, size, interpolation="bicubic", antialias=True):
    out = F.interpolate(video.float(), size=list(size), mode=interpolation, align_corners=False, antialias=antialias)
    return out.clamp(0, 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def qwen_vp():
    """qwen_vl_utils.vision_process (0.0.8) imported against the torchvision stand-in; sys.modules restored after."""
    names = ["torchvision", "torchvision.io", "torchvision.transforms", "qwen_vl_utils", "qwen_vl_utils.vision_process"]
    saved = {n: sys.modules.pop(n, None) for n in names}
    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.19.0"
    tv.io = types.ModuleType("torchvision.io")
    tv.io.read_video = _read_video
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.functional = types.SimpleNamespace(resize=_resize)
    tv.transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
    sys.modules.update({"torchvision": tv, "torchvision.io": tv.io, "torchvision.transforms": tv.transforms})
    try:
        vp = importlib.import_module("qwen_vl_utils.vision_process")
        assert importlib.metadata.version("qwen-vl-utils") == "0.0.8"
        assert (vp.FPS, vp.FPS_MIN_FRAMES, vp.FPS_MAX_FRAMES, vp.FRAME_FACTOR, vp.IMAGE_FACTOR) == (2.0, 4, 768, 2, 28)
        assert vp.VIDEO_MIN_PIXELS == SPEC.resolution.min_pixels
        yield vp
    finally:
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update({n: m for n, m in saved.items() if m is not None})


# (frames, fps, height, width): lengths, frame rates and aspect ratios of DESIGN §1 and beyond.
CASES = [
    (33, 16, 240, 416),  # Wan2.1-1.3B rollout, 2.06 s -> 4 frames (the minimum)
    (53, 24, 480, 480),  # square
    (53, 30, 400, 640),
    (49, 8, 512, 512),  # 6.1 s -> 12.25 -> 12
    (35, 10, 360, 200),  # portrait; 7.0 frames wanted: Python round gives 8 where floor would give 6
    (45, 10, 180, 320),  # small: scaled up to the 128*28*28 pixel minimum; 9.0 -> round(4.5)=4 -> 8
    (121, 30, 288, 512),
    (9, 4, 240, 416),  # few frames
]


@pytest.mark.parametrize("total,fps,height,width", CASES)
def test_sampling_and_resize_match_qwen_vl_utils(tmp_path: Path, qwen_vp, total, fps, height, width):
    global _index_coded
    data = videos.encode(videos.moving_scene(total, height, width), "mp4", fps=fps)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    ele = {
        "type": "video",
        "video": f"file://{path}",
        "max_pixels": SPEC.resolution.max_pixels,
        "fps": SPEC.sampling.fps,
    }

    ours = sample_frames(EncodedVideo(data), SPEC, Limits(10**9, 10**6, 10**6))
    theirs = qwen_vp.fetch_video(dict(ele))  # float [n, 3, h, w]
    _index_coded = True
    try:
        coded = qwen_vp.fetch_video(dict(ele))
    finally:
        _index_coded = False
    their_indices = (coded[:, 0, 0, 0] + 256 * coded[:, 1, 0, 0]).long().tolist()

    assert ours.indices == their_indices
    assert len(ours.indices) % 2 == 0 and len(ours.indices) >= 4
    assert ours.frames.shape == (len(their_indices), theirs.shape[2], theirs.shape[3], 3)
    h, w = ours.frames.shape[1:3]
    assert h % 28 == 0 and w % 28 == 0 and h * w <= SPEC.resolution.max_pixels
    diff = np.abs(ours.frames.numpy().astype(np.int16) - theirs.permute(0, 2, 3, 1).numpy().astype(np.int16))
    assert diff.max() <= PIXEL_TOLERANCE, f"max pixel difference {diff.max()}"
    print(f"{total}x{height}x{width}@{fps}: {len(ours.indices)} frames at {h}x{w}, max pixel diff {diff.max()}")


def test_frame_count_rule_matches_smart_nframes(qwen_vp):
    """Index lists over many lengths and frame rates (no decoding): smart_nframes + linspace."""
    checked = 0
    for video_fps in (7.0, 8.0, 12.0, 15.0, 16.0, 23.976, 24.0, 25.0, 30.0, 60.0):
        for total in range(4, 400):
            n = qwen_vp.smart_nframes({"fps": 2.0}, total_frames=total, video_fps=video_fps)
            expected = torch.linspace(0, total - 1, n).round().long().tolist()
            assert sample_indices(total, video_fps, SPEC.sampling) == expected, (total, video_fps)
            checked += 1
    assert checked == 3960
