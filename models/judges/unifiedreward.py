"""UnifiedReward-2.0 (CodeGoat24/UnifiedReward, Qwen-VL based) as a judge, for generated videos.

Facts from the authors' ``inference_qwen/UnifiedReward-2.0-inference`` scripts and
``vllm_qwen/vllm_request.py`` (their client for ``vllm serve ... --served-model-name UnifiedReward``):

- pointwise: 16 frames as 16 JPEG images (quality 95, frame ``int(i * total / 16)``), then the
  text below; the answer is "Alignment Score (1-5): X / Physics Score (1-5): Y / Style Score
  (1-5): Z" with X, Y, Z floats (their example: 2.4036, 3.0987, 3.3889);
- pairwise: 8 frames of video 1 then 8 frames of video 2 (16 images in one message), then the
  pairwise text; the answer gives, for Alignment, Coherence and Style, "Video 1: a / Video 2: b"
  with a + b = 1 (relative scores). Note the pairwise dimensions are not the pointwise ones
  (Coherence instead of Physics).

Frames are taken where the authors' script takes them (``spacing="stride"``: ``int(i * T / n)``,
n = 16, and 8 per video pairwise). Decoding is greedy (temperature 0).
"""

from __future__ import annotations

import re

from models.judges import parsing
from models.judges.spec import Generation, GenerationParams, Judge, JudgeAnswerError, JudgeSpec, check_range
from models.spec import Dimension, FrameSampling, Resolution

NAME = "unifiedreward"

POINTWISE_TEMPLATE = (
    "You are presented with a generated video and its associated text caption. "
    "Your task is to analyze the video across multiple dimensions in relation to the caption. Specifically:\n"
    "Provide overall assessments for the video along the following axes (each rated from 1 to 5):\n"
    "- Alignment Score: How well the video matches the caption in terms of content.\n"
    "- Physics Score: How well the gravity, movements, collisions, and interactions make physical sense.\n"
    "- Style Score: How visually appealing the video looks, regardless of caption accuracy.\n\n"
    "Output your evaluation using the format below:\n\n"
    "Alignment Score (1-5): X\n"
    "Physics Score (1-5): Y\n"
    "Style Score (1-5): Z\n\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{prompt}]"
)

PAIRWISE_TEMPLATE = (
    "You are presented with two generated videos (Video 1 and Video 2) along with a shared text caption. "
    "Your task is to comparatively evaluate the two videos across three specific dimensions:\n\n"
    "- Alignment Score: How well each video matches the caption in terms of content.\n"
    "- Coherence Score: How logically consistent and visually coherent each video is (absence of visual glitches, distorted objects, etc.).\n"
    "- Style Score: How aesthetically appealing each video is, regardless of caption accuracy.\n\n"
    "For each dimension, you must assign a relative score to Video 1 and Video 2, such that:\n"
    "- Each score is a float between 0 and 1 (inclusive).\n"
    "- The scores for Video 1 and Video 2 must sum to exactly 1.0 for each dimension.\n"
    "- The higher the score, the better that video is in the corresponding dimension *relative to the other*.\n\n"
    "This format emphasizes comparative quality rather than absolute evaluation.\n\n"
    "Please provide your evaluation in the format below:\n\n"
    "Alignment Score:\n"
    " Video 1: X\n"
    " Video 2: Y\n\n"
    "Coherence Score:\n"
    " Video 1: X\n"
    " Video 2: Y\n\n"
    "Style Score:\n"
    " Video 1: X\n"
    " Video 2: Y\n\n"
    "Your task is provided as follows:\n"
    "Text Caption: [{prompt}]"
)

