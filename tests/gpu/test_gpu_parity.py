"""GPU path parity: NVDEC decode + GPU colour conversion, models on CUDA in fp32 and bf16, the gateway
on CUDA — against the CPU path on the same videos. Skipped without CUDA (see the skip reason).

Tolerances:
- pixels: NVDEC's H.264/VP9 output is bit-exact with FFmpeg's software decoders (the codecs are
  specified to the bit), so the only difference is NV12->RGB: torch's float BT.601 vs FFmpeg's
  fixed-point tables, about one grey level (tests/test_gpu_path.py measures it on the CPU).
  The same bounds as there: mean <= 1.5 levels, max <= 6 after the resize.
- scores, fp32 on CUDA vs fp32 on the CPU, same frames: only summation order differs (TF32 is
  switched off), relative error ~1e-6 per op; scores are O(1): atol 1e-3.
- scores, bf16 on CUDA vs fp32 on the CPU: bf16 keeps 8 mantissa bits (relative rounding
  2^-9 ~ 0.2% per op); over the tiny test models' ~10 rounding stages that compounds to a few
  percent of the raw head outputs, which reach ~6 in magnitude (they are not normalised):
  atol 0.05 + rtol 0.05. Measured on the CPU in bf16 with the same checkpoints, clips and
  prompts: up to 0.049 absolute (``loadtests/gpu_tolerances.py``).
- gateway scores, NVDEC vs CPU decode (both fp32): the ~1 grey level of the NV12 conversion goes
  through the tiny random-weight model, which amplifies pixel changes far more than a trained
  one: the GPU path's conversion run on the CPU (nvdec.NV12_ON_CPU) moved its scores by up to
  0.10 on these clips (``loadtests/gpu_tolerances.py``), so atol 0.25. Pixel parity itself is
  the first test's, at 1.5 / 6 levels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: GPU parity tests run on a GPU machine (README 'GPU path' has the command)",
)

from models import registry, signal  # noqa: E402
from models.placement import CPU, Placement  # noqa: E402
from service import decode, nvdec  # noqa: E402
from service.backends.base import FrameBatch  # noqa: E402
from service.ingest import EncodedVideo  # noqa: E402
from tests import videos  # noqa: E402
from tests.tiny_checkpoints import BASE_ID  # noqa: E402

LIMITS = decode.Limits(10**9, 10**6, 10**6)
CUDA = torch.device("cuda", 0)
MEAN_LEVELS, MAX_LEVELS = 1.5, 6
FP32_ATOL, BF16_ATOL, BF16_RTOL, DECODE_ATOL = 1e-3, 5e-2, 5e-2, 0.25


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("fmt,shape", [("mp4", (53, 480, 480)), ("mp4", (33, 720, 1280)), ("webm", (33, 480, 640))])
def test_nvdec_same_indices_pixels_within_tolerance_frames_stay_on_the_gpu(fmt, shape):
    data = videos.encode(videos.moving_scene(*shape), fmt, gop=8)
    (cpu,) = decode.sample_container(data, [signal.SPEC], LIMITS)
    (gpu,) = decode.sample_container(data, [signal.SPEC], LIMITS, nvdec.nvdec_path(CUDA))
    assert gpu.frames.is_cuda  # decoded, converted and resized without visiting the host
    assert gpu.indices == cpu.indices
    diff = (gpu.frames.cpu().int() - cpu.frames.int()).abs().float()
    assert diff.mean() <= MEAN_LEVELS and diff.max() <= MAX_LEVELS, (diff.mean(), diff.max())


def test_policy_decodes_on_the_gpu_and_falls_back_for_what_nvdec_lacks():
    policy = nvdec.DecodePolicy("auto", CUDA, min_pixels=0)
    data = videos.encode(videos.moving_scene(17, 480, 640))
    (clip,) = nvdec.sample_clips(EncodedVideo(data), [signal.SPEC], LIMITS, policy)
    assert clip.frames.is_cuda
    mpeg4 = videos.encode(videos.moving_scene(17, 480, 640), "mkv", codec="mpeg4")
    (clip,) = nvdec.sample_clips(EncodedVideo(mpeg4), [signal.SPEC], LIMITS, policy)
    assert not clip.frames.is_cuda  # not in NVDEC_CODECS: the CPU decoder


def test_nv12_conversion_on_the_gpu_equals_the_cpu():
    y = torch.randint(0, 256, (64, 96), dtype=torch.uint8)
    uv = torch.randint(0, 256, (32, 48, 2), dtype=torch.uint8)
    from service.colour import nv12_to_rgb

    assert (nv12_to_rgb(y.cuda(), uv.cuda()).cpu().int() - nv12_to_rgb(y, uv).int()).abs().max() <= 1


@pytest.mark.parametrize("name", ["videoalign", "clip-segmental"])
@pytest.mark.parametrize(
    "dtype,atol,rtol", [(torch.float32, FP32_ATOL, 0.0), (torch.bfloat16, BF16_ATOL, BF16_RTOL)], ids=["fp32", "bf16"]
)
def test_scores_on_cuda_match_the_cpu(tiny_dirs, name, dtype, atol, rtol):
    directory = tiny_dirs["videoalign" if name == "videoalign" else "clip"]
    bases = {BASE_ID: tiny_dirs["base"]}
    on_cpu = registry.load_model(name, directory, bases, CPU)
    on_gpu = registry.load_model(name, directory, bases, Placement(CUDA, dtype))
    data = [videos.encode(videos.moving_scene(33, 240, 416, speed=s)) for s in (1.0, 3.0)]
    clips = [decode.sample_frames(EncodedVideo(v), on_cpu.spec, LIMITS).frames for v in data]
    prompts = ["a cat surfing a wave", "a red car in the rain"]
    with torch.inference_mode():
        want = on_cpu.forward(*_args(FrameBatch.assemble(clips, prompts, "cpu"))).float().numpy()
        got = on_gpu.forward(*_args(FrameBatch.assemble(clips, prompts, CUDA))).float().cpu().numpy()
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


def test_gateway_on_cuda_scores_like_the_cpu_gateway(tiny_dirs):
    """The same mp4 through two gateways: VRS_DEVICE=cpu (CPU decode, fp32) and cuda (NVDEC, fp32)."""
    import httpx

    from service.api import create_app
    from tests.conftest import start_server, test_settings

    data = videos.encode(videos.unique_clip(33, 480, 640))
    body = {
        "items": [{"video": {"data": __import__("base64").b64encode(data).decode()}, "prompt": "a cat"}],
        "models": ["videoalign"],
        "cache": "bypass",
    }
    scores = {}
    for device in ("cpu", "cuda"):
        settings = test_settings(
            models=["videoalign"],
            default_model="videoalign",
            device=device,
            dtype="float32",
            decode="nvdec",
            nvdec_min_pixels=0,
            model_dirs={"videoalign": tiny_dirs["videoalign"]},
            base_model_dirs={BASE_ID: tiny_dirs["base"]},
        )
        running = start_server(create_app(settings))
        try:
            placement = httpx.get(f"{running.url}/v1/models").json()["placement"]["videoalign"]
            assert placement["device"] == ("cpu" if device == "cpu" else "cuda:0")
            response = httpx.post(f"{running.url}/v1/score", json=body, timeout=120)
            assert response.status_code == 200, response.text
            scores[device] = response.json()["results"][0]["scores"]
        finally:
            running.stop()
    for key, value in scores["cpu"].items():
        assert abs(scores["cuda"][key] - value) <= DECODE_ATOL, (key, scores)  # see the module docstring


def _args(batch: FrameBatch):
    return batch.frames, batch.num_frames, batch.prompts


def test_inductor_with_cuda_graphs_serves_the_eager_scores(tiny_dirs):
    """VRS_COMPILE=inductor on CUDA (``reduce-overhead``: CUDA graphs of each staged model's core,
    compiled and warmed up on the inference thread at start-up) against eager, both gateways on
    CUDA in fp32, the same mp4s and prompts: only fusion and summation order differ (atol 1e-3)."""
    import base64

    import httpx

    from service.api import create_app
    from tests.conftest import start_server, test_settings

    data = [videos.encode(videos.unique_clip(33, 240, 416)) for _ in range(3)]
    body = {
        "items": [
            {"video": {"data": base64.b64encode(v).decode()}, "prompt": f"a cat, take {i}"} for i, v in enumerate(data)
        ],
        "models": ["videoalign", "clip-segmental"],
        "cache": "bypass",
    }
    scores = {}
    for mode in ("none", "inductor"):
        settings = test_settings(
            models=["videoalign", "clip-segmental"],
            default_model="videoalign",
            device="cuda",
            dtype="float32",
            compile=mode,
            max_batch_size=2,
            model_dirs={"videoalign": tiny_dirs["videoalign"], "clip-segmental": tiny_dirs["clip"]},
            base_model_dirs={BASE_ID: tiny_dirs["base"]},
        )
        running = start_server(create_app(settings), start_timeout_s=600)
        try:
            response = httpx.post(f"{running.url}/v1/score", json=body, timeout=300)
            assert response.status_code == 200, response.text
            scores[mode] = [r["scores"] for r in response.json()["results"]]
        finally:
            running.stop()
    for eager, compiled in zip(scores["none"], scores["inductor"], strict=True):
        assert compiled.keys() == eager.keys()
        for key, value in eager.items():
            assert abs(compiled[key] - value) <= FP32_ATOL, (key, eager, compiled)
