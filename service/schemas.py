"""Wire types of the HTTP API (pydantic v2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from models.spec import ModelSpec

# Requests: JSON types as written (no "2" for 2, no "true" for true) and only finite numbers.
_WIRE = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class VideoRef(BaseModel):
    """Exactly one of: ``url``; ``data`` (base64 container); ``frames`` (base64 .npy uint8
    [T,H,W,3]) with ``fps``; ``file`` (name of a multipart part)."""

    model_config = _WIRE

    url: str | None = Field(default=None, examples=["https://example.com/rollout.mp4"])
    data: str | None = Field(default=None, description="Base64 of a video container (mp4, webm, mkv, ...).")
    frames: str | None = Field(default=None, description="Base64 of a .npy file holding uint8 [T, H, W, 3].")
    fps: float | None = Field(default=None, gt=0, description="Frame rate of `frames`.")
    file: str | None = Field(default=None, description="Multipart only: the name of the file part.")

    @model_validator(mode="after")
    def _one_source(self) -> "VideoRef":
        given = [k for k in ("url", "data", "frames", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of url, data, frames, file (got {given or 'none'})")
        if self.frames is not None and self.fps is None:
            raise ValueError("frames need fps")
        return self


class ScoreItem(BaseModel):
    model_config = _WIRE

    video: VideoRef
    prompt: str | None = Field(default=None, description="Text prompt the video was generated from.")


class ScoringOptions(BaseModel):
    """What every scoring request shares: the models, how dimensions combine into `overall`, the cache."""

    model_config = _WIRE

    models: list[str] | None = Field(
        default=None,
        description="Models to score with; default: the models named by `weights` or `preset`, else the default model.",
    )
    weights: dict[str, float] | None = Field(
        default=None,
        description="Weights over `model.dimension` names for `overall`; default: dimensions equally, models equally.",
        examples=[{"signal.sharpness": 2.0, "signal.motion_smoothness": 1.0}],
    )
    preset: str | None = Field(default=None, description="A named weight preset from configuration (or `weights`).")
    normalise: bool = Field(
        default=False,
        description="Report `(score - mean) / std` per dimension with the model's statistics (400 if it has none).",
    )
    cache: Literal["use", "refresh", "bypass"] = Field(
        default="use", description="`use`: serve cached scores; `refresh`: recompute and store; `bypass`: skip the cache."
    )

    @field_validator("preset")
    @classmethod
    def _weights_or_preset(cls, preset: str | None, info: ValidationInfo) -> str | None:
        if preset is not None and info.data.get("weights") is not None:
            raise ValueError("give weights or preset, not both")
        return preset


class ScoreRequest(ScoringOptions):
    items: list[ScoreItem] = Field(min_length=1)

    def videos_with_prompts(self) -> list[tuple[VideoRef, str | None]]:
        return [(item.video, item.prompt) for item in self.items]


class GroupRequest(ScoringOptions):
    """Videos scored against one prompt (or one prompt per video)."""

    videos: list[VideoRef]
    prompt: str | None = Field(default=None, description="The prompt every video was generated from.")
    prompts: list[str] | None = Field(default=None, description="Instead of `prompt`: one prompt per video, in order.")

    @field_validator("prompts")
    @classmethod
    def _one_prompt_per_video(cls, prompts: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if prompts is None:
            return None
        if info.data.get("prompt") is not None:
            raise ValueError("give prompt or prompts, not both")
        videos = info.data.get("videos")
        if videos is not None and len(prompts) != len(videos):
            raise ValueError(f"{len(prompts)} prompts for {len(videos)} videos; give one per video")
        return prompts

    def videos_with_prompts(self) -> list[tuple[VideoRef, str | None]]:
        prompts = self.prompts if self.prompts is not None else [self.prompt] * len(self.videos)
        return list(zip(self.videos, prompts, strict=True))


class CompareRequest(GroupRequest):
    videos: list[VideoRef] = Field(min_length=2, max_length=2, description="Exactly two videos: A and B.")


class RankRequest(GroupRequest):
    videos: list[VideoRef] = Field(min_length=2, description="The group: best-of-N candidates or GRPO rollouts.")
    top_k: int | None = Field(default=None, ge=1, description="Length of `ranking` (1..number of videos); default all.")
    advantage_eps: float = Field(default=1e-4, ge=0, description="`eps` in `(r - mean) / (std + eps)`.")
    advantage_std: Literal["sample", "population"] = Field(
        default="sample", description="`sample`: std over n - 1 (torch, TRL); `population`: over n (numpy, Flow-GRPO)."
    )

    @field_validator("top_k")
    @classmethod
    def _top_k_within_group(cls, top_k: int | None, info: ValidationInfo) -> int | None:
        videos = info.data.get("videos")
        if top_k is not None and videos is not None and top_k > len(videos):
            raise ValueError(f"top_k {top_k} is more than the {len(videos)} videos")
        return top_k


class ItemScore(BaseModel):
    index: int
    scores: dict[str, float] = Field(description="Score per `model.dimension` (normalised when asked).")
    overall: float = Field(description="Weighted sum of `scores` (lower-is-better dimensions negated).")
    cached: bool = Field(default=False, description="True when every model's scores came from the cache.")


class ModelRef(BaseModel):
    name: str
    version: str


class ScoreResponse(BaseModel):
    models: list[ModelRef]
    weights: dict[str, float]
    results: list[ItemScore]


class Preference(BaseModel):
    """Outcome probabilities of A against B (they sum to 1), and the most probable outcome."""

    p_a_over_b: float
    p_b_over_a: float
    p_tie: float
    winner: Literal["a", "b", "tie"] = Field(description="Most probable outcome; `tie` when the top is shared.")
    pairwise: Literal["bradley-terry", "rao-kupper"] = Field(description="The pairwise model used.")
    theta: float = Field(description="Its tie parameter (1 for Bradley-Terry).")


class CompareResponse(ScoreResponse):
    results: list[ItemScore] = Field(description="A and B, as `/v1/score` would return them.")
    dimensions: dict[str, Preference] = Field(description="Per `model.dimension`: raw scores, the model's own spec.")
    overall: Preference = Field(description="From the two `overall` values.")


class RankedItem(ItemScore):
    rank: int = Field(description="1 = best; equal overall scores rank in input order.")
    advantage: float = Field(description="Group advantage of `overall`.")
    advantages: dict[str, float] = Field(description="Group advantage per `model.dimension`.")


class RankResponse(ScoreResponse):
    ranking: list[int] = Field(description="Input indices, best first (`top_k` of them).")
    results: list[RankedItem] = Field(description="Every video, in input order.")


class ModelsResponse(BaseModel):
    models: list[ModelSpec]
    placement: dict[str, dict[str, str]] = Field(
        default={}, description='Where each model runs: {"backend", "device", "dtype", "decode"} by model name.'
    )


class ErrorDetail(BaseModel):
    code: str
    message: str
    item: int | None = None
    others: list["ErrorDetail"] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
