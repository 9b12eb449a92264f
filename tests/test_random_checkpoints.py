"""The benchmark's random-weight checkpoints: published architectures, loadable through the normal loaders."""

from __future__ import annotations

import numpy as np
import torch

from models import random_checkpoints, registry
from models.placement import CPU
from service.backends.base import FrameBatch
from service.decode import Limits, sample_frames
from service.ingest import EncodedVideo
from tests import videos


def test_full_configs_have_the_published_parameter_counts():
    """Built on the meta device (no memory): Qwen2-VL-2B-Instruct has 2,208,985,600 parameters
    (tied embeddings), openai/clip-vit-large-patch14 427,616,513."""
    from transformers import CLIPModel, Qwen2VLForConditionalGeneration

    with torch.device("meta"):
        qwen = Qwen2VLForConditionalGeneration(random_checkpoints.qwen2vl_2b_config())
        clip = CLIPModel(random_checkpoints.clip_vit_l14_config())
    assert sum(p.numel() for p in qwen.parameters()) == 2_208_985_600
    assert sum(p.numel() for p in clip.parameters()) == 427_616_513


def test_shrunk_builder_output_loads_and_scores_through_the_loaders(tmp_path):
    dirs = random_checkpoints.build_all(tmp_path, shrink=True)
    data = videos.encode(videos.moving_scene(17, 96, 128))
    bases = {random_checkpoints.BASE_ID: dirs["base"]}
    for name in ("videoalign", "clip-segmental"):
        model = registry.load_model(name, dirs[name], bases, CPU)
        assert model.stages is not None and model.placement == CPU
        clip = sample_frames(EncodedVideo(data), model.spec, Limits(10**9, 10**6, 10**6))
        batch = FrameBatch.assemble([clip.frames, clip.frames[:-2]], ["a cat", "a dog runs"])
        with torch.inference_mode():
            whole = model.forward(batch.frames, batch.num_frames, batch.prompts).numpy()
            staged = model.stages.core(model.stages.pre(batch.frames, batch.num_frames, batch.prompts)).numpy()
        assert whole.shape == (2, len(model.spec.dimensions)) and np.isfinite(whole).all()
        np.testing.assert_array_equal(whole, staged)  # pre + core is the forward
        assert not np.allclose(whole[0], whole[1])  # different inputs, different scores
