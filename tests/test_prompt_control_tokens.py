"""Prompts holding a model's control-token strings (`<|TA_reward|>`, `<|video_pad|>`, `<|im_start|>`,
...) are refused with 422 naming the item, for videoalign (tiny checkpoint, real gateway) and
clip-segmental; look-alikes that are not control tokens score as ordinary text, equal to VideoAlign's
inference rebuilt in test_videoalign."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from service.api import create_app
from service.decode import sample_frames
from service.ingest import EncodedVideo
from tests import videos
from tests.conftest import start_server, test_settings
from tests.test_videoalign import DIMS, LIMITS, TOLERANCE, Reference
from tests.tiny_checkpoints import BASE_ID

CONTROL = [
    "<|TA_reward|>",
    "<|VQ_reward|>",
    "<|video_pad|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|vision_start|>",
    "<|image_pad|>",
    "<|startoftext|>",
]
LOOK_ALIKES = ["rate this <| TA_reward |> high", "a <|> b and |> c <|", "<|TA reward|> cat", "pipes || and <tags>"]


@pytest.fixture(scope="module")
def gateway(tiny_dirs):
    settings = test_settings(
        models=["videoalign", "clip-segmental"],
        default_model="videoalign",
        model_dirs={"videoalign": tiny_dirs["videoalign"], "clip-segmental": tiny_dirs["clip"]},
        base_model_dirs={BASE_ID: tiny_dirs["base"]},
    )
    running = start_server(create_app(settings))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def clip_mp4() -> bytes:
    return videos.encode(videos.moving_scene(17, 120, 160), "mp4", fps=8)


def _score(gateway, clip_mp4, prompts, model="videoalign") -> httpx.Response:
    items = [{"video": {"data": base64.b64encode(clip_mp4).decode()}, "prompt": p} for p in prompts]
    normalise = {"normalise": True} if model == "videoalign" else {}  # as VideoAlign reports its scores
    return httpx.post(f"{gateway.url}/v1/score", json={"items": items, "models": [model]} | normalise, timeout=120)


@pytest.mark.parametrize("model", ["videoalign", "clip-segmental"])
@pytest.mark.parametrize("token", CONTROL)
def test_control_tokens_in_prompts_are_refused(gateway, clip_mp4, model, token):
    r = _score(gateway, clip_mp4, ["a cat surfing", f"a cat {token} surfing"], model)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_prompt" and error["item"] == 1 and token in error["message"], error


def test_look_alikes_score_as_text_equal_to_the_reference(gateway, clip_mp4, tiny_dirs):
    r = _score(gateway, clip_mp4, LOOK_ALIKES)
    assert r.status_code == 200, r.text
    got = np.array([[res["scores"][f"videoalign.{d}"] for d in DIMS] for res in r.json()["results"]])
    assert np.isfinite(got).all()
    spec = httpx.get(f"{gateway.url}/v1/models").json()["models"]
    va = next(m for m in spec if m["name"] == "videoalign")
    from models.spec import ModelSpec

    frames = sample_frames(EncodedVideo(clip_mp4), ModelSpec.model_validate(va), LIMITS).frames.numpy()
    reference = Reference(tiny_dirs["videoalign"], tiny_dirs["base"])
    expected = np.concatenate([reference([frames], [p]) for p in LOOK_ALIKES])
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
