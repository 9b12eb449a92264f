"""clip-segmental: the formulas on hand-made embeddings, then a tiny CLIP end to end."""

from __future__ import annotations

import base64
import json
import math
import shutil

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import registry
from models.clip_segmental import SegmentalConfig, make_spec, reward
from service.api import create_app
from service.decode import Limits, sample_frames, sample_indices
from service.ingest import EncodedVideo
from tests import videos
from tests.conftest import start_server, test_settings


def test_segment_choice_one_frame_from_the_middle_of_each_segment():
    sampling = make_spec(SegmentalConfig(segments=4), 224, "t").sampling
    assert sample_indices(33, 16.0, sampling) == [4, 12, 20, 28]  # int((s + 0.5) * 33 / 4)
    assert sample_indices(100, 30.0, sampling) == [12, 37, 62, 87]
    assert sample_indices(3, 16.0, sampling) == [0, 1, 1, 2]  # shorter than S: frames repeat
    assert len(sample_indices(500, 30.0, make_spec(SegmentalConfig(segments=8), 224, "t").sampling)) == 8


def test_attenuation_weights():
    # positions in segments: f_s = s + 0.5, F = S
    assert torch.allclose(reward.attenuation(4), torch.exp(-torch.tensor([1.5, 0.5, 0.5, 1.5])))
    w8 = reward.attenuation(8)
    assert torch.allclose(w8, w8.flip(0)) and w8.argmax() in (3, 4) and math.isclose(w8[0].item(), math.exp(-3.5), rel_tol=1e-6)
    assert torch.allclose(reward.attenuation(5, lam=2.0), torch.exp(-2.0 * torch.tensor([2.0, 1.0, 0.0, 1.0, 2.0])))
    assert torch.equal(reward.attenuation(6, lam=0.0), torch.ones(6))


def test_segmental_reward_on_hand_made_embeddings():
    eye = torch.eye(4)
    text = eye[1]
    # frame 1 matches the text, the others are orthogonal: reward = w_1 * 1 / S
    assert math.isclose(reward.segmental(eye, text).item(), math.exp(-0.5) / 4, rel_tol=1e-6)
    # all frames match: mean of the weights
    same = text.expand(4, -1)
    assert math.isclose(reward.segmental(same, text).item(), reward.attenuation(4).mean().item(), rel_tol=1e-6)
    # a matching frame at the edge counts less than one in the middle
    assert reward.segmental(eye, eye[0]).item() < reward.segmental(eye, eye[1]).item()


def test_goal_baseline_projection_on_hand_made_embeddings():
    g, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    p1 = reward.goal_baseline_projection(g, b, alpha=1.0)
    assert torch.allclose(p1, torch.tensor([[0.5, -0.5], [-0.5, 0.5]]))  # projection onto d = g - b
    assert torch.allclose(p1 @ p1, p1)
    p_half = reward.goal_baseline_projection(g, b, alpha=0.5)
    assert torch.allclose(p_half, torch.tensor([[0.75, -0.25], [-0.25, 0.75]]))
    assert torch.equal(reward.goal_baseline_projection(g, b, alpha=0.0), torch.eye(2))
    x = torch.stack([g, b, torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])])
    assert torch.allclose(reward.goal_baseline(x, g, p1), torch.tensor([1.0, 0.0, 0.75, 0.75]))  # along d only
    assert torch.allclose(reward.goal_baseline(x, g, p_half), torch.tensor([1.0, 0.0, 0.6875, 0.1875]))


def test_temporal_consistency_on_hand_made_embeddings():
    e = torch.eye(3)
    assert math.isclose(reward.temporal_consistency(torch.stack([e[0], e[0], e[1]])).item(), 0.5)
    assert reward.temporal_consistency(e[:1]).item() == 1.0
    assert math.isclose(reward.temporal_consistency(torch.stack([e[0], -e[0]])).item(), -1.0)


def goal_clip_dir(tiny_clip, d):
    """A copy of the tiny CLIP directory with 4 segments and the goal/baseline prompts ``_reference`` uses."""
    shutil.copytree(tiny_clip, d)
    config = {"segments": 4, "lambda": 1.0, "goal_prompts": ["a cat surfing a wave"], "baseline_prompts": ["a video"], "alpha": 0.5}
    (d / "segmental_reward.json").write_text(json.dumps(config))
    return d


@pytest.fixture(scope="module")
def clip_dir(tiny_dirs, tmp_path_factory):
    return goal_clip_dir(tiny_dirs["clip"], tmp_path_factory.mktemp("clip") / "clip-goal")


