"""The CPU measurements behind tests/gpu/test_gpu_parity.py's score tolerances, on the tests' tiny
random-weight checkpoints, clips and prompts:

- bf16 vs fp32: the largest score difference of each checkpoint model run in bf16 against fp32
  (on the CPU; CUDA's bf16 kernels round differently, which the tolerance's margin is for);
- the GPU path's colour conversion vs the CPU path's: the largest videoalign score difference
  between clips decoded on the CPU path and through ``nvdec.NV12_ON_CPU`` (NVDEC's NV12 -> RGB in
  torch, run on software frames), fp32.

    .venv/bin/python loadtests/gpu_tolerances.py       (~1 min on 2 cores)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import registry  # noqa: E402
from models.placement import CPU, Placement  # noqa: E402
from service import decode, nvdec  # noqa: E402
from service.backends.base import FrameBatch  # noqa: E402
from service.ingest import EncodedVideo  # noqa: E402
from tests import tiny_checkpoints, videos  # noqa: E402

LIMITS = decode.Limits(10**9, 10**6, 10**6)
BF16 = Placement(torch.device("cpu"), torch.bfloat16)


def scores(model, clips: list[torch.Tensor], prompts: list[str]) -> torch.Tensor:
    batch = FrameBatch.assemble(clips, prompts, "cpu")
    with torch.inference_mode():
        return model.forward(batch.frames, batch.num_frames, batch.prompts).float()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = tiny_checkpoints.qwen2vl_base(root / "Qwen2-VL-tiny")
        dirs = {
            "videoalign": tiny_checkpoints.videoreward(root / "VideoReward", base, layout="lora"),
            "clip-segmental": tiny_checkpoints.clip(root / "clip-tiny"),
        }
        bases = {tiny_checkpoints.BASE_ID: base}
        # as test_scores_on_cuda_match_the_cpu
        data = [videos.encode(videos.moving_scene(33, 240, 416, speed=s)) for s in (1.0, 3.0)]
        prompts = ["a cat surfing a wave", "a red car in the rain"]
        for name, directory in dirs.items():
            fp32, bf16 = (registry.load_model(name, directory, bases, p) for p in (CPU, BF16))
            clips = [decode.sample_frames(EncodedVideo(v), fp32.spec, LIMITS).frames for v in data]
            want, got = scores(fp32, clips, prompts), scores(bf16, clips, prompts)
            print(f"{name} bf16 vs fp32: max |diff| {(got - want).abs().max():.4f}, max |score| {want.abs().max():.2f}")
        # as test_gateway_on_cuda_scores_like_the_cpu_gateway (and two more scenes)
        model = registry.load_model("videoalign", dirs["videoalign"], bases, CPU)
        clips = [videos.unique_clip(33, 480, 640), *(videos.moving_scene(33, 480, 640, speed=s) for s in (2.0, 3.0))]
        worst = 0.0
        for frames in clips:
            data = videos.encode(frames)
            (cpu,) = decode.sample_container(data, [model.spec], LIMITS)
            (gpu_way,) = decode.sample_container(data, [model.spec], LIMITS, nvdec.NV12_ON_CPU)
            diff = (scores(model, [cpu.frames], ["a cat"]) - scores(model, [gpu_way.frames], ["a cat"])).abs().max()
            worst = max(worst, float(diff))
        print(f"videoalign, NV12 conversion vs CPU decode (fp32): max |diff| {worst:.4f}")


if __name__ == "__main__":
    main()
