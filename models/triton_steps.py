"""Python pre/post steps that join a compiled model's TensorRT plans in a Triton ensemble.

Each step is the torch code the eager forward runs around the compiled towers, so the ensemble
computes what the python backend computes (tests/test_export.py checks the chain on onnxruntime):

- ``clip-segmental.pre``: FRAMES uint8 [B,F,H,W,3], NUM_FRAMES [B,1] -> PIXELS float32 [B,S,3,s,s]:
  each video's S segment frames picked from its real frames (``reward.tsn_indices``), then
  InstructVideo's resize, centre crop and normalisation (``models.clip_segmental.model.crop_pixels``),
  so the image tower sees the S frames the eager forward embeds, not all F;
- ``clip-segmental.post``: IMAGE_EMBEDS [B,S,D], TEXT_EMBEDS [B,D], NUM_FRAMES [B,1] -> SCORES
  [B,K]: ``ClipSegmental.scores`` with the same picks. Checkpoints with VLM-RM goal/baseline prompts need a second resize of every frame and have no
  ensemble yet (``models/triton_repo.py`` refuses them).

A step gets numpy arrays by contract name and returns them the same way; ``load_step`` builds one
from config.pbtxt's parameters (``step``, ``model_dir``). Both steps load the checkpoint on CPU with
the registry's loader for its preprocessing constants and goal/baseline embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models import contract

if TYPE_CHECKING:
    from models.clip_segmental.model import ClipSegmental


@dataclass
class ClipPre:
    scorer: ClipSegmental
    inputs: tuple[str, ...] = (contract.FRAMES, contract.NUM_FRAMES)

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from models.clip_segmental import reward
        from models.clip_segmental.model import crop_pixels

        frames = torch.from_numpy(arrays[contract.FRAMES])
        segments = self.scorer.config.segments
        picks = [reward.tsn_indices(int(n), segments) for n in arrays[contract.NUM_FRAMES].reshape(-1)]
        chosen = torch.cat([frames[b, idx] for b, idx in enumerate(picks)])  # [B*S, H, W, 3]
        with torch.inference_mode():
            pixels = crop_pixels(chosen, self.scorer.image_size, self.scorer.mean, self.scorer.std, "instructvideo")
        pixels = pixels.reshape(len(picks), segments, *pixels.shape[1:])
        return {contract.PIXELS: pixels.numpy().astype(np.float32, copy=False)}


@dataclass
class ClipPost:
    scorer: ClipSegmental
    inputs: tuple[str, ...] = (contract.IMAGE_EMBEDS, contract.TEXT_EMBEDS, contract.NUM_FRAMES)

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(arrays[contract.IMAGE_EMBEDS]).float()
        texts = torch.from_numpy(arrays[contract.TEXT_EMBEDS]).float()
        counts = arrays[contract.NUM_FRAMES].reshape(-1)
        from models.clip_segmental import reward

        rows = []
        with torch.inference_mode():
            for b, n in enumerate(int(n) for n in counts):
                picks = reward.tsn_indices(n, self.scorer.config.segments)  # the frames ``ClipPre`` chose
                rows.append(self.scorer.scores(images[b], picks, n, texts[b]))
        return {contract.SCORES: torch.stack(rows).float().numpy()}


STEPS = {"clip-segmental.pre": ClipPre, "clip-segmental.post": ClipPost}


def load_step(parameters: dict[str, str]):
    """The step config.pbtxt names, over the checkpoint in ``model_dir``."""
    from models.registry import load_model

    step = parameters["step"]
    if step not in STEPS:
        raise ValueError(f"unknown ensemble step {step!r} (known: {', '.join(STEPS)})")
    model = load_model(step.rsplit(".", 1)[0], Path(parameters["model_dir"]))
    return STEPS[step](model.forward.__self__)  # type: ignore[attr-defined]  # forward: a bound method of the scorer