def _reference(clip_dir, frames: np.ndarray, text: str) -> list[float]:
    """Independent: transformers' CLIP image processor (PIL) and CLIPModel, formulas in numpy."""
    from transformers import AutoTokenizer, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(clip_dir)
    size = model.config.vision_config.image_size
    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    with torch.inference_mode():
        pixels = proc.preprocess(list(frames), return_tensors="pt")["pixel_values"]
        x = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1).numpy()

        def txt(ps):
            return F.normalize(model.get_text_features(**tok(ps, padding=True, return_tensors="pt")).pooler_output, dim=-1).numpy()

        t, g, b = txt([text])[0], txt(["a cat surfing a wave"]).mean(0), txt(["a video"]).mean(0)
    s = len(x)
    w = np.exp(-np.abs(np.arange(s) + 0.5 - s / 2))
    d = g - b
    p = 0.5 * np.outer(d, d) / d.dot(d) + 0.5 * np.eye(len(d))
    return [float(np.mean(w * (x @ t))), float(np.mean(np.sum(x[1:] * x[:-1], -1))),
            float(np.mean(1 - 0.5 * np.sum(((x - g) @ p) ** 2, -1)))]


def test_clip_segmental_end_to_end(clip_dir):
    settings = test_settings(models=["clip-segmental"], default_model="clip-segmental", model_dirs={"clip-segmental": clip_dir})
    running = start_server(create_app(settings))
    try:
        clean = videos.moving_scene(33, 240, 416)
        data = [videos.encode(clean), videos.encode(videos.flicker(clean, 0.6))]
        items = [{"video": {"data": base64.b64encode(v).decode()}, "prompt": "a cat surfing a wave"} for v in data]
        r = httpx.post(f"{running.url}/v1/score", json={"items": items}, timeout=60)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        listed = httpx.get(f"{running.url}/v1/models").json()["models"][0]
        assert [d["name"] for d in listed["dimensions"]] == ["segmental", "temporal_consistency", "goal_baseline"]
        assert listed["sampling"] == listed["sampling"] | {"mode": "segments", "segments": 4}
    finally:
        running.stop()
    model = registry.load_model("clip-segmental", clip_dir)
    for v, res in zip(data, results):
        clip = sample_frames(EncodedVideo(v), model.spec, Limits(10**9, 10**6, 10**6))
        assert clip.indices == [4, 12, 20, 28]
        got = [res["scores"][f"clip-segmental.{d}"] for d in ("segmental", "temporal_consistency", "goal_baseline")]
        # Tolerance 2e-3 (observed ~2e-4): the reference resizes with PIL bicubic, the model with torch antialiased bicubic.
        expected = _reference(clip_dir, clip.frames.numpy(), "a cat surfing a wave")
        print("clip-segmental got", got, "reference", expected)
        np.testing.assert_allclose(got, expected, atol=2e-3)


def test_repeated_prompts_are_encoded_once(tiny_dirs):
    model = registry.load_model("clip-segmental", tiny_dirs["clip"])
    scorer = model.forward.__self__
    encoded = []
    scorer.model.text_model.register_forward_hook(lambda module, args, kwargs_out: encoded.append(None), with_kwargs=False)
    frames = torch.from_numpy(np.stack([videos.moving_scene(8, 64, 64)[:8]] * 3))
    with torch.inference_mode():
        first = model.forward(frames, torch.tensor([8, 8, 8]), ["a cat", "a dog", "a cat"])
        again = model.forward(frames, torch.tensor([8, 8, 8]), ["a dog", "a cat", "a dog"])
    assert len(encoded) == 1 and len(scorer._text) == 2  # one text-encoder call for both prompts, then none
    assert torch.equal(first[0], first[2]) and torch.equal(first[0], again[1])


def test_bad_clip_directory_stops_startup(tiny_dirs, tmp_path):
    with pytest.raises(registry.ModelLoadError, match=f"{tmp_path}.*no config.json"):
        create_app(test_settings(models=["clip-segmental"], default_model="clip-segmental", model_dirs={"clip-segmental": tmp_path}))
    bad = tmp_path / "clip"
    shutil.copytree(tiny_dirs["clip"], bad)
    (bad / "segmental_reward.json").write_text('{"segments": 0}')
    with pytest.raises(registry.ModelLoadError, match="segmental_reward.json: need 1 <= segments"):
        registry.load_model("clip-segmental", bad)
