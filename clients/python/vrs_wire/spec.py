"""The model contract as data: what a reward model returns and what input it wants.

A spec says everything the gateway needs to prepare frames for a model and to interpret
its output, so the gateway never special-cases a model by name. Clients see it in
``GET /v1/models``. Pure pydantic, Python >= 3.9 (``Optional[X]``, not ``X | None``: pydantic
evaluates annotations at runtime).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Dimension(_Frozen):
    """One output column of a model's forward."""

    name: str
    description: str = ""
    higher_is_better: bool = True
    range: Optional[tuple[float, float]] = Field(default=None, description="Closed range of raw scores, if bounded.")
    mean: Optional[float] = Field(default=None, description="Population mean used for optional normalisation.")
    std: Optional[float] = Field(default=None, description="Population std used for optional normalisation.")
    derived: bool = Field(
        default=False, description="Computed from the model's other dimensions; left out of the default weights."
    )


class FrameSampling(_Frozen):
    """Which frames of a video the model sees.

    - ``fps``: ``n = duration * fps`` frames, clamped to [min_frames, max_frames].
    - ``count``: ``n = count`` frames (fewer if the video is shorter and min_frames allows).
    - ``segments``: split the video into ``segments`` equal parts, one frame from the middle of each.
    In every mode ``n`` is then rounded to a multiple of ``multiple_of`` (down, or to the nearest
    with ties to even as Python's ``round`` does, per ``rounding``) and the frames are taken at
    ``round(linspace(0, total - 1, n))`` (``spacing="linspace"``), or at ``int(i * total / n)``, the
    first frame of each of n equal parts, as OpenCV-based samplers take them (``"stride"``);
    segment midpoints for ``segments``. ``"every"`` instead keeps every k-th frame from the first,
    k = (total - 1) // max_frames + 1, as many as that gives, rounded down to ``multiple_of``
    (Cosmos-Reason1's reward service).
    """

    mode: Literal["fps", "count", "segments"]
    fps: Optional[float] = None
    count: Optional[int] = None
    segments: Optional[int] = None
    min_frames: int = 1
    max_frames: int = 64
    multiple_of: int = 1
    rounding: Literal["floor", "nearest"] = "floor"
    spacing: Literal["linspace", "stride", "every"] = "linspace"

    @model_validator(mode="after")
    def _check(self) -> FrameSampling:
        needed = {"fps": self.fps, "count": self.count, "segments": self.segments}[self.mode]
        if needed is None or needed <= 0:
            raise ValueError(f"sampling mode {self.mode!r} needs a positive {self.mode}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError("need 1 <= min_frames <= max_frames")
        return self


class Resolution(_Frozen):
    """How frames are resized: keep aspect ratio, sides multiples of ``size_factor``,
    area within [min_pixels, max_pixels] (the qwen-vl-utils "smart resize" rule). With
    ``clip_pixels``, a clip of n frames gives each at most ``clip_pixels // n`` (a budget for the
    whole clip, as Cosmos-Reason1's reward service spends 9216 visual tokens on any clip)."""

    max_pixels: int
    clip_pixels: Optional[int] = Field(default=None, gt=0)
    min_pixels: int = 0
    size_factor: int = 1
    filter: Literal["bilinear", "bicubic", "area"] = "bilinear"
    antialias: bool = True


class Pairwise(_Frozen):
    """How two rewards turn into preference probabilities. ``judge``: the model compares the two
    videos itself and its per-dimension scores are relative (A's and B's shares, summing to 1)."""

    model: Literal["bradley-terry", "rao-kupper", "judge"] = "bradley-terry"
    theta: float = Field(default=1.0, ge=1.0, description="Rao-Kupper tie parameter; 1 means no ties.")


class Batching(_Frozen):
    """Default micro-batching limits for the model (configuration may override)."""

    max_batch_size: int = Field(default=8, ge=1)
    max_wait_ms: float = Field(default=5.0, ge=0)


class ModelSpec(_Frozen):
    """Everything about a reward model except its weights and forward function."""

    name: str
    version: str
    description: str = ""
    dimensions: tuple[Dimension, ...]
    sampling: FrameSampling
    resolution: Resolution
    needs_prompt: bool = False
    prompt_forbidden: Optional[str] = Field(
        default=None,
        description="Regular expression a prompt must not match: the model's control-token syntax, which its "
        "tokenizer would read as control tokens rather than text.",
    )
    pairwise: Pairwise = Pairwise()
    batching: Batching = Batching()

    @property
    def dimension_names(self) -> list[str]:
        return [d.name for d in self.dimensions]
