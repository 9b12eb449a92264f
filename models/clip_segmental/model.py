"""`clip-segmental`: a CLIP dual encoder (transformers' CLIPModel, weights from a local directory)
scoring a clip of F frames (sampled uniformly from the video) against the prompt.

Dimensions: ``segmental`` (InstructVideo's temporally attenuated segmental reward on S of the F
frames), ``temporal_consistency`` (of those S frames) and, when goal/baseline prompts are
configured, ``goal_baseline`` (VLM-RM, every one of the F frames). Each dimension's frames are
prepared as its reference prepares them. Formulas in ``reward``.

Directory layout: a Hugging Face CLIP directory (config.json, weights, tokenizer files, optionally
preprocessor_config.json for image mean/std) plus an optional ``segmental_reward.json``:
``{"frames": 16, "segments": 4, "lambda": 1.0, "goal_prompts": [...], "baseline_prompts": [...], "alpha": 1.0}``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from models import fingerprint
from models.clip_segmental import reward
from models.placement import CPU, Placement
from models.registry import RewardModel, Stages
from models.spec import Batching, Dimension, FrameSampling, ModelSpec, Resolution

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerBase

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class CheckpointError(ValueError):
    """A CLIP directory is missing or malformed; the message names the path and the problem."""


@dataclass(frozen=True)
class SegmentalConfig:
    """Defaults are InstructVideo's: 16-frame clips, 4 segments, lambda_TAR = 1."""

    frames: int = 16
    segments: int = 4
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
            frames=int(raw.get("frames", 16)),
            segments=int(raw.get("segments", 4)),
            lam=float(raw.get("lambda", 1.0)),
            goal_prompts=tuple(raw.get("goal_prompts", ())),
            baseline_prompts=tuple(raw.get("baseline_prompts", ())),
            alpha=float(raw.get("alpha", 1.0)),
        )
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed ({type(exc).__name__}: {exc})") from exc
    if not 1 <= config.segments <= config.frames <= 256 or not 0.0 <= config.alpha <= 1.0:
        raise CheckpointError(f"{path}: need 1 <= segments <= frames <= 256 and 0 <= alpha <= 1")
    if bool(config.goal_prompts) != bool(config.baseline_prompts):
        raise CheckpointError(f"{path}: goal_prompts and baseline_prompts go together")
    return config


def make_spec(config: SegmentalConfig, image_size: int, version: str) -> ModelSpec:
    dims = [
        Dimension(
            name="segmental",
            range=(-1.0, 1.0),
            description=f"InstructVideo: mean_s exp(-{config.lam:g}|i_s - F//2|) cos(frame i_s, prompt), i_s = s*(F//S), "
            f"S={config.segments} of the F<={config.frames} frames",
        ),
        Dimension(
            name="temporal_consistency",
            range=(-1.0, 1.0),
            description="mean cosine similarity of consecutive segment-frame embeddings",
        ),
    ]
    if config.goal_prompts:
        dims.append(
            Dimension(
                name="goal_baseline",
                description=f"VLM-RM 1 - 0.5|(x-g)P|^2, alpha={config.alpha:g}, mean over the F frames",
            )
        )
    return ModelSpec(
        name="clip-segmental",
        version=version,
        description="CLIP frame rewards: InstructVideo segmental reward, temporal consistency, optional VLM-RM goal-baseline.",
        dimensions=tuple(dims),
        # The clip the reward model sees: F frames uniformly over the video (fewer, down to S, if it is shorter).
        sampling=FrameSampling(mode="count", count=config.frames, min_frames=config.segments, max_frames=config.frames),
        # Frames arrive with the short side near 2x the model's input; the forward does each reference's resize.
        resolution=Resolution(
            max_pixels=(2 * image_size) ** 2 * 16 // 9, min_pixels=image_size**2, size_factor=2, filter="bicubic"
        ),
        needs_prompt=True,
        prompt_forbidden=r"<\|[A-Za-z0-9_]+\|>",  # CLIP's <|startoftext|> / <|endoftext|>: an early end-of-text
        batching=Batching(max_batch_size=16, max_wait_ms=5.0),
    )


Resize = Literal["instructvideo", "vlmrm"]


