"""`signal`: a weight-free, no-reference video quality model built from classic signals.

Every dimension is computed from luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (values in [0, 1])
with plain tensor ops, so the forward exports to ONNX/TensorRT unchanged. Per-frame values
are averaged over the real (unpadded) frames of each video. All scores lie in [0, 1] and
higher is better:

- ``sharpness = v / (v + 0.002)`` where ``v`` is the variance of the 3x3 Laplacian of Y
  (kernel [[0,1,0],[1,-4,1],[0,1,0]]). Blur removes high frequencies and lowers ``v``.
- ``temporal_stability = exp(-F / 0.03)`` where ``F`` is the mean over consecutive frame
  pairs of the mean absolute change of 4x4 regional mean luma. Averaging over large regions
  discounts motion (content moves within a region, its mean hardly changes), while flicker
  shifts every region's brightness.
- ``motion_smoothness = 1 / (1 + 4 R)`` with ``R = sum_t e_t / (sum_t m_t + 1/255 * N)``
  over the N triplets (t-1, t, t+1) of low-passed luma (the means of an 8x8 grid of regions):
  ``e_t = mean|Y_t - (Y_{t-1} + Y_{t+1}) / 2|`` (how badly frame t is predicted by its
  neighbours) and ``m_t = mean|Y_{t+1} - Y_{t-1}| / 2`` (how much happens). Steady motion
  interpolates well; dropped or duplicated frames do not. Static video scores 1.
- ``exposure = (1 - |2 mu - 1|) * (1 - c)`` with ``mu`` the mean luma and ``c`` the fraction
  of pixels crushed to black (Y <= 2/255) or blown to white (Y >= 253/255).
- ``contrast = 2 * std(Y)`` (RMS contrast; 1 would be half the pixels black, half white).
- ``colourfulness = M / (M + 50)`` with Hasler and Suesstrunk's
  ``M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2)`` on 0..255 values,
  ``rg = R - G``, ``yb = (R + G) / 2 - B``; ``M = 50`` ("averagely colourful") maps to 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.spec import Batching, Dimension, FrameSampling, ModelSpec, Resolution

SPEC = ModelSpec(
    name="signal",
    version="1.0.0",
    description="Weight-free no-reference video quality signals (built in).",
    dimensions=(
        Dimension(name="sharpness", range=(0.0, 1.0), description="v/(v+0.002), v = variance of the Laplacian of luma"),
        Dimension(
            name="temporal_stability",
            range=(0.0, 1.0),
            description="exp(-F/0.03), F = mean abs change of 4x4 regional mean luma between consecutive frames",
        ),
        Dimension(
            name="motion_smoothness",
            range=(0.0, 1.0),
            description="1/(1+4R), R = error of predicting frame t by the mean of t-1 and t+1, relative to motion",
        ),
        Dimension(name="exposure", range=(0.0, 1.0), description="(1-|2*mean luma-1|) * (1-clipped fraction)"),
        Dimension(name="contrast", range=(0.0, 1.0), description="2 * std of luma (RMS contrast)"),
        Dimension(name="colourfulness", range=(0.0, 1.0), description="M/(M+50), M = Hasler-Suesstrunk colourfulness"),
    ),
    # Consecutive frames matter for flicker and smoothness: take every frame up to 64.
    sampling=FrameSampling(mode="count", count=64, min_frames=1, max_frames=64),
    resolution=Resolution(max_pixels=256 * 256, min_pixels=32 * 32, size_factor=16, filter="bilinear"),
    needs_prompt=False,
    # A batch of 8 videos of 64 frames at 256x256 peaks at ~0.9 GB of float planes (see
    # _frame_statistics); batching a weight-free model buys little, so the cap keeps memory small.
    batching=Batching(max_batch_size=8, max_wait_ms=5.0),
)

_LUMA = (0.299, 0.587, 0.114)


def _region_means(flat: torch.Tensor, n: int) -> torch.Tensor:
    """Means of an n x n grid of regions of [N, 1, H, W] -> [N, n*n]. Sides divisible by n (every
    size the spec allows) take a reshape, which exports to ONNX with dynamic sides; others pool."""
    m, _, h, w = flat.shape
    if h % n or w % n:
        return F.adaptive_avg_pool2d(flat, n).reshape(m, n * n)
    return flat.reshape(m, n, h // n, n, w // n).mean(dim=(2, 4)).reshape(m, n * n)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of [B, N] values over the True entries of mask, per row (0 where none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _frame_statistics(frames: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame statistics of uint8 [N, H, W, 3] frames, each [N] (``regions4`` [N, 16], ``regions8``
    [N, 64]). Works one colour plane at a time and lets each full-size intermediate go as soon as
    its statistics are taken: a batch's peak is about seven float planes, not the ~20 that holding
    every intermediate (and a conv2d's unfolded copies) cost (16 videos x 64 frames x 256^2: 5.3 GB)."""
    n, h, w, _ = frames.shape
    r, g, b = (frames[..., c].float() / 255.0 for c in range(3))
    luma = r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]  # [N,H,W]
    out: dict[str, torch.Tensor] = {}
    rg = (r - g) * 255.0
    yb = (0.5 * (r + g) - b) * 255.0
    del r, g, b
    out["colourfulness"] = torch.sqrt(
        rg.var(dim=(1, 2), unbiased=False) + yb.var(dim=(1, 2), unbiased=False)
    ) + 0.3 * torch.sqrt(rg.mean(dim=(1, 2)) ** 2 + yb.mean(dim=(1, 2)) ** 2)
    del rg, yb
    out["mu"] = luma.mean(dim=(1, 2))
    out["clipped"] = ((luma <= 2.0 / 255.0) | (luma >= 253.0 / 255.0)).to(luma.dtype).mean(dim=(1, 2))
    out["std"] = luma.std(dim=(1, 2), unbiased=False)
    # The 3x3 Laplacian over the interior, by shifted views: a conv2d with one channel would unfold
    # nine copies of every plane first (im2col), the largest intermediate of the whole forward.
    centre = luma[:, 1:-1, 1:-1]
    laplacian = luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1] + luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:] - 4.0 * centre
    out["sharp_v"] = laplacian.var(dim=(1, 2), unbiased=False)
    del laplacian
    flat = luma.reshape(n, 1, h, w)
    out["regions4"] = _region_means(flat, 4)
    out["regions8"] = _region_means(flat, 8)
    return out


