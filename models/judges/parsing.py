"""Pure helpers shared by the judges' parsers: where the answer starts, which token holds a
character, and probabilities read from top-k log-probabilities.

Alternatives the upstream did not return (outside the top k) count as probability 0; the error
this makes is below exp(the k-th logprob) per missing alternative, negligible with k = 20 for
the confident answers these judges give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from models.judges.spec import JudgeAnswerError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def answer_start(judge: str, text: str) -> int:
    """Offset where the final answer starts: after the last ``</think>`` (reasoning judges think
    first, and the reasoning may quote score lines), else 0. An unclosed ``<think>`` means the
    answer never came (usually max_tokens ran out)."""
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        return close + len(THINK_CLOSE)
    if THINK_OPEN in text:
        raise JudgeAnswerError(judge, "the answer ends inside an unclosed <think> block (max_tokens too small?)", text)
    return 0


def token_at(starts: list[int], offset: int) -> int:
    """Index of the token whose text covers character ``offset`` (``starts`` ascending)."""
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo


def probabilities(top: Mapping[str, float], values: Mapping[str, float], strip: bool = True) -> dict[float, float]:
    """Probability mass per value among the alternatives ``top`` (token -> logprob), where a token
    counts for value ``values[token]`` (``values[token.strip()]`` with ``strip``: then tokens that
    differ only by surrounding spaces add up)."""
    mass: dict[float, float] = {}
    for token, logprob in top.items():
        value = values.get(token.strip() if strip else token)
        if value is not None:
            mass[value] = mass.get(value, 0.0) + math.exp(logprob)
    return mass


def expectation(mass: Mapping[float, float]) -> float:
    """E[value] under the masses, renormalised to sum 1."""
    total = sum(mass.values())
    return sum(v * p for v, p in mass.items()) / total


def digit_values(lo: int, hi: int) -> dict[str, float]:
    return {str(d): float(d) for d in range(lo, hi + 1)}


def require_positive_mass(judge: str, mass: Mapping[float, float], what: str, raw: str) -> None:
    if not mass or sum(mass.values()) <= 0.0:
        raise JudgeAnswerError(judge, f"no probability for any {what} among the returned top log-probabilities", raw)
