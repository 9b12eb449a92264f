"""``VRS_COMPILE``: how a model's forward is compiled where it runs in torch.

- ``none``: eager torch.
- ``inductor``: ``torch.compile`` (Inductor) of the model's device work (its ``core`` stage, or
  its whole forward for a one-stage model), in the in-process backend and in Triton's python
  backend. On CUDA it uses ``mode="reduce-overhead"`` (CUDA graphs: one graph per input shape,
  replayed), on CPU the default mode. ``warm_up`` runs every batch size 1..max_batch_size once on
  the smallest clip the spec allows, before the first request, so no request pays for
  compilation or graph capture at those shapes; it then runs one more, longer and wider clip, so
  the frame axes are compiled as dynamic during warm-up too and a new frame size does not
  recompile (on CUDA it records one more graph).
- ``tensorrt``: engines in Triton (models/export.py, models/tensorrt_build.py); the gateway sends
  the plan contract (token ids, no strings). Not a torch mode: in-process serving refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
import torch

from models.registry import RewardModel, Stages

Compile = Literal["none", "inductor", "tensorrt"]
WARMUP_PROMPT = "a video"


def compiled(model: RewardModel, device: torch.device | str = "cpu") -> RewardModel:
    """The model with its device work under torch.compile (CUDA graphs on a CUDA device).

    A staged model (models.registry.Stages) has only its ``core`` compiled: ``pre`` (tokenisation,
    host index tensors) stays eager, outside the graph, and keeps overlapping the previous batch's
    ``core`` in the in-process backend. A one-stage model has its whole forward compiled."""
    mode = "reduce-overhead" if str(device).startswith("cuda") else None
    if model.stages is None:
        return replace(model, forward=torch.compile(model.forward, mode=mode))
    pre, core = model.stages.pre, torch.compile(model.stages.core, mode=mode)

    def forward(frames: torch.Tensor, num_frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return core(pre(frames, num_frames, prompts))

    return replace(model, forward=forward, stages=Stages(pre, core))


def warm_up(
    model: RewardModel, batch_sizes: range | list[int] | None = None, seed: int = 0, device: torch.device | str = "cpu"
) -> list[int]:
    """Run the forward once per batch size (default 1..the spec's max batch size) on a random clip
    of the smallest shape the spec allows, on ``device``, where served batches arrive (compiled code
    guards on the device: CPU clips would leave a CUDA model to compile again on its first requests);
    returns the batch sizes run."""
    from models.triton_repo import warmup_shape

    spec = model.spec
    frames, side = warmup_shape(spec)
    sizes = list(batch_sizes or range(1, spec.batching.max_batch_size + 1))
    # A second clip, longer and wider: the frame axes then recompile once as dynamic here, not on
    # the first request of a new size.
    factor = max(spec.resolution.size_factor, 1)
    longer = min(frames + max(spec.sampling.multiple_of, 1), spec.sampling.max_frames)
    wider = side + factor if (side + factor) * side <= spec.resolution.max_pixels else side
    rng = np.random.default_rng(seed)
    for b, (t, h, w) in [*((b, (frames, side, side)) for b in sizes), (sizes[-1], (longer, side, wider))]:
        clip = torch.from_numpy(rng.integers(0, 256, (b, t, h, w, 3), dtype=np.uint8)).to(device)
        with torch.inference_mode():
            model.forward(clip, torch.full((b,), t, dtype=torch.int32), [WARMUP_PROMPT] * b)
    return sizes


def prepare(
    models: dict[str, RewardModel], mode: Compile, device: torch.device | str = "cpu", max_batch_size: int | None = None
) -> dict[str, RewardModel]:
    """Apply ``mode`` to the models that run in torch here, warmed up; ``tensorrt`` is refused."""
    if mode == "tensorrt":
        raise ValueError(
            "VRS_COMPILE=tensorrt runs engines in Triton: set VRS_BACKEND=triton (see README 'Compiled models')"
        )
    if mode == "none":
        return models
    out = {}
    for name, model in models.items():
        model = compiled(model, device)
        warm_up(model, range(1, (max_batch_size or model.spec.batching.max_batch_size) + 1), device=device)
        out[name] = model
    return out