def forward(frames: torch.Tensor, num_frames: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
    """Score a padded batch: uint8 [B, T, H, W, 3] with per-item frame counts [B] -> float32 [B, 6]."""
    del prompts  # signal needs no prompt
    b, t, h, w, _ = frames.shape
    valid = torch.arange(t, device=frames.device)[None, :] < num_frames.to(frames.device)[:, None]  # [B,T]
    stats = _frame_statistics(frames.reshape(b * t, h, w, 3))

    sharp_v = stats["sharp_v"].view(b, t)
    sharpness = _masked_mean(sharp_v / (sharp_v + 0.002), valid)

    regions = stats["regions4"].view(b, t, 16)
    region_change = (regions[:, 1:] - regions[:, :-1]).abs().mean(-1)  # [B,T-1]
    pair_valid = valid[:, 1:] & valid[:, :-1]
    stability = torch.exp(-_masked_mean(region_change, pair_valid) / 0.03)

    low = stats["regions8"].view(b, t, 64)
    prev, mid, nxt = low[:, :-2], low[:, 1:-1], low[:, 2:]
    triplet_valid = (valid[:, 2:] & valid[:, 1:-1] & valid[:, :-2]).to(low.dtype)
    error = (mid - 0.5 * (prev + nxt)).abs().mean(-1) * triplet_valid
    motion = 0.5 * (nxt - prev).abs().mean(-1) * triplet_valid
    triplets = triplet_valid.sum(1)
    ratio = error.sum(1) / (motion.sum(1) + triplets / 255.0).clamp(min=1e-8)
    smoothness = torch.where(triplets > 0, 1.0 / (1.0 + 4.0 * ratio), torch.ones_like(ratio))  # < 3 frames: 1

    mu, clipped = stats["mu"].view(b, t), stats["clipped"].view(b, t)
    exposure = _masked_mean((1.0 - (2.0 * mu - 1.0).abs()) * (1.0 - clipped), valid)
    contrast = _masked_mean(2.0 * stats["std"].view(b, t), valid)
    m = stats["colourfulness"].view(b, t)
    colourfulness = _masked_mean(m / (m + 50.0), valid)

    return torch.stack([sharpness, stability, smoothness, exposure, contrast, colourfulness], dim=1).float()