@torch.compiler.disable  # Inductor (torch 2.13) fails to lower this crop for dynamic frame sizes; it is cheap glue
def crop_pixels(
    frames: torch.Tensor, image_size: int, mean: torch.Tensor, std: torch.Tensor, resize: Resize
) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, s, s], the image tower's input (also the compiled variant's
    pre step). Pixels to [0, 1], then each reference's resize: ``instructvideo``: short side to s,
    bilinear (torchvision ``Resize(224)``), then a centre crop (its 256x256 clips came out square;
    others need the crop to fit the model); ``vlmrm``: both sides to s, bicubic (``Resize((s, s))``,
    aspect not kept). Both antialiased (torchvision's default for tensors since 0.17); then mean/std."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[2:]
    s = image_size
    if resize == "instructvideo":
        size = (s, max(s, round(w * s / h))) if h <= w else (max(s, round(h * s / w)), s)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        top, left = (size[0] - s) // 2, (size[1] - s) // 2
        x = x[:, :, top : top + s, left : left + s]
    else:
        x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
    return (x - mean.view(1, 3, 1, 1).to(x.device)) / std.view(1, 3, 1, 1).to(x.device)


@dataclass
class ClipSegmental:
    model: CLIPModel
    tokenizer: PreTrainedTokenizerBase
    config: SegmentalConfig
    image_size: int
    mean: torch.Tensor  # [3]
    std: torch.Tensor  # [3]
    cache_size: int = 4096
    _text: OrderedDict = field(default_factory=OrderedDict)
    goal: torch.Tensor | None = None
    projection: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def tokenize(self, prompts: Sequence[str]) -> tuple[list[str], dict | None]:
        """The distinct prompts not yet in the text cache, tokenised on the host (None if none)."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._text))
        if not todo:
            return todo, None
        limit = self.model.config.text_config.max_position_embeddings  # type: ignore[union-attr]  # transformers types a sub-config dict | config | None; a config once loaded
        return todo, dict(self.tokenizer(todo, padding=True, truncation=True, max_length=limit, return_tensors="pt"))

    # Under VRS_COMPILE=inductor this stays eager: tracing the prompt cache would guard on the prompt
    # strings and compile a new graph for every new set of prompts.
    @torch.compiler.disable
    def text_embeddings(
        self, prompts: Sequence[str], tokenized: tuple[list[str], dict | None] | None = None
    ) -> torch.Tensor:
        """Normalised text embeddings [N, D]; each distinct prompt is encoded once (LRU by prompt).
        ``tokenized`` is ``tokenize(prompts)`` done earlier (on another thread, by ``pre``)."""
        todo, tokens = tokenized if tokenized is not None else self.tokenize(prompts)
        if any(p not in self._text and p not in todo for p in prompts):  # evicted since ``pre`` looked: tokenise again
            todo, tokens = self.tokenize(prompts)
        if tokens is not None:
            tokens = {k: v.to(self.device, non_blocking=True) for k, v in tokens.items()}
            emb = F.normalize(self.model.get_text_features(**tokens).pooler_output.float(), dim=-1)
            for p, e in zip(todo, emb):
                self._text[p] = e
        for p in prompts:
            self._text.move_to_end(p)
        out = torch.stack([self._text[p] for p in prompts])
        while len(self._text) > self.cache_size:
            self._text.popitem(last=False)
        return out

    def image_embeddings(self, frames: torch.Tensor, resize: Resize) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised [N, D], after ``crop_pixels`` with the reference's ``resize``."""
        x = crop_pixels(frames, self.image_size, self.mean, self.std, resize)
        dtype = next(self.model.parameters()).dtype
        return F.normalize(self.model.get_image_features(pixel_values=x.to(dtype)).pooler_output.float(), dim=-1)

    def pre(self, frames: torch.Tensor, num_frames: torch.Tensor, prompts: Sequence[str]):
        """Host work: the batch's new prompts tokenised."""
        return frames, [int(n) for n in num_frames], list(prompts), self.tokenize(prompts)

    def core(self, prepared) -> torch.Tensor:
        """Device work: image and (new) text embeddings, then the reward formulas -> float32 [B, K]."""
        frames, counts, prompts, tokenized = prepared
        frames = frames.to(self.device, non_blocking=True)
        picks = [reward.tsn_indices(n, self.config.segments) for n in counts]
        chosen = torch.cat([frames[b, idx] for b, idx in enumerate(picks)])
        segment_images = self.image_embeddings(chosen, "instructvideo").split(self.config.segments)
        all_images: Sequence[torch.Tensor | None] = [None] * len(counts)
        if self.projection is not None:
            everything = torch.cat([frames[b, :n] for b, n in enumerate(counts)])
            all_images = self.image_embeddings(everything, "vlmrm").split(counts)
        texts = self.text_embeddings(prompts, tokenized)
        rows = [
            self.scores(segment_images[b], picks[b], counts[b], texts[b], all_images[b]) for b in range(len(counts))
        ]
        return torch.stack(rows).float()

    def forward(self, frames: torch.Tensor, num_frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """uint8 [B, F, H, W, 3] padded, counts [B], prompts -> float32 [B, K]."""
        return self.core(self.pre(frames, num_frames, prompts))

    def scores(
        self,
        segments: torch.Tensor,
        picks: list[int],
        count: int,
        text: torch.Tensor,
        frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The reward row [K] of one video: ``segments`` [S, D] are the embeddings of its frames ``picks``
        (InstructVideo resize) out of ``count``, ``text`` [D] its prompt's, ``frames`` [F, D] every frame's
        (VLM-RM resize; needed only with goal/baseline prompts)."""
        weights = reward.temporally_attenuated_weights(picks, count, self.config.lam)
        row = [reward.segmental(segments, text, weights), reward.temporal_consistency(segments)]
        if self.projection is not None:
            assert frames is not None and self.goal is not None  # set with projection; core passes the frames
            row.append(reward.goal_baseline(frames, self.goal, self.projection).mean())
        return torch.stack(row)


def read_spec(directory: Path) -> ModelSpec:
    """The spec of a CLIP directory, without loading weights (a gateway in front of Triton needs only this)."""
    from transformers import CLIPConfig

    directory = Path(directory)
    _check_layout(directory)
    try:
        image_size = int(CLIPConfig.from_pretrained(directory).vision_config.image_size)  # type: ignore[union-attr, arg-type]  # as in tokenize
    except Exception as exc:
        raise CheckpointError(f"{directory / 'config.json'}: not a CLIP config ({type(exc).__name__}: {exc})") from exc
    return make_spec(read_config(directory), image_size, version=fingerprint.version(directory))


def _check_layout(directory: Path) -> None:
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: no config.json (expected a Hugging Face CLIP directory)")


def load(directory: Path, base_dirs: dict[str, Path] | None = None, placement: Placement = CPU) -> RewardModel:
    """Load a CLIP directory (and its optional segmental_reward.json) onto ``placement`` (SDPA
    attention). ``base_dirs`` is unused: a CLIP directory is self-contained."""
    from transformers import AutoTokenizer, CLIPModel

    directory = Path(directory)
    _check_layout(directory)
    config = read_config(directory)
    try:
        model = CLIPModel.from_pretrained(directory, dtype=placement.dtype, attn_implementation="sdpa")
        model = model.to(placement.device).eval()  # type: ignore[arg-type]  # transformers' @wraps(Module.to) hides that `to` is a method
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as exc:
        raise CheckpointError(
            f"{directory}: cannot load CLIPModel or its tokenizer ({type(exc).__name__}: {exc})"
        ) from exc
    mean, std = OPENAI_MEAN, OPENAI_STD
    processor = directory / "preprocessor_config.json"
    if processor.is_file():
        try:
            raw = json.loads(processor.read_text())
            mean, std = tuple(raw.get("image_mean", mean)), tuple(raw.get("image_std", std))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{processor}: malformed ({exc})") from exc
    image_size = int(model.config.vision_config.image_size)
    scorer = ClipSegmental(
        model,
        tokenizer,
        config,
        image_size,
        torch.tensor(mean, device=placement.device),
        torch.tensor(std, device=placement.device),
    )
    if config.goal_prompts:
        with torch.inference_mode():
            goal = scorer.text_embeddings(list(config.goal_prompts)).mean(0)
            baseline = scorer.text_embeddings(list(config.baseline_prompts)).mean(0)
        scorer.goal, scorer.projection = goal, reward.goal_baseline_projection(goal, baseline, config.alpha)
    spec = make_spec(config, image_size, version=fingerprint.version(directory))
    return RewardModel(spec=spec, forward=scorer.forward, placement=placement, stages=Stages(scorer.pre, scorer.core))
