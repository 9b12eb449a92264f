"""Resize frames to a model's resolution policy (keep aspect ratio, snap to a size factor)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.spec import Resolution
from service.errors import Unprocessable


def target_size(height: int, width: int, policy: Resolution, frames: int = 1) -> tuple[int, int]:
    """Output (height, width) of each of a clip's ``frames``: sides multiples of ``size_factor``, area
    within the policy's bounds (the upper one shared out over the clip with ``clip_pixels``).

    Same rule as qwen-vl-utils' ``smart_resize``: round each side to the factor, then scale
    both sides down (or up) by one factor if the area is out of bounds.
    """
    if policy.clip_pixels is not None:
        policy = policy.model_copy(update={"max_pixels": min(policy.max_pixels, policy.clip_pixels // max(frames, 1))})
    f = policy.size_factor
    if max(height, width) / min(height, width) > 200:
        raise Unprocessable(f"aspect ratio of {width}x{height} is beyond 200:1", code="bad_aspect_ratio")
    h = max(f, round(height / f) * f)
    w = max(f, round(width / f) * f)
    if h * w > policy.max_pixels:
        beta = math.sqrt(height * width / policy.max_pixels)
        h = max(f, math.floor(height / beta / f) * f)
        w = max(f, math.floor(width / beta / f) * f)
    elif h * w < policy.min_pixels:
        beta = math.sqrt(policy.min_pixels / (height * width))
        h = math.ceil(height * beta / f) * f
        w = math.ceil(width * beta / f) * f
    return h, w


def resize(frames: torch.Tensor, size: tuple[int, int], policy: Resolution) -> torch.Tensor:
    """Resize uint8 [N, H, W, 3] to uint8 [N, h, w, 3] with the policy's filter, on the frames' device.

    On the CPU, antialiased bilinear runs on torch's native uint8 kernel (several times faster than
    going through float32, within one grey level of it); other filters, and every filter on a GPU,
    go through float32 and round.
    """
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames.contiguous()
    x = frames.permute(0, 3, 1, 2)  # NCHW view of NHWC memory
    if policy.filter == "bilinear" and policy.antialias and x.device.type == "cpu":
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        options = {} if policy.filter == "area" else {"align_corners": False, "antialias": policy.antialias}
        y = F.interpolate(x.float(), size=size, mode=policy.filter, **options).round_().clamp_(0, 255).to(torch.uint8)
    return y.permute(0, 2, 3, 1).contiguous()
