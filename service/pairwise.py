"""Preference probabilities between two rewards under a model's pairwise spec.

- Bradley-Terry: ``P(A>B) = sigmoid(rA - rB)``; no ties.
- Rao-Kupper with ``theta >= 1`` (Bradley-Terry with ties), with ``p = exp(r)``:
  ``P(A>B) = pA / (pA + theta pB) = sigmoid(rA - rB - ln theta)``, symmetrically for B, and
  ``P(tie) = 1 - P(A>B) - P(B>A) = (theta^2 - 1) P(A>B) P(B>A)``. Equal rewards give
  ``P(tie) = (theta - 1)/(theta + 1)`` and ``1/(theta + 1)`` to each side. ``theta = 1`` is Bradley-Terry.
- Judge: a judge that compared the two videos itself gave relative scores (A's and B's shares of
  1); ``P(A>B) = rA / (rA + rB)``, no ties. Rewards that are not shares (a weighted overall of
  shares) are renormalised the same way.

The winner is the most probable outcome; when the top probability is shared (equal rewards
under Bradley-Terry), the winner is ``tie``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from models.spec import Pairwise

Winner = Literal["a", "b", "tie"]
BRADLEY_TERRY = Pairwise(model="bradley-terry", theta=1.0)


@dataclass(frozen=True)
class Preference:
    """Outcome probabilities of comparing A with B (they sum to 1) and the most probable outcome."""

    p_a_over_b: float
    p_b_over_a: float
    p_tie: float
    winner: Winner


def sigmoid(x: float) -> float:
    """Logistic function, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def theta(spec: Pairwise) -> float:
    """The tie parameter in effect: the spec's for Rao-Kupper, 1 for Bradley-Terry."""
    return spec.theta if spec.model == "rao-kupper" else 1.0


def prefer(reward_a: float, reward_b: float, spec: Pairwise) -> Preference:
    """P(A>B), P(B>A), P(tie) and the winner for two rewards (higher is better)."""
    if spec.model == "judge":
        total = reward_a + reward_b
        p_a = reward_a / total if total > 0 else 0.5
        return Preference(p_a, 1.0 - p_a, 0.0, _winner(p_a, 1.0 - p_a, 0.0))
    theta_ = theta(spec)
    shift = math.log(theta_)
    p_a = sigmoid(reward_a - reward_b - shift)
    p_b = sigmoid(reward_b - reward_a - shift)
    p_tie = (theta_ * theta_ - 1.0) * p_a * p_b
    return Preference(p_a, p_b, p_tie, _winner(p_a, p_b, p_tie))


def _winner(p_a: float, p_b: float, p_tie: float) -> Winner:
    top = max(p_a, p_b, p_tie)
    if p_a == top and p_b != top and p_tie != top:
        return "a"
    if p_b == top and p_a != top and p_tie != top:
        return "b"
    return "tie"


def shared_spec(specs: Sequence[Pairwise]) -> Pairwise:
    """The pairwise spec for a weighted overall: the models' own spec when they all share one,
    else Bradley-Terry (no tie model is defensible across models trained with different thetas)."""
    first = specs[0]
    return first if all(s == first for s in specs) else BRADLEY_TERRY
