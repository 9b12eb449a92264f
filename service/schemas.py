"""Wire types of the HTTP API (pydantic v2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.spec import ModelSpec


class VideoRef(BaseModel):
    """Exactly one of: ``url``; ``data`` (base64 container); ``frames`` (base64 .npy uint8
    [T,H,W,3]) with ``fps``; ``file`` (name of a multipart part)."""

    model_config = ConfigDict(extra="forbid")

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
    model_config = ConfigDict(extra="forbid")

    video: VideoRef
    prompt: str | None = Field(default=None, description="Text prompt the video was generated from.")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ScoreItem] = Field(min_length=1)
    models: list[str] | None = Field(default=None, description="Models to score with; default: the default model.")
    weights: dict[str, float] | None = Field(
        default=None,
        description="Weights over `model.dimension` names for `overall`; default: dimensions equally, models equally.",
        examples=[{"signal.sharpness": 2.0, "signal.motion_smoothness": 1.0}],
    )
    cache: Literal["use", "refresh", "bypass"] = Field(
        default="use", description="`use`: serve cached scores; `refresh`: recompute and store; `bypass`: skip the cache."
    )


class ItemScore(BaseModel):
    index: int
    scores: dict[str, float] = Field(description="Raw score per `model.dimension`.")
    overall: float = Field(description="Weighted sum of `scores`.")
    cached: bool = Field(default=False, description="True when every model's scores came from the cache.")


class ModelRef(BaseModel):
    name: str
    version: str


class ScoreResponse(BaseModel):
    models: list[ModelRef]
    weights: dict[str, float]
    results: list[ItemScore]


class ModelsResponse(BaseModel):
    models: list[ModelSpec]


class ErrorDetail(BaseModel):
    code: str
    message: str
    item: int | None = None
    others: list["ErrorDetail"] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
