"""Yes/no judges: a reward = P(answer) from the logits of the two answer tokens.

The preset is Cosmos-Reason1-7B-Reward as NVIDIA's cosmos-rl reward service runs it
(``reward_service/cosmos_rl_reward/model/cosmos_reason1.py``): its training system prompt
(verbatim below), the user question "Does the video contain any anomalies or artifacts?", the
video as frames (a video, not images), and one forward pass: at the first answer position,
softmax over the two logits of the tokens "Yes" and "No"; the reward is P("No"), i.e. the
probability that the video has no anomaly.

Here the same number comes from the first generated token's top log-probabilities
(``max_tokens=1``): log-softmax over the whole vocabulary shifts both logits by the same
constant, so the two-way softmax of the logprobs equals the two-way softmax of the logits.
Question, system prompt, answer tokens and which answer is rewarded are parameters of ``make``.
Without log-probabilities (a text-only upstream) the score is hard: 1.0 or 0.0 from the first word.

Frames as that service takes them (``_process_video_inputs``): every k-th frame from the first,
k = (T - 1) // 160 + 1, an even count (the last dropped if odd: temporal patch 2), and 9216
visual tokens for the whole clip, so each of n frames gets at most 9216 * 28 * 28 * 2 // n pixels
(and at least 16 tokens' worth), bicubic.
"""

from __future__ import annotations

import re

from models.judges import parsing
from models.judges.spec import Generation, GenerationParams, Judge, JudgeAnswerError, JudgeSpec
from models.spec import Dimension, FrameSampling, Resolution

NAME = "yes-no"

COSMOS_SYSTEM_PROMPT = """You are a helpful video analyzer. The goal is to identify artifacts and anomalies in the video. Watch carefully and focus on the following aspects:

* Gravity (e.g. a ball cannot fly in the air)
* Collision (e.g. two objects cannot penetrate each other)
* Object interaction (e.g. an object cannot move without any apparent reason)
* Fluid dynamics (e.g. a liquid cannot flow through a solid object)
* Object permanence (e.g. an object cannot suddenly appear, disappear or change its shape)
* Common sense (e.g. an object should be functional and useful)
* Cause-and-effect (e.g. a door cannot open without any apparent reason)
* Human motion (e.g. a person's body cannot morph and the joints cannot move in impossible ways)

Here are some examples of non-artifacts you should not include in your analysis:

* Being an animated video, such as a cartoon, does not automatically make it artifacts.
* The video has no sound. Do not make any conclusions based on sound.
* Ignore any lighting, shadows, blurring, and camera effects.
* Avoid judging based on overall impression, artistic style, or background elements.

Begin your response with a single word: "Yes" or "No"."""

COSMOS_QUESTION = "Does the video contain any anomalies or artifacts?"
CLIP_PIXELS = 9216 * 28 * 28 * 2  # 9216 visual tokens of 28x28 pixels over 2 frames each
_FIRST_WORD = re.compile(r"[\s\W]*(yes|no)\b", re.IGNORECASE)


def make(
    question: str = COSMOS_QUESTION,
    system_prompt: str | None = COSMOS_SYSTEM_PROMPT,
    rewarded: str = "No",
    answers: tuple[str, str] = ("Yes", "No"),
    dimension: str = "no_anomaly",
    upstream_model: str = "nvidia/Cosmos-Reason1-7B-Reward",
    top_logprobs: int = 20,
    version: str = "cosmos-reason1-reward",
) -> Judge:
    """A yes/no judge. ``question`` may contain ``{prompt}`` (then the request's prompt is needed);
    the score is P(``rewarded``) with P taken over the two ``answers`` tokens only."""
    if rewarded not in answers:
        raise ValueError(f"rewarded answer {rewarded!r} is not one of {answers}")
    spec = JudgeSpec(
        name=NAME,
        version=version,
        description=f"P({rewarded!r}) over the tokens {answers} in answer to: {question}",
        upstream_model=upstream_model,
        dimensions=(Dimension(name=dimension, description=f"P({rewarded!r}) to {question!r}", range=(0.0, 1.0)),),
        frames_as="video",
        sampling=FrameSampling(mode="count", count=160, min_frames=2, max_frames=160, multiple_of=2, spacing="every"),
        resolution=Resolution(
            max_pixels=CLIP_PIXELS,
            clip_pixels=CLIP_PIXELS,
            min_pixels=16 * 28 * 28 * 2,
            size_factor=28,
            filter="bicubic",
        ),
        system_prompt=system_prompt,
        prompt_template=question,
        needs_prompt="{prompt}" in question,
        generation=GenerationParams(temperature=0.0, max_tokens=1, top_logprobs=top_logprobs),
    )
    values = {answers[0]: float(answers[0] == rewarded), answers[1]: float(answers[1] == rewarded)}
    words = {a.lower() for a in answers}

    def parse(generation: Generation) -> dict[str, float]:
        raw = generation.text
        if generation.tokens is None:
            match = _FIRST_WORD.match(raw, parsing.answer_start(NAME, raw))
            if match is None or match.group(1).lower() not in words:
                raise JudgeAnswerError(NAME, f"the answer does not begin with {answers[0]!r} or {answers[1]!r}", raw)
            word = next(a for a in answers if a.lower() == match.group(1).lower())
            return {dimension: values[word]}
        text, starts = generation.token_spans()
        start = parsing.answer_start(NAME, text)
        at = next(
            (i for i, t in enumerate(generation.tokens) if starts[i] >= start and t.token.strip()), None
        )  # the first non-blank answer token
        if at is None:
            raise JudgeAnswerError(NAME, "empty answer", raw)
        mass = parsing.probabilities(generation.tokens[at].top, values, strip=False)  # exact tokens, as the reference
        parsing.require_positive_mass(NAME, mass, f"of the answers {answers}", raw)
        return {dimension: mass.get(1.0, 0.0) / sum(mass.values())}

    return Judge(spec=spec, parse=parse)
