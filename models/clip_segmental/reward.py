"""The reward formulas on embeddings, separate from CLIP so they can be tested by hand.

All embeddings are L2-normalised before they get here.
"""

from __future__ import annotations

import torch


def attenuation(segments: int, lam: float = 1.0) -> torch.Tensor:
    """InstructVideo's temporally attenuated weights ``exp(-lam * |f_s - F/2|)`` for S segments.

    Units: positions are measured in segments. Segment s (0-based) is represented by its midpoint
    ``f_s = s + 0.5`` and the clip spans ``F = S``; so the weights depend on where a frame lies in
    the video, not on the video's frame count or rate, and are symmetric about the middle.
    """
    f = torch.arange(segments, dtype=torch.float32) + 0.5
    return torch.exp(-lam * (f - segments / 2).abs())


def segmental(image: torch.Tensor, text: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Mean over segments of ``w_s * (image_s . text)``: image [S, D], text [D] -> scalar."""
    return (attenuation(image.shape[0], lam).to(image) * (image @ text)).mean()


def goal_baseline_projection(goal: torch.Tensor, baseline: torch.Tensor, alpha: float) -> torch.Tensor:
    """VLM-RM's ``P = alpha * d d^T / |d|^2 + (1 - alpha) I`` with ``d = g - b`` (g, b: [D])."""
    d = goal - baseline
    eye = torch.eye(d.shape[0], dtype=d.dtype, device=d.device)
    return alpha * torch.outer(d, d) / d.dot(d) + (1.0 - alpha) * eye


def goal_baseline(image: torch.Tensor, goal: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """VLM-RM's ``R = 1 - 0.5 * |(x - g) P|^2`` per frame (image [S, D]) -> [S]."""
    return 1.0 - 0.5 * ((image - goal) @ projection).pow(2).sum(-1)


def temporal_consistency(image: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of consecutive frame embeddings (image [S, D]); 1 for a single frame."""
    if image.shape[0] < 2:
        return image.new_tensor(1.0)
    return (image[1:] * image[:-1]).sum(-1).mean()
