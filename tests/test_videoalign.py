"""videoalign: the tiny VideoReward checkpoint through the real gateway equals a direct
transformers forward built here independently, the way VideoAlign's inference runs.

The reference follows VideoAlign's code paths, not ours: the reward tokens are added with
``add_special_tokens``; LoRA is applied with PEFT (``set_peft_model_state_dict``); the prompt
comes from the tokenizer's chat template with the video placeholder expanded as Qwen2-VL's
processor does; pixels are patched in numpy the way transformers 4.45's Qwen2VLImageProcessor
did; the language model runs with ``position_ids=None`` as VideoAlign's forward did; the head is
read with VideoAlign's mask/view/diagonal; normalisation reads ``inference_config`` itself.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models import registry
from models.videoalign import prompt
from service.api import create_app
from service.decode import Limits, sample_frames
from service.ingest import EncodedVideo
from tests import videos
from tests.conftest import start_server, test_settings
from tests.tiny_checkpoints import BASE_ID

TOLERANCE = 1e-4
LIMITS = Limits(10**9, 10**6, 10**6)
DIMS = ["VQ", "MQ", "TA", "Overall"]


def _legacy_to_current(key: str) -> str:
    key = key.removeprefix("base_model.model.")
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    return key


def normalised(spec, raw: np.ndarray) -> np.ndarray:
    """The forward's rows as the service reports them with ``normalise: true``: (raw - mean) / std per dimension."""
    mean = np.array([d.mean for d in spec.dimensions])
    std = np.array([d.std for d in spec.dimensions])
    return (raw - mean) / std


