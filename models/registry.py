"""Reward models known to the service: a spec plus a forward function each.

Checkpoint-backed models are found through ``FAMILIES``, a table from model name to the module
that loads it; every loader has the same signature ``load(directory, base_dirs, placement)``
and puts its weights on ``placement`` (device and dtype, models/placement.py), the way a
LitServe ``setup(device)`` is handed its device by the server.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models import signal
from models.placement import CPU, Placement
from models.spec import ModelSpec

# frames uint8 [B,T,H,W,3], frame counts int [B], prompts (len B) -> float32 [B, K]
Forward = Callable[[torch.Tensor, torch.Tensor, Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class Stages:
    """A forward split for pipelining: ``pre`` is host work (tokenisation, index tensors) that may
    run while the device still runs the previous batch's ``core``; ``forward == core(pre(...))``."""

    pre: Callable[[torch.Tensor, torch.Tensor, Sequence[str]], Any]
    core: Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class RewardModel:
    spec: ModelSpec
    forward: Forward
    placement: Placement = field(default=CPU)
    stages: Stages | None = None  # None: forward is one stage


class ModelLoadError(ValueError):
    """A configured model cannot be loaded; the message names the path and what is wrong."""


def builtin_models() -> dict[str, RewardModel]:
    """The models that ship with the service and need no weights (``signal`` runs where its frames are)."""
    return {signal.SPEC.name: RewardModel(spec=signal.SPEC, forward=signal.forward)}


# Model name -> module with ``load(directory, base_dirs, placement)`` and ``read_spec(directory)``.
FAMILIES: dict[str, str] = {
    "videoalign": "models.videoalign",
    "clip-segmental": "models.clip_segmental",
}
LOADABLE = tuple(FAMILIES)  # models loaded from a checkpoint directory


def load_model(
    name: str, directory: Path, base_dirs: dict[str, Path] | None = None, placement: Placement = CPU
) -> RewardModel:
    """Load one checkpoint-backed model by name from ``directory`` onto ``placement`` (the gateway
    and Triton's python backend both call this). Raises ModelLoadError naming the path and the problem."""
    try:
        return _family(name).load(Path(directory), base_dirs or {}, placement)
    except ValueError as exc:  # the loaders' CheckpointError
        raise ModelLoadError(f"{name}: {exc}") from exc


def load_spec(name: str, directory: Path) -> RewardModel:
    """Only the spec of a checkpoint-backed model, for a gateway whose backend (Triton) holds the
    weights: nothing large is read. Its forward refuses to run."""
    try:
        spec = _family(name).read_spec(Path(directory))
    except ValueError as exc:
        raise ModelLoadError(f"{name}: {exc}") from exc

    def forward(frames: torch.Tensor, num_frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise RuntimeError(f"{name}: loaded without weights (spec only); its forward runs in the backend")

    return RewardModel(spec=spec, forward=forward)


def _family(name: str):
    if name not in FAMILIES:
        raise ModelLoadError(f"{name}: not a checkpoint-backed model (known: {', '.join(LOADABLE)})")
    return importlib.import_module(FAMILIES[name])


def load_models(
    names: Sequence[str],
    dirs: dict[str, Path],
    base_dirs: dict[str, Path] | None = None,
    *,
    weights: bool = True,
    placement: Placement = CPU,
) -> dict[str, RewardModel]:
    """Load the checkpoint-backed models among ``names`` onto ``placement``; each needs an entry in
    ``dirs``. ``weights=False`` reads only their specs (see ``load_spec``)."""
    out: dict[str, RewardModel] = {}
    for name in names:
        if name not in LOADABLE:
            continue  # built in, or unknown (the caller reports it)
        if name not in dirs:
            raise ModelLoadError(
                f'{name}: no checkpoint directory configured (set VRS_MODEL_DIRS=\'{{"{name}": "/path"}}\')'
            )
        out[name] = load_model(name, dirs[name], base_dirs, placement) if weights else load_spec(name, dirs[name])
    return out
