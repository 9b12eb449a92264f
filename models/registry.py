"""Reward models known to the service: a spec plus a forward function each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from models import signal
from models.spec import ModelSpec

# frames uint8 [B,T,H,W,3], frame counts int [B], prompts (len B) -> float32 [B, K]
Forward = Callable[[torch.Tensor, torch.Tensor, Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class RewardModel:
    spec: ModelSpec
    forward: Forward


def builtin_models() -> dict[str, RewardModel]:
    """The models that ship with the service and need no weights."""
    return {signal.SPEC.name: RewardModel(spec=signal.SPEC, forward=signal.forward)}
