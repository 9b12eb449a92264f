"""One interface for asking a judge, whatever runs the model.

- ``ChatRequest``: what a judge asks of a VLM (system text, images or one video, user text,
  generation parameters, model name), transport-free; ``build_request`` / ``build_pair_request``
  make it from a spec, frames and a prompt.
- ``Runner``: anything with ``async generate(ChatRequest) -> Generation``. Two ship:
  ``service.judge_client.OpenAIChatRunner`` (an OpenAI-compatible server: vLLM, SGLang) and
  ``models.judges.transformers_runner.TransformersRunner`` (in-process Qwen2-VL / Qwen2.5-VL).
- ``judge`` / ``judge_pair``: build, generate, parse -> ``JudgeOutput`` / ``PairOutput``.

Frames are uint8 ``[T, H, W, 3]``, already sampled and resized per the spec (the gateway's
decode stage does that for every model); ``judge_pair`` takes ``spec.pairwise_frames`` of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models.judges.spec import Generation, GenerationParams, Judge, JudgeOutput, JudgeSpec, PairOutput


@dataclass(frozen=True)
class ChatRequest:
    model: str
    text: str
    params: GenerationParams
    system: str | None = None
    images: tuple[np.ndarray, ...] = ()  # each uint8 [H, W, 3], before the text
    video: np.ndarray | None = None  # uint8 [T, H, W, 3], before the text
    video_fps: float | None = None


class Runner(Protocol):
    async def generate(self, request: ChatRequest) -> Generation: ...


def _check_frames(frames: np.ndarray, what: str) -> np.ndarray:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{what}: frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    return frames


def build_request(spec: JudgeSpec, frames: np.ndarray, prompt: str, fps: float | None = None) -> ChatRequest:
    _check_frames(frames, spec.name)
    common: dict[str, Any] = {
        "model": spec.upstream_model,
        "text": spec.render(prompt),
        "params": spec.generation,
        "system": spec.system_prompt,
    }
    if spec.frames_as == "video":
        return ChatRequest(**common, video=frames, video_fps=fps)
    return ChatRequest(**common, images=tuple(frames))


def even_subsample(frames: np.ndarray, n: int) -> np.ndarray:
    """``n`` frames at ``floor(i * T / n)`` (UnifiedReward's pick), all of them if ``T <= n``."""
    total = frames.shape[0]
    if total <= n:
        return frames
    return frames[[i * total // n for i in range(n)]]


def build_pair_request(spec: JudgeSpec, frames_a: np.ndarray, frames_b: np.ndarray, prompt: str) -> ChatRequest:
    """Video A's frames then video B's, as images, then the pairwise text (A is "Video 1")."""
    if not spec.has_pairwise:
        raise ValueError(f"{spec.name} has no pairwise mode")
    assert spec.pairwise_frames is not None  # JudgeSpec._check: a pairwise mode has its frame count
    a = even_subsample(_check_frames(frames_a, f"{spec.name} video A"), spec.pairwise_frames)
    b = even_subsample(_check_frames(frames_b, f"{spec.name} video B"), spec.pairwise_frames)
    return ChatRequest(
        model=spec.upstream_model,
        text=spec.render_pair(prompt),
        params=spec.generation,
        system=spec.system_prompt,
        images=(*a, *b),
    )


async def judge(
    runner: Runner, judge: Judge, frames: np.ndarray, prompt: str = "", fps: float | None = None
) -> JudgeOutput:
    """Score one video: scores per dimension, or ``JudgeAnswerError`` / ``UpstreamError``."""
    generation = await runner.generate(build_request(judge.spec, frames, prompt, fps))
    return JudgeOutput(scores=judge.parse(generation), raw_text=generation.text)


async def judge_pair(
    runner: Runner, judge: Judge, frames_a: np.ndarray, frames_b: np.ndarray, prompt: str = ""
) -> PairOutput:
    """Compare two videos with the judge's pairwise mode: per dimension (A's share, B's share)."""
    if judge.parse_pair is None:
        raise ValueError(f"{judge.spec.name} has no pairwise mode")
    generation = await runner.generate(build_pair_request(judge.spec, frames_a, frames_b, prompt))
    return PairOutput(scores=judge.parse_pair(generation), raw_text=generation.text)