_NUMBER = r"([-+]?\d*\.?\d+)"
POINTWISE_LABELS = (("alignment", "Alignment"), ("physics", "Physics"), ("style", "Style"))
PAIRWISE_LABELS = (("alignment", "Alignment"), ("coherence", "Coherence"), ("style", "Style"))
_POINT = {
    d: re.compile(rf"\b{label}(?:\s+Score)?(?:\s*\(1-5\))?\s*:\s*{_NUMBER}", re.IGNORECASE)
    for d, label in POINTWISE_LABELS
}
_PAIR = {
    d: re.compile(rf"\b{label}\s+Score\s*:\s*Video\s*1\s*:\s*{_NUMBER}\s*,?\s*Video\s*2\s*:\s*{_NUMBER}", re.IGNORECASE)
    for d, label in PAIRWISE_LABELS
}
SUM_TOLERANCE = 0.02  # |a + b - 1| allowed before the pair is rejected (the model writes 4 decimals)


def make_spec(upstream_model: str = "UnifiedReward") -> JudgeSpec:
    return JudgeSpec(
        name=NAME,
        version="2.0",
        description="UnifiedReward-2.0: pointwise Alignment/Physics/Style 1-5 (floats); pairwise relative scores summing to 1.",
        upstream_model=upstream_model,
        dimensions=(
            Dimension(name="alignment", description="matches the caption (1-5)", range=(1.0, 5.0)),
            Dimension(
                name="physics", description="gravity, movements, collisions make physical sense (1-5)", range=(1.0, 5.0)
            ),
            Dimension(name="style", description="visually appealing regardless of the caption (1-5)", range=(1.0, 5.0)),
        ),
        frames_as="images",
        sampling=FrameSampling(mode="count", count=16, min_frames=1, max_frames=16, spacing="stride"),
        # Frames go at source size; this is the Qwen2.5-VL image processor's own cap.
        resolution=Resolution(max_pixels=16384 * 28 * 28, min_pixels=4 * 28 * 28, size_factor=28, filter="bicubic"),
        prompt_template=POINTWISE_TEMPLATE,
        pairwise_template=PAIRWISE_TEMPLATE,
        pairwise_dimensions=(
            Dimension(name="alignment", description="relative caption match, video A's share (0-1)", range=(0.0, 1.0)),
            Dimension(
                name="coherence",
                description="relative coherence (no glitches), video A's share (0-1)",
                range=(0.0, 1.0),
            ),
            Dimension(name="style", description="relative aesthetics, video A's share (0-1)", range=(0.0, 1.0)),
        ),
        pairwise_frames=8,
        generation=GenerationParams(temperature=0.0, max_tokens=4096, top_logprobs=0),
    )


def make(upstream_model: str = "UnifiedReward") -> Judge:
    spec = make_spec(upstream_model)
    dims = {d.name: d for d in spec.dimensions}
    assert spec.pairwise_dimensions is not None  # make_spec gives the pairwise mode
    pair_dims = {d.name: d for d in spec.pairwise_dimensions}

    def parse(generation: Generation) -> dict[str, float]:
        raw = generation.text
        start = parsing.answer_start(NAME, raw)
        scores = {}
        for dim, label in POINTWISE_LABELS:
            match = _POINT[dim].search(raw, start)
            if match is None:
                raise JudgeAnswerError(NAME, f"no '{label} Score (1-5): <score>' in the answer", raw)
            scores[dim] = check_range(NAME, dims[dim], float(match.group(1)), raw)
        return scores

    def parse_pair(generation: Generation) -> dict[str, tuple[float, float]]:
        raw = generation.text
        start = parsing.answer_start(NAME, raw)
        scores = {}
        for dim, label in PAIRWISE_LABELS:
            match = _PAIR[dim].search(raw, start)
            if match is None:
                raise JudgeAnswerError(NAME, f"no '{label} Score: Video 1: <a> Video 2: <b>' in the answer", raw)
            a = check_range(NAME, pair_dims[dim], float(match.group(1)), raw)
            b = check_range(NAME, pair_dims[dim], float(match.group(2)), raw)
            if abs(a + b - 1.0) > SUM_TOLERANCE:
                raise JudgeAnswerError(NAME, f"{label}: relative scores {a:g} + {b:g} do not sum to 1", raw)
            scores[dim] = (a / (a + b), b / (a + b))
        return scores

    return Judge(spec=spec, parse=parse, parse_pair=parse_pair)
