"""Ranking and GRPO group advantages over one group of rewards (higher is better).

Sums use ``math.fsum`` (exactly rounded), so the results do not depend on the order of the
group: permuting the inputs permutes the outputs and changes nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

StdKind = Literal["sample", "population"]


def order(rewards: Sequence[float]) -> list[int]:
    """Indices best first: by reward descending, equal rewards by index ascending."""
    return sorted(range(len(rewards)), key=lambda i: (-rewards[i], i))


def advantages(rewards: Sequence[float], eps: float = 1e-4, std: StdKind = "sample") -> list[float]:
    """``(r - mean) / (std + eps)`` over the group, as GRPO trainers compute it.

    ``sample`` std divides by n - 1 (torch's ``Tensor.std()``, as in TRL's GRPOTrainer);
    ``population`` divides by n (``np.std``, as in Flow-GRPO's per-prompt tracker). A group whose
    rewards are all equal carries no signal: every advantage is 0 (also when ``eps`` is 0)."""
    n = len(rewards)
    if n < 2:
        raise ValueError("advantages need a group of at least 2 rewards")
    mean = math.fsum(rewards) / n
    deviations = [r - mean for r in rewards]
    if all(r == rewards[0] for r in rewards):
        return [0.0] * n
    # Squares of deviations under ~1e-154 underflow (over ~1e154 overflow): there the sums run in
    # units of the largest deviation, so the spread of different rewards is never 0 or inf. In the
    # usual range the unit is 1 and this is the formula as written.
    largest = max(abs(d) for d in deviations)
    unit = 1.0 if 1e-150 < largest < 1e150 else largest
    spread = math.sqrt(math.fsum((d / unit) ** 2 for d in deviations) / (n - 1 if std == "sample" else n))
    return [(d / unit) / (spread + eps / unit) for d in deviations]
