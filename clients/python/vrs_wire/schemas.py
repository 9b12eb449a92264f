"""Wire types of the HTTP API (pydantic v2): requests, responses, the error shape.

Shared by the server and the client (``vrs-client``), so it imports nothing but pydantic and
runs on Python >= 3.9: ``Optional[X]``, not ``Optional[X]`` (pydantic evaluates annotations).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from vrs_wire.spec import ModelSpec

SOURCES = ("url", "data", "frames", "file", "sha256")
NPY_MEDIA_TYPE = "application/x-npy"
"""Content type of a multipart part holding raw frames as a .npy file (uint8 [T, H, W, 3])."""

# Requests: JSON types as written (no "2" for 2, no "true" for true) and only finite numbers.
_WIRE = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _source_schema(source: str) -> dict:
    """JSON schema of a VideoRef whose source is ``source``."""
    fps = {"frames": {"type": "number"}, "url": {"type": "null"}, "data": {"type": "null"}}.get(source)
    properties = {k: {"type": "string" if k == source else "null"} for k in SOURCES}
    return {
        "required": [source, *(["fps"] if source == "frames" else [])],
        "properties": properties | ({"fps": fps} if fps else {}),
    }


class VideoRef(BaseModel):
    """Exactly one of: ``url``; ``data`` (base64 container); ``frames`` (base64 .npy uint8
    [T,H,W,3]) with ``fps``; ``file`` (name of a multipart part: a container, or with ``fps`` and
    part type ``application/x-npy`` raw frames); ``sha256`` (a video sent before: its digest, see
    ``vrs_wire.digest``; with ``fps`` for raw frames), scored only if its scores are still cached."""

    # The schema states the source rules too (a source given is a string, the others absent or
    # null; ``fps`` with raw frames only), so generated clients and schema-driven fuzzers send
    # what the service accepts.
    model_config = _WIRE | ConfigDict(json_schema_extra={"oneOf": [_source_schema(k) for k in SOURCES]})

    url: Optional[str] = Field(default=None, examples=["https://example.com/rollout.mp4"])
    data: Optional[str] = Field(default=None, description="Base64 of a video container (mp4, webm, mkv, ...).")
    frames: Optional[str] = Field(default=None, description="Base64 of a .npy file holding uint8 [T, H, W, 3].")
    fps: Optional[float] = Field(default=None, gt=0, description="Frame rate of raw frames (`frames`, npy parts).")
    file: Optional[str] = Field(default=None, description="Multipart only: the name of the file part.")
    sha256: Optional[str] = Field(
        default=None,
        pattern="^[0-9a-f]{64}$",
        description="Digest of a video sent before (container bytes, or the frames' .npy with `fps`); "
        "404 `not_cached` when its scores are no longer cached.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> VideoRef:
        given = [k for k in SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SOURCES)} (got {given or 'none'})")
        if self.frames is not None and self.fps is None:
            raise ValueError("frames need fps")
        if self.fps is not None and given[0] in ("url", "data"):
            raise ValueError(f"fps is for raw frames, not {given[0]}")
        return self


class ScoreItem(BaseModel):
    model_config = _WIRE

    video: VideoRef
    prompt: Optional[str] = Field(default=None, description="Text prompt the video was generated from.")


class ScoringOptions(BaseModel):
    """What every scoring request shares: the models, how dimensions combine into `overall`, the cache."""

    model_config = _WIRE

    models: Optional[list[str]] = Field(
        default=None,
        min_length=1,
        description="Models to score with; default: the models named by `weights` or `preset`, else the default model.",
    )
    weights: Optional[dict[str, float]] = Field(
        default=None,
        description="Weights over `model.dimension` names for `overall`; default: dimensions equally, models equally.",
        examples=[{"signal.sharpness": 2.0, "signal.motion_smoothness": 1.0}],
    )
    preset: Optional[str] = Field(default=None, description="A named weight preset from configuration (or `weights`).")
    normalise: bool = Field(
        default=False,
        description="Report `(score - mean) / std` per dimension with the model's statistics (400 if it has none).",
    )
    cache: Literal["use", "refresh", "bypass"] = Field(
        default="use",
        description="`use`: serve cached scores; `refresh`: recompute and store; `bypass`: skip the cache.",
    )

    @field_validator("preset")
    @classmethod
    def _weights_or_preset(cls, preset: Optional[str], info: ValidationInfo) -> Optional[str]:
        if preset is not None and info.data.get("weights") is not None:
            raise ValueError("give weights or preset, not both")
        return preset


class ScoreRequest(ScoringOptions):
    items: list[ScoreItem] = Field(min_length=1)

    def videos_with_prompts(self) -> list[tuple[VideoRef, Optional[str]]]:
        return [(item.video, item.prompt) for item in self.items]


class GroupRequest(ScoringOptions):
    """Videos scored against one prompt (or one prompt per video)."""

    videos: list[VideoRef]
    prompt: Optional[str] = Field(default=None, description="The prompt every video was generated from.")
    prompts: Optional[list[str]] = Field(
        default=None, description="Instead of `prompt`: one prompt per video, in order."
    )

    @field_validator("prompts")
    @classmethod
    def _one_prompt_per_video(cls, prompts: Optional[list[str]], info: ValidationInfo) -> Optional[list[str]]:
        if prompts is None:
            return None
        if info.data.get("prompt") is not None:
            raise ValueError("give prompt or prompts, not both")
        videos = info.data.get("videos")
        if videos is not None and len(prompts) != len(videos):
            raise ValueError(f"{len(prompts)} prompts for {len(videos)} videos; give one per video")
        return prompts

    def videos_with_prompts(self) -> list[tuple[VideoRef, Optional[str]]]:
        prompts = self.prompts if self.prompts is not None else [self.prompt] * len(self.videos)
        return list(zip(self.videos, prompts))


class CompareRequest(GroupRequest):
    videos: list[VideoRef] = Field(min_length=2, max_length=2, description="Exactly two videos: A and B.")


class RankRequest(GroupRequest):
    videos: list[VideoRef] = Field(min_length=2, description="The group: best-of-N candidates or GRPO rollouts.")
    top_k: Optional[int] = Field(
        default=None, ge=1, description="Length of `ranking` (1..number of videos); default all."
    )
    advantage_eps: float = Field(default=1e-4, ge=0, description="`eps` in `(r - mean) / (std + eps)`.")
    advantage_std: Literal["sample", "population"] = Field(
        default="sample", description="`sample`: std over n - 1 (torch, TRL); `population`: over n (numpy, Flow-GRPO)."
    )

    @field_validator("top_k")
    @classmethod
    def _top_k_within_group(cls, top_k: Optional[int], info: ValidationInfo) -> Optional[int]:
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
    pairwise: Literal["bradley-terry", "rao-kupper", "judge"] = Field(
        description="The pairwise model used; `judge`: the judge's own relative scores of A and B."
    )
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
    results: list[RankedItem] = Field(description="Every video, in input order.")  # type: ignore[assignment]  # pydantic: a subclass narrows a field


class ModelsResponse(BaseModel):
    models: list[ModelSpec]
    placement: dict[str, dict[str, str]] = Field(
        default={}, description='Where each model runs: {"backend", "device", "dtype", "decode"} by model name.'
    )


class ErrorDetail(BaseModel):
    code: str
    message: str
    item: Optional[int] = None
    others: Optional[list[ErrorDetail]] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
