"""ONNX export of the compiled parts, run with onnxruntime (CPU) against the torch forward.

Tolerances: the graphs are the same float32 maths in another runtime (different kernels and
reduction orders), so scores and L2-normalised embeddings agree to 1e-5 absolute for signal and
1e-4 for the transformer towers; shapes are chosen away from the export's example shapes so the
dynamic axes are really exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import contract, export, profiles
from models import signal as signal_model
from models.clip_segmental.model import crop_pixels
from models.registry import builtin_models, load_model
from models.tokens import tokeniser
from models.triton_steps import load_step
from models.videoalign.model import video_patches
from tests import tensorrt_onnx_support, videos
from tests.tiny_checkpoints import BASE_ID

PROMPTS = ["a cat surfing a wave at sunset", "a red car in the rain", "a dog"]


@pytest.fixture(scope="module")
def loaded(tiny_dirs):
    return {
        "signal": builtin_models()["signal"],
        "clip-segmental": load_model("clip-segmental", tiny_dirs["clip"]),
        "videoalign": load_model("videoalign", tiny_dirs["videoalign"], {BASE_ID: tiny_dirs["base"]}),
    }


@pytest.fixture(scope="module")
def onnx_dir(loaded, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    for model in loaded.values():
        export.export(model, out)
    return out


def session(onnx_dir: Path, part: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(onnx_dir / f"{part}.onnx"), providers=["CPUExecutionProvider"])


def test_manifest_names_every_part_with_its_contract_and_profiles(onnx_dir: Path, loaded):
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert set(manifest) == {"signal", "clip-segmental.image", "clip-segmental.text", "videoalign.vision"}
    for name, entry in manifest.items():
        spec = loaded[entry["model"]].spec
        (part,) = [p for p in contract.parts(spec) if p.name == name]
        assert entry["inputs"] == list(part.contract.input_names)
        graph = session(onnx_dir, name)
        assert [i.name for i in graph.get_inputs()] == entry["inputs"]  # the ONNX graph takes the contract's tensors
        assert [o.name for o in graph.get_outputs()] == entry["outputs"]
        for profile in profiles.from_json(entry["profiles"]):
            assert set(profile) == set(entry["inputs"])
            assert all(r.covers(r.opt) and r.covers(r.min) and r.covers(r.max) for r in profile.values())


def test_every_node_is_one_tensorrt_10_parses(onnx_dir: Path):
    """Each exported graph uses only operators and input types TensorRT 10.0's ONNX parser takes
    (tests/tensorrt_onnx_support.py), at an opset it reads. This is how the signal graph was found
    to feed its UINT8 frames to Concat and Shape nodes, which TensorRT refuses (models/export.py)."""
    graphs = sorted(onnx_dir.glob("*.onnx"))
    assert len(graphs) == 4
    for path in graphs:
        assert tensorrt_onnx_support.refused(path) == [], path.name


def test_signal_onnx_equals_the_torch_forward(onnx_dir: Path):
    graph = session(onnx_dir, "signal")
    rng = np.random.default_rng(0)
    # batch, frames, height, width: landscape, portrait, a thin frame, one frame, the largest square.
    for b, t, h, w in [(3, 7, 64, 112), (1, 17, 160, 48), (2, 5, 16, 1024), (2, 1, 32, 32), (1, 3, 256, 256)]:
        clip = np.stack([videos.moving_scene(t, h, w, speed=1.0 + i) for i in range(b)])
        counts = rng.integers(1, t + 1, size=(b, 1)).astype(np.int32)
        (got,) = graph.run(None, {contract.FRAMES: clip, contract.NUM_FRAMES: counts})
        expected = signal_model.forward(torch.from_numpy(clip), torch.from_numpy(counts).view(-1)).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=f"shape {(b, t, h, w)}")


def test_clip_towers_and_the_compiled_pipeline_equal_the_torch_forward(onnx_dir: Path, loaded, tiny_dirs):
    model = loaded["clip-segmental"]
    scorer = model.forward.__self__
    image, text = session(onnx_dir, "clip-segmental.image"), session(onnx_dir, "clip-segmental.text")
    segments = scorer.config.segments
    clips = [videos.moving_scene(8, 48, 80, speed=s) for s in (1.0, 3.0, 2.0)]
    frames = torch.from_numpy(np.stack(clips))  # [B=3, F=8, H, W, 3]
    chosen = frames[:, :segments]  # any S frames of each video: the tower is per frame
    pixels = crop_pixels(chosen.flatten(0, 1), scorer.image_size, scorer.mean, scorer.std, "instructvideo")
    (got_images,) = image.run(None, {contract.PIXELS: pixels.reshape(3, segments, *pixels.shape[1:]).numpy()})
    with torch.inference_mode():
        expected_images = scorer.image_embeddings(chosen.flatten(0, 1), "instructvideo").reshape(3, segments, -1)
        expected_texts = scorer.text_embeddings(PROMPTS).numpy()
    np.testing.assert_allclose(got_images, expected_images.numpy(), atol=1e-4, rtol=0)

    ids, mask = tokeniser("clip-segmental", tiny_dirs["clip"])(PROMPTS)  # what the gateway sends a plan
    assert ids.shape[1] > 4 and (mask == 0).any()  # padded to the longest: the mask matters
    (got_texts,) = text.run(None, {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask})
    np.testing.assert_allclose(got_texts, expected_texts, atol=1e-4, rtol=0)

    # The ensemble's steps, as Triton's python model runs them (models/triton_steps.py), around the
    # ONNX towers: pre (segment frames, crop) -> towers -> post (reward formulas) equals the
    # python-backend forward, on padded clips of different lengths.
    pre = load_step({"step": "clip-segmental.pre", "model_dir": str(tiny_dirs["clip"])})
    post = load_step({"step": "clip-segmental.post", "model_dir": str(tiny_dirs["clip"])})
    counts = np.array([[8], [6], [5]], dtype=np.int32)  # 4 segments of 2 frames, and of 1 (two ways)
    (step_pixels,) = pre({contract.FRAMES: frames.numpy(), contract.NUM_FRAMES: counts}).values()
    assert step_pixels.shape == (3, segments, 3, scorer.image_size, scorer.image_size)  # S frames, not F
    (step_images,) = image.run(None, {contract.PIXELS: step_pixels})
    (compiled,) = post(
        {contract.IMAGE_EMBEDS: step_images, contract.TEXT_EMBEDS: got_texts, contract.NUM_FRAMES: counts}
    ).values()
    with torch.inference_mode():
        eager = model.forward(frames, torch.from_numpy(counts).view(-1), PROMPTS)
    assert compiled.shape == (3, len(model.spec.dimensions))
    np.testing.assert_allclose(compiled, eager.numpy(), atol=1e-4, rtol=0)


def test_qwen_vision_tower_onnx_equals_transformers(onnx_dir: Path, loaded):
    """Patch counts unlike the export example's: the patch and group axes are dynamic."""
    scorer = loaded["videoalign"].forward.__self__
    qwen = scorer.model.model
    graph = session(onnx_dir, "videoalign.vision")
    for n, h, w in [(6, 84, 56), (2, 112, 112), (8, 56, 168)]:
        frames = torch.from_numpy(videos.moving_scene(n, h, w))
        patches, grid = video_patches(frames)
        inputs = export.vision_inputs(patches, grid)
        (got,) = graph.run(None, {contract.PATCHES: inputs[0].numpy(), contract.POSITIONS: inputs[1].numpy()})
        with torch.inference_mode():
            expected = qwen.get_video_features(patches, torch.tensor([grid])).pooler_output
        expected = torch.cat(list(expected)).numpy() if isinstance(expected, (tuple, list)) else expected.numpy()
        assert got.shape == (grid[0], grid[1] * grid[2] // 4, expected.shape[-1])
        np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-4, rtol=0, err_msg=f"{(n, h, w)}")