def processor_patches(frames: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """transformers 4.45 Qwen2VLImageProcessor._preprocess for one video (already at its size)."""
    x = frames.astype(np.float64) * (1 / 255)
    x = x.astype(np.float32)
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    x = ((x - mean) / std).transpose(0, 3, 1, 2)  # [n, C, H, W]
    if x.shape[0] % 2:
        x = np.concatenate([x, np.repeat(x[-1:], 1, axis=0)])
    t, c, h, w = x.shape[0] // 2, 3, x.shape[2] // 14, x.shape[3] // 14
    x = x.reshape(t, 2, c, h // 2, 2, 14, w // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * h * w, c * 2 * 14 * 14), [t, h, w]


class Reference:
    """VideoAlign's inference, rebuilt from transformers + PEFT."""

    def __init__(self, ckpt: Path, base: Path) -> None:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

        cfg = json.loads((ckpt / "model_config.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(base, padding_side="right")
        self.tokenizer.add_special_tokens(
            {"additional_special_tokens": ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]}
        )
        self.special = self.tokenizer.convert_tokens_to_ids(["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"])
        model = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
        model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        step = max(ckpt.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        self.rm_head = torch.nn.Linear(model.config.text_config.hidden_size, 3, bias=False)
        if (step / "model.pth").exists():
            state = {_legacy_to_current(k): v for k, v in torch.load(step / "model.pth").items()}
            self.rm_head.weight.data = state.pop("rm_head.weight")
            model.load_state_dict(state, strict=False)
        else:
            non_lora = {_legacy_to_current(k): v for k, v in torch.load(step / "non_lora_state_dict.pth").items()}
            self.rm_head.weight.data = non_lora.pop("rm_head.weight")
            model.load_state_dict(non_lora, strict=False)
            lora = cfg["peft_lora_config"]
            adapter = {_legacy_to_current(k): v for k, v in load_file(str(step / "adapter_model.safetensors")).items()}
            targets = sorted({k.split(".lora_")[0].split(".")[-1] for k in adapter})
            model = get_peft_model(
                model, LoraConfig(r=lora["lora_r"], lora_alpha=lora["lora_alpha"], target_modules=targets)
            )
            result = set_peft_model_state_dict(model, {"base_model.model." + k: v for k, v in adapter.items()})
            assert not result.unexpected_keys
        self.model = model.eval()
        inference = cfg["inference_config"]
        self.mean = [inference[f"{d}_mean"] for d in ("VQ", "MQ", "TA")]
        self.std = [inference[f"{d}_std"] for d in ("VQ", "MQ", "TA")]

    @torch.inference_mode()
    def __call__(self, clips: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        texts, pixels, grids = [], [], []
        for clip, text_prompt in zip(clips, prompts):
            patches, grid = processor_patches(clip)
            pixels.append(torch.from_numpy(patches))
            grids.append(grid)
            chat = [
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt.rubric(text_prompt)}]}
            ]
            text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            texts.append(text.replace("<|video_pad|>", "<|video_pad|>" * (int(np.prod(grid)) // 4)))
        batch = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        qwen = self.model.get_base_model().model if hasattr(self.model, "get_base_model") else self.model.model
        embeds = qwen.get_input_embeddings()(ids)
        video = qwen.visual(torch.cat(pixels), grid_thw=torch.tensor(grids)).pooler_output
        video_mask = (ids == self.model.config.video_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(video_mask, video)
        hidden = qwen.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=None)[0]
        logits = self.rm_head(hidden)
        special = torch.zeros_like(ids, dtype=torch.bool)
        for token in self.special:
            special |= ids == token
        pooled = logits[special].view(len(clips), 3, -1).diagonal(dim1=1, dim2=2)
        out = []
        for row in pooled.tolist():
            r = [(v - m) / s for v, m, s in zip(row, self.mean, self.std)]
            out.append(r + [sum(r)])
        return np.array(out)


@pytest.fixture(scope="module")
def gateway_va(tiny_dirs):
    settings = test_settings(
        models=["signal", "videoalign"],
        model_dirs={"videoalign": tiny_dirs["videoalign"]},
        base_model_dirs={BASE_ID: tiny_dirs["base"]},
    )
    running = start_server(create_app(settings))  # loads the checkpoint through the configuration path
    yield running
    running.stop()


@pytest.fixture(scope="module")
def videos_va():
    """Three mp4s: two of one size but different lengths (batched together, padded), one portrait."""
    specs = [(33, 16, 240, 416, 2.0), (49, 8, 240, 416, 3.5), (40, 10, 360, 200, 1.0)]
    return [videos.encode(videos.moving_scene(n, h, w, speed=s), "mp4", fps=fps) for n, fps, h, w, s in specs]


def test_service_scores_equal_a_direct_transformers_forward(gateway_va, tiny_dirs, videos_va):
    prompts = ["a cat surfing a wave at sunset", "a red car in the rain", "a dog runs on the beach"]
    items = [{"video": {"data": base64.b64encode(v).decode()}, "prompt": p} for v, p in zip(videos_va, prompts)]
    body = {"items": items, "models": ["videoalign"], "normalise": True}  # VideoAlign's reward(use_norm=True)
    r = httpx.post(f"{gateway_va.url}/v1/score", json=body, timeout=120)
    assert r.status_code == 200, r.text
    got = np.array([[res["scores"][f"videoalign.{d}"] for d in DIMS] for res in r.json()["results"]])

    model = registry.load_model("videoalign", tiny_dirs["videoalign"], {BASE_ID: tiny_dirs["base"]})
    clips = [sample_frames(EncodedVideo(v), model.spec, LIMITS).frames.numpy() for v in videos_va]
    assert [len(c) for c in clips] == [4, 12, 8]
    reference = Reference(tiny_dirs["videoalign"], tiny_dirs["base"])
    expected = np.concatenate([reference([c], [p]) for c, p in zip(clips, prompts)])  # one video per forward
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
    # Batched reference (right padding) agrees too, and the videos really score differently.
    np.testing.assert_allclose(reference(clips[:2], prompts[:2]), expected[:2], atol=TOLERANCE, rtol=0)
    assert np.abs(expected[0] - expected[1]).max() > 100 * TOLERANCE
    np.testing.assert_allclose(got[:, 3], got[:, :3].sum(1), atol=1e-5)


def test_full_state_dict_layout_equals_reference(tiny_dirs, videos_va):
    model = registry.load_model("videoalign", tiny_dirs["videoalign-full"], {BASE_ID: tiny_dirs["base"]})
    clips = [sample_frames(EncodedVideo(v), model.spec, LIMITS).frames.numpy() for v in videos_va[:2]]
    frames = np.zeros((2, 12, *clips[0].shape[1:]), dtype=np.uint8)
    for i, c in enumerate(clips):
        frames[i, : len(c)] = c
    with torch.inference_mode():
        got = normalised(
            model.spec, model.forward(torch.from_numpy(frames), torch.tensor([4, 12]), ["a cat", "a car"]).numpy()
        )
    reference = Reference(tiny_dirs["videoalign-full"], tiny_dirs["base"])
    expected = np.concatenate([reference([c], [p]) for c, p in zip(clips, ["a cat", "a car"])])
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_models_endpoint_lists_videoalign(gateway_va):
    models = {m["name"]: m for m in httpx.get(f"{gateway_va.url}/v1/models").json()["models"]}
    assert set(models) == {"signal", "videoalign"}
    va = models["videoalign"]
    assert [d["name"] for d in va["dimensions"]] == DIMS
    assert va["needs_prompt"] is True and va["pairwise"] == {"model": "rao-kupper", "theta": 5.0}
    assert (
        va["sampling"] | {} == va["sampling"]
        and va["sampling"]["fps"] == 2.0
        and va["sampling"]["rounding"] == "nearest"
    )
    assert va["resolution"]["max_pixels"] == 448 * 448 and va["resolution"]["size_factor"] == 28
    vq, overall = va["dimensions"][0], va["dimensions"][3]
    assert (vq["mean"], vq["std"], vq["derived"]) == (3.6757, 2.2476, False)  # the checkpoint's inference_config
    assert overall["derived"] is True and (overall["mean"], overall["std"]) == (0.0, 1.0)


def test_raw_scores_normalise_in_the_service_and_overall_is_not_counted_twice(gateway_va, videos_va):
    """The forward returns raw VQ/MQ/TA; ``normalise`` applies the spec's mean/std; Overall (derived,
    VideoAlign's sum of the normalised three) stays out of the default weights."""
    items = [{"video": {"data": base64.b64encode(v).decode()}, "prompt": "a cat"} for v in videos_va[:2]]
    raw, norm = (
        httpx.post(
            f"{gateway_va.url}/v1/score", json={"items": items, "models": ["videoalign"], "normalise": n}, timeout=120
        ).json()
        for n in (False, True)
    )
    stats = {"VQ": (3.6757, 2.2476), "MQ": (1.1646, 1.3811), "TA": (2.8105, 2.5121)}
    third = 1 / 3
    assert raw["weights"] == norm["weights"] == {"videoalign.VQ": third, "videoalign.MQ": third, "videoalign.TA": third}
    for r, n in zip(raw["results"], norm["results"]):
        for d, (mean, std) in stats.items():
            assert abs((r["scores"][f"videoalign.{d}"] - mean) / std - n["scores"][f"videoalign.{d}"]) < 1e-5
        parts = [n["scores"][f"videoalign.{d}"] for d in stats]
        assert abs(n["scores"]["videoalign.Overall"] - sum(parts)) < 1e-5
        assert abs(r["scores"]["videoalign.Overall"] - sum(parts)) < 1e-5  # Overall is the same either way
        assert abs(n["overall"] - sum(parts) / 3) < 1e-5


def test_patches_match_transformers_image_processor():
    """Layout and normalisation against transformers' own Qwen2-VL image processor: a still image is
    a video of identical frames (the processor repeats an image over the 2-frame temporal patch)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from models.videoalign import video_patches

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)
    out = Qwen2VLImageProcessorPil().preprocess([image], do_resize=False, return_tensors="np")
    for n in (1, 2, 3):  # 1 and 3 exercise padding by repeating the last frame
        ours, grid = video_patches(torch.from_numpy(np.stack([image] * n)))
        t = (n + 1) // 2
        assert grid == (t, 4, 6) and tuple(out["image_grid_thw"][0]) == (1, 4, 6)
        np.testing.assert_allclose(ours.numpy()[-24:], out["pixel_values"], atol=1e-5)
    # Distinct frames: ours equals the 4.45 processor's numpy layout used by the reference.
    clip = rng.integers(0, 256, (5, 56, 84, 3), dtype=np.uint8)
    ours, grid = video_patches(torch.from_numpy(clip))
    theirs, their_grid = processor_patches(clip)
    assert list(grid) == their_grid
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_rubric_prompt_structure():
    text = prompt.rubric("a cat surfing")
    positions = [text.index(t) for t in prompt.REWARD_TOKENS]
    assert positions == sorted(positions) and all(text.count(t) == 1 for t in prompt.REWARD_TOKENS)
    assert all(text[p + len(t) :].startswith("\nEND\n") for p, t in zip(positions, prompt.REWARD_TOKENS))
    assert "Textual prompt - a cat surfing\nPlease provide the ratings of Text Alignment: <|TA_reward|>" in text


def _broken(tiny_dirs, tmp_path: Path, how: str) -> tuple[Path, str]:
    """A copy of the tiny VideoReward directory broken in one way, and the text the error must contain."""
    ckpt = tmp_path / "VideoReward"
    shutil.copytree(tiny_dirs["videoalign"], ckpt)
    if how == "missing_dir":
        shutil.rmtree(ckpt)
        return ckpt, "not a directory"
    if how == "no_config":
        (ckpt / "model_config.json").unlink()
        return ckpt / "model_config.json", "missing"
    if how == "bad_json":
        (ckpt / "model_config.json").write_text("{not json")
        return ckpt / "model_config.json", "malformed"
    if how == "no_step":
        for p in ckpt.glob("checkpoint-*"):
            shutil.rmtree(p)
        return ckpt, "no checkpoint-<step>"
    if how == "no_weights":
        (ckpt / "checkpoint-7" / "adapter_model.safetensors").unlink()
        return ckpt / "checkpoint-7", "adapter_model.safetensors"
    if how == "corrupt_weights":
        (ckpt / "checkpoint-7" / "non_lora_state_dict.pth").write_bytes(b"garbage")
        return ckpt / "checkpoint-7", "cannot read weights"
    if how == "no_head":
        state = torch.load(ckpt / "checkpoint-7" / "non_lora_state_dict.pth")
        state.pop("base_model.model.rm_head.weight")
        torch.save(state, ckpt / "checkpoint-7" / "non_lora_state_dict.pth")
        return ckpt / "checkpoint-7", "rm_head.weight"
    if how == "no_embeddings":
        state = torch.load(ckpt / "checkpoint-7" / "non_lora_state_dict.pth")
        state.pop("base_model.model.model.embed_tokens.weight")
        torch.save(state, ckpt / "checkpoint-7" / "non_lora_state_dict.pth")
        return ckpt / "checkpoint-7", "no trained embeddings"
    if how == "wrong_shape":
        state = torch.load(ckpt / "checkpoint-7" / "non_lora_state_dict.pth")
        state["base_model.model.model.embed_tokens.weight"] = torch.zeros(5, 5)
        torch.save(state, ckpt / "checkpoint-7" / "non_lora_state_dict.pth")
        return ckpt / "checkpoint-7", "do not fit the base model"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "missing_dir",
        "no_config",
        "bad_json",
        "no_step",
        "no_weights",
        "corrupt_weights",
        "no_head",
        "no_embeddings",
        "wrong_shape",
    ],
)
def test_bad_checkpoint_stops_startup_naming_the_path(tiny_dirs, tmp_path, how):
    path, problem = _broken(tiny_dirs, tmp_path, how)
    settings = test_settings(
        models=["videoalign"],
        default_model="videoalign",
        model_dirs={"videoalign": tmp_path / "VideoReward"},
        base_model_dirs={BASE_ID: tiny_dirs["base"]},
    )
    with pytest.raises(registry.ModelLoadError) as info:
        create_app(settings)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_missing_base_model_and_missing_directory_setting(tiny_dirs):
    settings = test_settings(
        models=["videoalign"], default_model="videoalign", model_dirs={"videoalign": tiny_dirs["videoalign"]}
    )
    with pytest.raises(registry.ModelLoadError, match="Qwen/Qwen2-VL-2B-Instruct.*VRS_BASE_MODEL_DIRS"):
        create_app(settings)
    with pytest.raises(registry.ModelLoadError, match="videoalign: no checkpoint directory configured"):
        create_app(test_settings(models=["videoalign"], default_model="videoalign"))


def test_bf16_casts_the_rotary_frequency_tables_as_videoalign_does(tiny_dirs):
    """VideoAlign's ``create_model_and_processor`` (training and inference alike) runs
    ``model.to(torch.bfloat16)``, which casts the ``inv_freq`` buffers too: its checkpoints were
    trained on bf16 tables, so keeping them in float32 (as ``from_pretrained(dtype=...)`` alone would)
    moves rotations by up to radians at thousands of positions away from the reference."""
    from models.placement import Placement

    bf16 = Placement(torch.device("cpu"), torch.bfloat16)
    model = registry.load_model("videoalign", tiny_dirs["videoalign"], {BASE_ID: tiny_dirs["base"]}, bf16)
    tables = {n: b for n, b in model.forward.__self__.model.named_buffers() if n.endswith("inv_freq")}
    assert len(tables) >= 2  # the vision tower's and the language model's
    assert all(t.dtype == torch.bfloat16 for t in tables.values()), {n: t.dtype for n, t in tables.items()}
