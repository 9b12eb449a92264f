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
from service.errors import Unprocessable
from service.ingest import EncodedVideo
from tests import videos
from tests.conftest import start_server, test_settings


def test_the_gateway_hands_over_a_clip_of_f_uniform_frames():
    sampling = make_spec(SegmentalConfig(frames=16, segments=4), 224, "t").sampling
    assert sample_indices(33, 16.0, sampling) == np.linspace(0, 32, 16).round().astype(int).tolist()
    assert sample_indices(10, 30.0, sampling) == list(range(10))  # shorter than F: every frame
    with pytest.raises(Unprocessable):
        sample_indices(3, 16.0, sampling)  # fewer frames than segments


def test_instructvideo_frame_choice_and_weights_in_frames():
    """As InstructVideo's reward code: segment span F // S, the first frame of each segment, weights
    exp(-lambda |i - F // 2|) with i and F counted in frames."""
    assert reward.tsn_indices(16, 4) == [0, 4, 8, 12]
    assert reward.tsn_indices(17, 4) == [0, 4, 8, 12]
    assert reward.tsn_indices(10, 4) == [0, 2, 4, 6]
    w = reward.temporally_attenuated_weights([0, 4, 8, 12], 16)
    assert torch.allclose(w, torch.exp(-torch.tensor([8.0, 4.0, 0.0, 4.0])))
    w17 = reward.temporally_attenuated_weights(reward.tsn_indices(17, 4), 17, lam=0.5)
    assert torch.allclose(w17, torch.exp(-0.5 * torch.tensor([8.0, 4.0, 0.0, 4.0])))  # 17 // 2 = 8
    assert torch.equal(reward.temporally_attenuated_weights([0, 3, 9], 12, lam=0.0), torch.ones(3))
    with pytest.raises(ValueError):
        reward.tsn_indices(3, 4)


def test_segmental_reward_on_hand_made_embeddings():
    eye = torch.eye(4)
    w = reward.temporally_attenuated_weights([0, 4, 8, 12], 16)
    # frame 2 (index 8, the middle) matches the text, the others are orthogonal: reward = w_2 * 1 / S
    assert math.isclose(reward.segmental(eye, eye[2], w).item(), 1.0 / 4, rel_tol=1e-6)
    assert math.isclose(reward.segmental(eye, eye[0], w).item(), math.exp(-8.0) / 4, rel_tol=1e-5)
    same = eye[1].expand(4, -1)
    assert math.isclose(reward.segmental(same, eye[1], w).item(), w.mean().item(), rel_tol=1e-6)


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
    config = {
        "frames": 16,
        "segments": 4,
        "lambda": 1.0,
        "goal_prompts": ["a cat surfing a wave"],
        "baseline_prompts": ["a video"],
        "alpha": 0.5,
    }
    (d / "segmental_reward.json").write_text(json.dumps(config))
    return d


@pytest.fixture(scope="module")
def clip_dir(tiny_dirs, tmp_path_factory):
    return goal_clip_dir(tiny_dirs["clip"], tmp_path_factory.mktemp("clip") / "clip-goal")


