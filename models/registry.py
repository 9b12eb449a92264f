"""Reward models known to the service: a spec plus a forward function each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from models import signal
from models.spec import ModelSpec

# frames uint8 [B,T,H,W,3], frame counts int [B], prompts (len B) -> float32 [B, K]
Forward = Callable[[torch.Tensor, torch.Tensor, Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class RewardModel:
    spec: ModelSpec
    forward: Forward


class ModelLoadError(ValueError):
    """A configured model cannot be loaded; the message names the path and what is wrong."""


def builtin_models() -> dict[str, RewardModel]:
    """The models that ship with the service and need no weights."""
    return {signal.SPEC.name: RewardModel(spec=signal.SPEC, forward=signal.forward)}


LOADABLE = ("videoalign", "clip-segmental")  # models loaded from a checkpoint directory


def load_model(name: str, directory: Path, base_dirs: dict[str, Path] | None = None) -> RewardModel:
    """Load one checkpoint-backed model by name from ``directory`` (the gateway and Triton's python
    backend both call this). Raises ModelLoadError naming the path and the problem."""
    module = _loader(name)
    try:
        if name == "videoalign":
            return module.load(Path(directory), base_dirs or {})
        return module.load(Path(directory))
    except ValueError as exc:  # the loaders' CheckpointError
        raise ModelLoadError(f"{name}: {exc}") from exc


def load_spec(name: str, directory: Path) -> RewardModel:
    """Only the spec of a checkpoint-backed model, for a gateway whose backend (Triton) holds the
    weights: nothing large is read. Its forward refuses to run."""
    try:
        spec = _loader(name).read_spec(Path(directory))
    except ValueError as exc:
        raise ModelLoadError(f"{name}: {exc}") from exc

    def forward(frames: torch.Tensor, num_frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise RuntimeError(f"{name}: loaded without weights (spec only); its forward runs in the backend")

    return RewardModel(spec=spec, forward=forward)


def _loader(name: str):
    if name == "videoalign":
        from models import videoalign

        return videoalign
    if name == "clip-segmental":
        from models import clip_segmental

        return clip_segmental
    raise ModelLoadError(f"{name}: not a checkpoint-backed model (known: {', '.join(LOADABLE)})")


def load_models(
    names: Sequence[str], dirs: dict[str, Path], base_dirs: dict[str, Path] | None = None, *, weights: bool = True
) -> dict[str, RewardModel]:
    """Load the checkpoint-backed models among ``names``; each needs an entry in ``dirs``.
    ``weights=False`` reads only their specs (see ``load_spec``)."""
    out: dict[str, RewardModel] = {}
    for name in names:
        if name not in LOADABLE:
            continue  # built in, or unknown (the caller reports it)
        if name not in dirs:
            raise ModelLoadError(f"{name}: no checkpoint directory configured (set VRS_MODEL_DIRS='{{\"{name}\": \"/path\"}}')")
        out[name] = load_model(name, dirs[name], base_dirs) if weights else load_spec(name, dirs[name])
    return out
