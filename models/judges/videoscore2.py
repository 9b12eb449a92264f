"""VideoScore2 (TIGER-Lab/VideoScore2, Qwen2.5-VL-7B; paper arXiv 2509.22799) as a judge.

Facts from the authors' inference script (``vs2_inference.py``) and eval code
(``eval/eval_methods/vs2_float*.py``):

- input: the video at 2 fps through qwen-vl-utils (a video, not images), then the user text below
  (their template, verbatim: indentation and trailing spaces included; no system prompt);
- output: "visual quality: v; text-to-video alignment: t, physical/common-sense consistency: p",
  integers 1-5, possibly after reasoning; a score is the first number after its label;
- soft score: at the token of each score digit, the probabilities of the tokens "1".."5",
  renormalised over those five; ``soft="expectation"`` returns sum(s * p_s) (their weighted
  variant, ``vs2_float_weighted.py``), ``soft="normed"`` returns argmax_s * p_max / sum(p) (the
  variant their model card prints). Without log-probabilities the integer scores are returned.

Differences, on purpose: decoding is greedy (temperature 0; the authors sample at 0.7), so a
score is reproducible and cacheable; an answer after ``</think>`` is read from there on.
"""

from __future__ import annotations

import re
from typing import Literal

from models.judges import parsing
from models.judges.spec import Generation, GenerationParams, Judge, JudgeAnswerError, JudgeSpec, check_range
from models.spec import Dimension, FrameSampling, Resolution

NAME = "videoscore2"

PROMPT_TEMPLATE = (
    "\n"
    "    You are an expert for evaluating AI-generated videos from three dimensions:\n"
    "    (1) visual quality \u2013 clarity, smoothness, artifacts;\n"
    "    (2) text-to-video alignment \u2013 fidelity to the prompt;\n"
    "    (3) physical/common-sense consistency \u2013 naturalness and physics plausibility.\n"
    "\n"
    "    Video prompt: {prompt}\n"
    "\n"
    "    Please output in this format:\n"
    "    visual quality: <v_score>; \n"
    "    text-to-video alignment: <t_score>, \n"
    "    physical/common-sense consistency: <p_score>\n"
    "    "
)

# (dimension, label in the answer)
LABELS = (
    ("visual_quality", "visual quality"),
    ("text_alignment", "text-to-video alignment"),
    ("physical_consistency", "physical/common-sense consistency"),
)
_PATTERNS = {dim: re.compile(re.escape(label) + r"\s*:\s*([-+]?\d+(?:\.\d+)?)", re.IGNORECASE) for dim, label in LABELS}
_DIGITS = parsing.digit_values(1, 5)


def make_spec(upstream_model: str = "TIGER-Lab/VideoScore2", top_logprobs: int = 20) -> JudgeSpec:
    return JudgeSpec(
        name=NAME,
        version="2025-10",
        description="VideoScore2: Qwen2.5-VL-7B judge; three integer scores 1-5, soft scores from the digit probabilities.",
        upstream_model=upstream_model,
        dimensions=(
            Dimension(name="visual_quality", description="clarity, smoothness, artifacts (1-5)", range=(1.0, 5.0)),
            Dimension(name="text_alignment", description="fidelity to the prompt (1-5)", range=(1.0, 5.0)),
            Dimension(
                name="physical_consistency", description="physical/common-sense plausibility (1-5)", range=(1.0, 5.0)
            ),
        ),
        frames_as="video",
        # qwen-vl-utils' video defaults at fps 2: [4, 768] frames, an even count rounded down (the
        # authors install qwen-vl-utils unpinned; 0.0.10 and later floor, 0.0.8 rounded to nearest).
        sampling=FrameSampling(mode="fps", fps=2.0, min_frames=4, max_frames=768, multiple_of=2, rounding="floor"),
        resolution=Resolution(max_pixels=768 * 28 * 28, min_pixels=128 * 28 * 28, size_factor=28, filter="bicubic"),
        prompt_template=PROMPT_TEMPLATE,
        generation=GenerationParams(temperature=0.0, max_tokens=1024, top_logprobs=top_logprobs),
    )


def make(
    upstream_model: str = "TIGER-Lab/VideoScore2",
    soft: Literal["expectation", "normed"] = "expectation",
    top_logprobs: int = 20,
) -> Judge:
    spec = make_spec(upstream_model, top_logprobs)
    dims = {d.name: d for d in spec.dimensions}

    def parse(generation: Generation) -> dict[str, float]:
        raw = generation.text
        soft_scores = generation.tokens is not None
        text, starts = generation.token_spans() if soft_scores else (raw, [])
        start = parsing.answer_start(NAME, text)
        scores = {}
        for dim, label in LABELS:
            match = _PATTERNS[dim].search(text, start)
            if match is None:
                raise JudgeAnswerError(NAME, f"no '{label}: <score>' in the answer", raw)
            hard = check_range(NAME, dims[dim], float(match.group(1)), raw)
            if not soft_scores or not hard.is_integer():
                scores[dim] = hard
                continue
            assert generation.tokens is not None  # soft_scores
            top = generation.tokens[parsing.token_at(starts, match.start(1))].top
            mass = parsing.probabilities(top, _DIGITS)
            parsing.require_positive_mass(NAME, mass, f"digit 1-5 at '{label}'", raw)
            if soft == "expectation":
                scores[dim] = parsing.expectation(mass)
            else:
                best = max(mass, key=mass.__getitem__)
                scores[dim] = best * mass[best] / sum(mass.values())
        return scores

    return Judge(spec=spec, parse=parse)
