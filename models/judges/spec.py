"""The judge contract: a generative VLM judge as data (a spec) plus a pure parser.

A *judge* is a vision-language model that answers in text ("visual quality: 4; ...", "Yes").
Unlike a regression model it has no forward returning ``[B, K]`` floats; instead

- ``JudgeSpec`` says how to ask it: the frames (as a list of images or as one video), how many
  and how large, the system prompt, the user prompt template(s), the generation parameters and
  the upstream model name;
- a parser (``Judge.parse``) turns what the model said (``Generation``: the text and, when the
  judge asks for them, the per-token log-probabilities) into one float per dimension, or raises
  ``JudgeAnswerError`` carrying the raw text. A judge never scores an answer it cannot read as 0.

Runners (``models.judges.runner``) carry a ``ChatRequest`` to a model and bring back a
``Generation``; they know nothing of any judge's format.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.spec import Dimension, FrameSampling, Resolution


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GenerationParams(_Frozen):
    """Decoding settings sent with every request. Temperature 0 = greedy (deterministic)."""

    temperature: float = Field(default=0.0, ge=0.0)
    max_tokens: int = Field(default=1024, ge=1)
    top_logprobs: int = Field(
        default=0,
        ge=0,
        description="0: no log-probabilities wanted (hard scores from the text). k > 0: ask for each "
        "generated token's log-probability and its k most likely alternatives (soft scores).",
    )

    @property
    def wants_logprobs(self) -> bool:
        return self.top_logprobs > 0


class JudgeSpec(_Frozen):
    """Everything about a judge except the parser and the weights."""

    name: str
    version: str
    description: str = ""
    upstream_model: str = Field(description="Model name sent to the upstream (vLLM's --served-model-name).")
    dimensions: tuple[Dimension, ...]
    frames_as: Literal["images", "video"] = Field(
        description="images: one image part per frame (UnifiedReward); video: the frames as one video (VideoScore2)."
    )
    sampling: FrameSampling
    resolution: Resolution
    system_prompt: str | None = None
    prompt_template: str = Field(description="User text; '{prompt}' is replaced by the request's prompt.")
    needs_prompt: bool = True
    pairwise_template: str | None = Field(
        default=None, description="User text of the pairwise mode, if the model has one."
    )
    pairwise_dimensions: tuple[Dimension, ...] | None = None
    pairwise_frames: int | None = Field(default=None, ge=1, description="Frames per video in the pairwise mode.")
    generation: GenerationParams = GenerationParams()

    @model_validator(mode="after")
    def _check(self) -> JudgeSpec:
        if "{prompt}" not in self.prompt_template and self.needs_prompt:
            raise ValueError(f"{self.name}: prompt_template has no {{prompt}} placeholder")
        if self.pairwise_template is not None and (self.pairwise_dimensions is None or self.pairwise_frames is None):
            raise ValueError(f"{self.name}: a pairwise template needs pairwise_dimensions and pairwise_frames")
        return self

    @property
    def dimension_names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def has_pairwise(self) -> bool:
        return self.pairwise_template is not None

    def render(self, prompt: str) -> str:
        """The user text for one video (``str.replace``, so braces in the prompt are harmless)."""
        return self.prompt_template.replace("{prompt}", prompt)

    def render_pair(self, prompt: str) -> str:
        if self.pairwise_template is None:
            raise ValueError(f"{self.name} has no pairwise mode")
        return self.pairwise_template.replace("{prompt}", prompt)

    def fingerprint(self) -> str:
        """sha256 over everything that changes a judge's answer for the same frames and prompt:
        prompts, generation parameters, upstream model name, frame policy, version. A score cache
        keys judge results on it (with the content hash and the prompt), so changing any of
        these can never serve a stale score."""
        ingredients = self.model_dump(mode="json", exclude={"description"})
        for dims in ("dimensions", "pairwise_dimensions"):  # descriptions are documentation only
            if ingredients[dims] is not None:
                for d in ingredients[dims]:
                    d.pop("description", None)
        blob = json.dumps(ingredients, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


# ---- what a model said ----------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, its log-probability, and the most likely alternatives
    at that position (token text -> logprob; includes the chosen token)."""

    token: str
    logprob: float
    top: Mapping[str, float]


@dataclass(frozen=True)
class Generation:
    """A model's answer: the text and, if asked for, one ``TokenLogprob`` per generated token."""

    text: str
    tokens: tuple[TokenLogprob, ...] | None = None

    def token_spans(self) -> tuple[str, list[int]]:
        """The tokens' joined text and each token's start offset in it (logprob-aligned text)."""
        if self.tokens is None:
            raise ValueError("no token log-probabilities")
        starts, at = [], 0
        for t in self.tokens:
            starts.append(at)
            at += len(t.token)
        return "".join(t.token for t in self.tokens), starts


@dataclass(frozen=True)
class JudgeOutput:
    """Scores per dimension (floats), and the raw text they were read from."""

    scores: dict[str, float]
    raw_text: str


@dataclass(frozen=True)
class PairOutput:
    """Pairwise mode: per dimension, (score of video A, score of video B); they sum to 1."""

    scores: dict[str, tuple[float, float]]
    raw_text: str


# ---- errors (no HTTP here; the edge maps them: answer -> 422 per item, upstream -> 503/502) ----


class JudgeError(Exception):
    """Base class of judge failures."""


class JudgeAnswerError(JudgeError):
    """The model answered, but not in the judge's format (missing dimension, out of range, ...)."""

    def __init__(self, judge: str, reason: str, raw_text: str) -> None:
        super().__init__(f"{judge}: {reason}; raw answer: {raw_text[:300]!r}")
        self.judge = judge
        self.reason = reason
        self.raw_text = raw_text


class UpstreamError(JudgeError):
    """The model behind a judge could not be asked."""

    def __init__(
        self, message: str, *, status: int | None = None, attempts: int = 1, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.retry_after_s = retry_after_s  # the upstream's last Retry-After, if it sent one


class UpstreamUnavailable(UpstreamError):
    """Down, overloaded or timing out, still so after the retries (a 503 to our client)."""


class UpstreamRejected(UpstreamError):
    """The upstream refused the request (4xx other than 429) or answered something that is not a
    well-formed chat completion (a configuration error: wrong model name, no logprobs support, too
    many images; or a broken server: an answer past the size cap, logprobs that are not finite
    numbers <= 0 or tokens that are not strings)."""


# ---- a judge = spec + parsers -----------------------------------------------------------------


@dataclass(frozen=True)
class Judge:
    spec: JudgeSpec
    parse: Callable[[Generation], dict[str, float]]
    parse_pair: Callable[[Generation], dict[str, tuple[float, float]]] | None = None


def check_range(judge: str, dim: Dimension, value: float, raw: str) -> float:
    """``value`` if finite and inside the dimension's closed range, else a ``JudgeAnswerError``."""
    if not math.isfinite(value):
        raise JudgeAnswerError(judge, f"{dim.name} is not a finite number", raw)
    if dim.range is not None and not dim.range[0] <= value <= dim.range[1]:
        raise JudgeAnswerError(judge, f"{dim.name} = {value:g} is outside {list(dim.range)}", raw)
    return float(value)
