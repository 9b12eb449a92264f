"""The reward formulas on embeddings, separate from CLIP so they can be tested by hand.

All embeddings are L2-normalised before they get here.
"""

from __future__ import annotations

import torch


def tsn_indices(frames: int, segments: int) -> list[int]:
    """InstructVideo's frame choice for a clip of ``frames`` frames: S segments of ``frames // S``
    frames each, the first frame of each (its deterministic ``fixed_first`` selection; in training
    its TSN option draws a random frame inside each segment instead)."""
    span = frames // segments
    if span < 1:
        raise ValueError(f"{frames} frames cannot be split into {segments} segments")
    return [s * span for s in range(segments)]


def temporally_attenuated_weights(indices: list[int], frames: int, lam: float = 1.0) -> torch.Tensor:
    """InstructVideo's temporally attenuated reward weights ``exp(-lambda * |i - F // 2|)``, with
    ``i`` the chosen frames' indices and ``F`` the clip's frame count: distances in frames."""
    return torch.exp(-lam * (torch.tensor(indices, dtype=torch.float32) - frames // 2).abs())


def segmental(image: torch.Tensor, text: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over segments of ``w_s * (image_s . text)``: image [S, D], text [D], weights [S] -> scalar."""
    return (weights.to(image) * (image @ text)).mean()


def goal_baseline_projection(goal: torch.Tensor, baseline: torch.Tensor, alpha: float) -> torch.Tensor:
    """VLM-RM's ``P = alpha * d d^T / |d|^2 + (1 - alpha) I`` with ``d = g - b`` (g, b: [D])."""
    d = goal - baseline
    eye = torch.eye(d.shape[0], dtype=d.dtype, device=d.device)
    return alpha * torch.outer(d, d) / d.dot(d) + (1.0 - alpha) * eye


def goal_baseline(image: torch.Tensor, goal: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """VLM-RM's ``R = 1 - 0.5 * |(x - g) P|^2`` per frame (image [N, D]) -> [N]."""
    return 1.0 - 0.5 * ((image - goal) @ projection).pow(2).sum(-1)


def temporal_consistency(image: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of consecutive frame embeddings (image [S, D]); 1 for a single frame."""
    if image.shape[0] < 2:
        return image.new_tensor(1.0)
    return (image[1:] * image[:-1]).sum(-1).mean()
