"""videoalign's loader on the key layouts VideoAlign's own training code writes (train_reward.py,
trainer.py ``_save_checkpoint``, utils.py ``get_peft_state_non_lora_maybe_zero_3``): each loads to
the same scores as the same weights with LoRA merged in the plain layout (which test_videoalign
checks against a reference forward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import registry
from service.decode import Limits, sample_frames
from service.ingest import EncodedVideo
from tests import videos
from tests.tiny_checkpoints import BASE_ID, videoreward_as_trained

LIMITS = Limits(10**9, 10**6, 10**6)


@pytest.fixture(scope="module")
def clips():
    return [videos.encode(videos.moving_scene(n, 240, 416, speed=s), "mp4", fps=8) for n, s in ((33, 2.0), (20, 3.5))]


def scores(directory, base, clip_bytes) -> np.ndarray:
    model = registry.load_model("videoalign", directory, {BASE_ID: base})
    frames = [sample_frames(EncodedVideo(v), model.spec, LIMITS).frames for v in clip_bytes]
    batch = np.zeros((len(frames), max(map(len, frames)), *frames[0].shape[1:]), dtype=np.uint8)
    for i, f in enumerate(frames):
        batch[i, : len(f)] = f
    with torch.inference_mode():
        out = model.forward(torch.from_numpy(batch), torch.tensor([len(f) for f in frames]), ["a cat", "a red car"])
    return out.numpy()


@pytest.mark.parametrize(
    "exclude, save",
    [
        (["lm_head", "rm_head", "embed_tokens"], "step"),  # train.sh's settings
        (None, "step"),  # the default exclude list: rm_head and embed_tokens are LoRA-wrapped -> base_layer keys
        (None, "final"),  # final_model.pth: the PEFT model's whole state dict (base_layer and lora_*.default keys)
    ],
)
def test_published_layouts_load_to_the_merged_weights(tiny_dirs, tmp_path, clips, exclude, save):
    directory, merged = tmp_path / "VideoReward", tmp_path / "merged"
    videoreward_as_trained(directory, merged, tiny_dirs["base"], exclude, save)
    keys = torch.load(next(directory.glob("checkpoint-*/*.pth")), weights_only=True)
    if exclude is None:  # the layout really holds the keys in question
        assert "base_model.model.rm_head.base_layer.weight" in keys
        assert any(k.endswith("embed_tokens.base_layer.weight") for k in keys)
    got = scores(directory, tiny_dirs["base"], clips)
    expected = scores(merged, tiny_dirs["base"], clips)
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # the two videos score differently
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_a_weight_given_twice_is_refused(tiny_dirs, tmp_path):
    directory = videoreward_as_trained(tmp_path / "VideoReward", tmp_path / "merged", tiny_dirs["base"], None, "step")
    path = directory / "checkpoint-11" / "non_lora_state_dict.pth"
    state = torch.load(path, weights_only=True)
    state["base_model.model.rm_head.weight"] = state["base_model.model.rm_head.base_layer.weight"].clone()
    torch.save(state, path)
    with pytest.raises(registry.ModelLoadError, match="two weights for 'rm_head.weight'"):
        registry.load_model("videoalign", directory, {BASE_ID: tiny_dirs["base"]})
