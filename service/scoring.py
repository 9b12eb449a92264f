"""Scoring math applied after inference: weights, presets, normalisation and the overall score.

Scores are keyed ``model.dimension``. Everything here is pure: plain numbers in, plain numbers
out, errors as ``BadInput`` naming the request field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from models.spec import Dimension, ModelSpec
from service.errors import BadInput, shown

# Larger weights let `overall` overflow to inf (and inf - inf to NaN in comparisons); relative
# weights never need more range than this.
MAX_WEIGHT = 1e6


def dimensions(specs: Sequence[ModelSpec]) -> dict[str, Dimension]:
    """Every ``model.dimension`` key of the given models, in model then column order."""
    return {f"{s.name}.{d.name}": d for s in specs for d in s.dimensions}


def preset_weights(name: str, presets: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The weights of a named preset from configuration."""
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none configured"
        raise BadInput(f"preset: unknown preset {shown(name)}; known: {known}", code="unknown_preset")
    return dict(presets[name])


def models_named(weights: Mapping[str, float]) -> list[str]:
    """Model names used by ``model.dimension`` weight keys, in first-seen order."""
    return list(dict.fromkeys(key.split(".", 1)[0] for key in weights))


def resolve_weights(
    weights: Mapping[str, float] | None, specs: Sequence[ModelSpec], field: str = "weights"
) -> dict[str, float]:
    """Check weights against the models' dimensions. Default: each model's own (not derived)
    dimensions equally, models equally.

    ``field`` names where the weights came from (``weights`` or ``preset 'name'``) in errors."""
    if weights is None:  # derived dimensions (videoalign's Overall) would count their parts twice
        own = {s.name: [d.name for d in s.dimensions if not d.derived] for s in specs}
        return {f"{s.name}.{d}": 1.0 / (len(own[s.name]) * len(specs)) for s in specs for d in own[s.name]}
    known = dimensions(specs)
    for key, value in weights.items():
        if key not in known:
            raise BadInput(f"{field}: unknown dimension {shown(key)}; known: {', '.join(known)}", code="bad_weights")
        if not 0 <= value <= MAX_WEIGHT:  # also refuses NaN
            raise BadInput(
                f"{field}: {shown(key)} must be a number in [0, {MAX_WEIGHT:g}], got {value}", code="bad_weights"
            )
    if not any(weights.values()):
        raise BadInput(f"{field}: at least one weight must be positive", code="bad_weights")
    return dict(weights)


def flatten(raw: Mapping[str, np.ndarray], specs: Sequence[ModelSpec]) -> dict[str, float]:
    """Per-model score vectors (float32 [K]) -> one float per ``model.dimension``."""
    return {f"{s.name}.{d}": float(v) for s in specs for d, v in zip(s.dimension_names, raw[s.name], strict=True)}


def check_normalisable(specs: Sequence[ModelSpec]) -> None:
    """Normalisation needs every requested dimension's mean and std; refuse rather than mix scales."""
    missing = [key for key, d in dimensions(specs).items() if d.mean is None or not d.std]
    if missing:
        raise BadInput(
            f"normalise: no mean/std in the model spec for {', '.join(missing)}; request without normalise",
            code="cannot_normalise",
        )


def normalise(scores: Mapping[str, float], specs: Sequence[ModelSpec]) -> dict[str, float]:
    """``(score - mean) / std`` per dimension, with the spec's population statistics."""
    check_normalisable(specs)
    dims = dimensions(specs)
    return {key: (value - dims[key].mean) / dims[key].std for key, value in scores.items()}  # type: ignore[operator]


def oriented(scores: Mapping[str, float], specs: Sequence[ModelSpec]) -> dict[str, float]:
    """Scores as rewards (higher is better): dimensions marked lower-is-better are negated."""
    dims = dimensions(specs)
    return {key: value if dims[key].higher_is_better else -value for key, value in scores.items()}


def overall(rewards: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted sum of ``model.dimension`` rewards (summed in the weights' order)."""
    return float(sum(w * rewards[key] for key, w in weights.items()))