def _reference(clip_dir, frames: np.ndarray, text: str) -> list[float]:
    """Independent: PIL resizes, transformers' CLIPModel, the references' formulas in numpy.

    ``frames`` is the clip the gateway hands over (F frames). segmental as InstructVideo's reward code:
    Resize(224)-style short-side bilinear resize (plus a centre crop for non-square frames), span F // S,
    the first frame of each segment, weights exp(-lambda |i - F // 2|). goal_baseline as VLM-RM's: every
    frame squashed to the model's size (bicubic), R = 1 - |(x - g) P|^2 / 2, mean over frames."""
    from PIL import Image
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(clip_dir)
    size = model.config.vision_config.image_size
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

    def resize(frame, wh, method):  # PIL on float channels: the references resize float tensors, not uint8
        return np.stack(
            [
                np.asarray(Image.fromarray(frame[..., c].astype(np.float32) / 255, mode="F").resize(wh, method))
                for c in range(3)
            ],
            axis=-1,
        )

    def instructvideo(frame):
        h, w = frame.shape[:2]
        nh, nw = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
        x = resize(frame, (nw, nh), Image.BILINEAR)
        top, left = (nh - size) // 2, (nw - size) // 2
        return x[top : top + size, left : left + size]

    def vlmrm(frame):
        return resize(frame, (size, size), Image.BICUBIC)

    def embed(images):
        pixels = torch.from_numpy(((np.stack(images) - mean) / std).transpose(0, 3, 1, 2).copy())
        with torch.inference_mode():
            return F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1).numpy()

    def txt(ps):
        with torch.inference_mode():
            return F.normalize(
                model.get_text_features(**tok(ps, padding=True, return_tensors="pt")).pooler_output, dim=-1
            ).numpy()

    n, segments = len(frames), 4
    index = np.arange(segments) * (n // segments)
    x = embed([instructvideo(f) for f in frames[index]])
    every = embed([vlmrm(f) for f in frames])
    t, g, b = txt([text])[0], txt(["a cat surfing a wave"]).mean(0), txt(["a video"]).mean(0)
    w = np.exp(-np.abs(index - n // 2))
    d = g - b
    p = 0.5 * np.outer(d, d) / d.dot(d) + 0.5 * np.eye(len(d))
    return [
        float(np.mean(w * (x @ t))),
        float(np.mean(np.sum(x[1:] * x[:-1], -1))),
        float(np.mean(1 - 0.5 * np.sum(((every - g) @ p) ** 2, -1))),
    ]


def test_clip_segmental_end_to_end(clip_dir):
    settings = test_settings(
        models=["clip-segmental"], default_model="clip-segmental", model_dirs={"clip-segmental": clip_dir}
    )
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
        assert listed["sampling"] == listed["sampling"] | {"mode": "count", "count": 16, "min_frames": 4}
    finally:
        running.stop()
    model = registry.load_model("clip-segmental", clip_dir)
    for v, res in zip(data, results):
        clip = sample_frames(EncodedVideo(v), model.spec, Limits(10**9, 10**6, 10**6))
        assert clip.indices == np.linspace(0, 32, 16).round().astype(int).tolist()
        got = [res["scores"][f"clip-segmental.{d}"] for d in ("segmental", "temporal_consistency", "goal_baseline")]
        # PIL's float resize and torch's antialiased interpolation agree to ~1e-8 here.
        expected = _reference(clip_dir, clip.frames.numpy(), "a cat surfing a wave")
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_repeated_prompts_are_encoded_once(tiny_dirs):
    model = registry.load_model("clip-segmental", tiny_dirs["clip"])
    scorer = model.forward.__self__
    encoded = []
    scorer.model.text_model.register_forward_hook(
        lambda module, args, kwargs_out: encoded.append(None), with_kwargs=False
    )
    frames = torch.from_numpy(np.stack([videos.moving_scene(8, 64, 64)[:8]] * 3))
    with torch.inference_mode():
        first = model.forward(frames, torch.tensor([8, 8, 8]), ["a cat", "a dog", "a cat"])
        again = model.forward(frames, torch.tensor([8, 8, 8]), ["a dog", "a cat", "a dog"])
    assert len(encoded) == 1 and len(scorer._text) == 2  # one text-encoder call for both prompts, then none
    assert torch.equal(first[0], first[2]) and torch.equal(first[0], again[1])


def test_bad_clip_directory_stops_startup(tiny_dirs, tmp_path):
    with pytest.raises(registry.ModelLoadError, match=f"{tmp_path}.*no config.json"):
        create_app(
            test_settings(
                models=["clip-segmental"], default_model="clip-segmental", model_dirs={"clip-segmental": tmp_path}
            )
        )
    bad = tmp_path / "clip"
    shutil.copytree(tiny_dirs["clip"], bad)
    (bad / "segmental_reward.json").write_text('{"segments": 0}')
    with pytest.raises(registry.ModelLoadError, match="segmental_reward.json: need 1 <= segments <= frames"):
        registry.load_model("clip-segmental", bad)
