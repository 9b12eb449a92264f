"""Scoring math applied after inference: weighted overall scores."""

from __future__ import annotations

import math

from models.spec import ModelSpec
from service.errors import BadInput


def resolve_weights(weights: dict[str, float] | None, specs: list[ModelSpec]) -> dict[str, float]:
    """Weights keyed ``model.dimension``. Default: each model's dimensions equally, models equally."""
    if weights is None:
        return {f"{s.name}.{d}": 1.0 / (len(s.dimensions) * len(specs)) for s in specs for d in s.dimension_names}
    known = {f"{s.name}.{d}" for s in specs for d in s.dimension_names}
    for key, value in weights.items():
        if key not in known:
            raise BadInput(f"weights: unknown dimension {key!r}; known: {', '.join(sorted(known))}", code="bad_weights")
        if not math.isfinite(value) or value < 0:
            raise BadInput(f"weights: {key!r} must be a finite number >= 0, got {value}", code="bad_weights")
    if not any(weights.values()):
        raise BadInput("weights: at least one weight must be positive", code="bad_weights")
    return dict(weights)


def overall(scores: dict[str, float], weights: dict[str, float]) -> float:
    """Weighted sum of ``model.dimension`` scores."""
    return float(sum(w * scores[key] for key, w in weights.items()))
