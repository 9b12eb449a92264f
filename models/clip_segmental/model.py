"""`clip-segmental`: a CLIP dual encoder (transformers' CLIPModel, weights from a local directory)
scoring S frames, one per segment, against the prompt.

Dimensions: ``segmental`` (InstructVideo's attenuated segmental reward), ``temporal_consistency``
and, when goal/baseline prompts are configured, ``goal_baseline`` (VLM-RM). Formulas in ``reward``.

Directory layout: a Hugging Face CLIP directory (config.json, weights, tokenizer files, optionally
preprocessor_config.json for image mean/std) plus an optional ``segmental_reward.json``:
``{"segments": 8, "lambda": 1.0, "goal_prompts": [...], "baseline_prompts": [...], "alpha": 1.0}``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from models.clip_segmental import reward
from models.registry import RewardModel
from models.spec import Batching, Dimension, FrameSampling, ModelSpec, Resolution

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class CheckpointError(ValueError):
    """A CLIP directory is missing or malformed; the message names the path and the problem."""


@dataclass(frozen=True)
class SegmentalConfig:
    segments: int = 8
    lam: float = 1.0
    goal_prompts: tuple[str, ...] = ()
    baseline_prompts: tuple[str, ...] = ()
    alpha: float = 1.0


def read_config(directory: Path) -> SegmentalConfig:
    path = directory / "segmental_reward.json"
    if not path.exists():
        return SegmentalConfig()
    try:
        raw = json.loads(path.read_text())
        config = SegmentalConfig(
            segments=int(raw.get("segments", 8)), lam=float(raw.get("lambda", 1.0)),
            goal_prompts=tuple(raw.get("goal_prompts", ())), baseline_prompts=tuple(raw.get("baseline_prompts", ())),
            alpha=float(raw.get("alpha", 1.0)),
        )
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed ({type(exc).__name__}: {exc})") from exc
    if not 1 <= config.segments <= 64 or not 0.0 <= config.alpha <= 1.0:
        raise CheckpointError(f"{path}: need 1 <= segments <= 64 and 0 <= alpha <= 1")
    if bool(config.goal_prompts) != bool(config.baseline_prompts):
        raise CheckpointError(f"{path}: goal_prompts and baseline_prompts go together")
    return config


def make_spec(config: SegmentalConfig, image_size: int, version: str) -> ModelSpec:
    dims = [
        Dimension(name="segmental", range=(-1.0, 1.0), description=f"mean_s exp(-{config.lam:g}|s+0.5-S/2|) cos(frame_s, prompt), S={config.segments}"),
        Dimension(name="temporal_consistency", range=(-1.0, 1.0), description="mean cosine similarity of consecutive frame embeddings"),
    ]
    if config.goal_prompts:
        dims.append(Dimension(name="goal_baseline", description=f"VLM-RM 1 - 0.5|(x-g)P|^2, alpha={config.alpha:g}, mean over frames"))
    return ModelSpec(
        name="clip-segmental",
        version=version,
        description="CLIP frame rewards: InstructVideo segmental reward, temporal consistency, optional VLM-RM goal-baseline.",
        dimensions=tuple(dims),
        sampling=FrameSampling(mode="segments", segments=config.segments, min_frames=1, max_frames=config.segments),
        # Frames arrive with the short side near 2x the model's input; the forward does CLIP's resize + centre crop.
        resolution=Resolution(max_pixels=(2 * image_size) ** 2 * 16 // 9, min_pixels=image_size**2, size_factor=2, filter="bicubic"),
        needs_prompt=True,
        batching=Batching(max_batch_size=16, max_wait_ms=5.0),
    )


def crop_pixels(frames: torch.Tensor, image_size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, s, s]: CLIP's bicubic resize of the short side to s,
    centre crop and normalisation (the image tower's input, also the compiled variant's pre step)."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    s = image_size
    size = (s, max(s, round(w * s / h))) if h <= w else (max(s, round(h * s / w)), s)
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 255)
    top, left = (size[0] - s) // 2, (size[1] - s) // 2
    x = x[:, :, top : top + s, left : left + s] / 255.0
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


@dataclass
class ClipSegmental:
    model: torch.nn.Module  # CLIPModel
    tokenizer: object
    config: SegmentalConfig
    image_size: int
    mean: torch.Tensor  # [3]
    std: torch.Tensor  # [3]
    cache_size: int = 4096
    _text: OrderedDict = field(default_factory=OrderedDict)
    goal: torch.Tensor | None = None
    projection: torch.Tensor | None = None

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings [N, D]; each distinct prompt is encoded once (LRU by prompt)."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._text))
        if todo:
            device = next(self.model.parameters()).device
            limit = self.model.config.text_config.max_position_embeddings
            tokens = self.tokenizer(todo, padding=True, truncation=True, max_length=limit, return_tensors="pt").to(device)
            emb = F.normalize(self.model.get_text_features(**tokens).pooler_output.float(), dim=-1)
            for p, e in zip(todo, emb):
                self._text[p] = e
        for p in prompts:
            self._text.move_to_end(p)
        out = torch.stack([self._text[p] for p in prompts])
        while len(self._text) > self.cache_size:
            self._text.popitem(last=False)
        return out

    def image_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised [N, D]: CLIP's resize (short side) + centre crop + normalise."""
        x = crop_pixels(frames, self.image_size, self.mean, self.std)
        return F.normalize(self.model.get_image_features(pixel_values=x).pooler_output.float(), dim=-1)

    def forward(self, frames: torch.Tensor, num_frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """uint8 [B, S, H, W, 3] padded, counts [B], prompts -> float32 [B, K]."""
        counts = [int(n) for n in num_frames]
        device = next(self.model.parameters()).device
        real = torch.cat([frames[b, :n] for b, n in enumerate(counts)]).to(device)
        images = self.image_embeddings(real).split(counts)
        texts = self.text_embeddings(prompts)
        rows = [self.scores(image, texts[b]) for b, image in enumerate(images)]
        return torch.stack(rows).float().cpu()

    def scores(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The reward row [K] of one video from its frame embeddings [S, D] and prompt embedding [D]."""
        row = [reward.segmental(image, text, self.config.lam), reward.temporal_consistency(image)]
        if self.projection is not None:
            row.append(reward.goal_baseline(image, self.goal, self.projection).mean())
        return torch.stack(row)


def read_spec(directory: Path) -> ModelSpec:
    """The spec of a CLIP directory, without loading weights (a gateway in front of Triton needs only this)."""
    from transformers import CLIPConfig

    directory = Path(directory)
    _check_layout(directory)
    try:
        image_size = int(CLIPConfig.from_pretrained(directory).vision_config.image_size)
    except Exception as exc:
        raise CheckpointError(f"{directory / 'config.json'}: not a CLIP config ({type(exc).__name__}: {exc})") from exc
    return make_spec(read_config(directory), image_size, version=f"{directory.name}")


def _check_layout(directory: Path) -> None:
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: no config.json (expected a Hugging Face CLIP directory)")


def load(directory: Path, device: str = "cpu") -> RewardModel:
    """Load a CLIP directory (and its optional segmental_reward.json) into a RewardModel."""
    from transformers import AutoTokenizer, CLIPModel

    directory = Path(directory)
    _check_layout(directory)
    config = read_config(directory)
    try:
        model = CLIPModel.from_pretrained(directory, dtype=torch.float32).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as exc:
        raise CheckpointError(f"{directory}: cannot load CLIPModel or its tokenizer ({type(exc).__name__}: {exc})") from exc
    mean, std = OPENAI_MEAN, OPENAI_STD
    processor = directory / "preprocessor_config.json"
    if processor.is_file():
        try:
            raw = json.loads(processor.read_text())
            mean, std = tuple(raw.get("image_mean", mean)), tuple(raw.get("image_std", std))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{processor}: malformed ({exc})") from exc
    image_size = int(model.config.vision_config.image_size)
    scorer = ClipSegmental(model, tokenizer, config, image_size, torch.tensor(mean, device=device), torch.tensor(std, device=device))
    if config.goal_prompts:
        with torch.inference_mode():
            goal = scorer.text_embeddings(list(config.goal_prompts)).mean(0)
            baseline = scorer.text_embeddings(list(config.baseline_prompts)).mean(0)
        scorer.goal, scorer.projection = goal, reward.goal_baseline_projection(goal, baseline, config.alpha)
    return RewardModel(spec=make_spec(config, image_size, version=f"{directory.name}"), forward=scorer.forward)
