"""TensorRT optimisation profiles for each compiled part, derived from the model spec (pure math).

A profile gives, for every input of a part, the min / opt / max shape (batch dimension first
for batched parts) an engine built with it accepts. Profiles follow what the spec lets reach the
model, not one giant box:

- frames: any count the sampling allows; the sides a resolution policy can produce (multiples of
  ``size_factor``, area at most ``max_pixels``) fall into three boxes: both sides up to the
  largest square side, wide (height up to it, width beyond it) and tall (the transpose). No
  allowed frame has both sides beyond the square side, so the three cover every allowed shape
  while none holds a ``long x long`` frame.
- CLIP: the S segment frames of each video as fixed crops (the image size); text up to the tower's positions.
- Qwen2-VL's vision tower: 2-frame groups for 1..max_frames frames, patches per group from the
  smallest to the largest frame area the policy allows (its inputs do not depend on the aspect).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from models import contract
from models.spec import ModelSpec

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Range:
    """min / opt / max shape of one input."""

    min: Shape
    opt: Shape
    max: Shape

    def covers(self, shape: Shape) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


Profile = dict[str, Range]  # input name -> range


def side_bounds(spec: ModelSpec) -> tuple[int, int, int]:
    """(shortest side, largest square side, longest side) a frame resized per the spec can have."""
    r = spec.resolution
    f = max(r.size_factor, 1)
    square = f * max(1, math.isqrt(r.max_pixels) // f)
    longest = f * max(1, r.max_pixels // f // f)
    return f, square, max(longest, square)


def frame_boxes(spec: ModelSpec) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
    """Three (H range, W range, opt (H, W)) boxes covering every allowed frame size."""
    f, square, longest = side_bounds(spec)
    r = spec.resolution
    wide_h = f * max(1, math.isqrt(r.max_pixels * 9 // 16) // f)  # a 16:9 frame at max pixels
    wide_w = max(square, f * max(1, (r.max_pixels // wide_h) // f))
    boxes = [((f, square), (f, square), (square, square))]
    if longest > square:
        boxes.append(((f, square), (square, longest), (wide_h, wide_w)))
        boxes.append(((square, longest), (f, square), (wide_w, wide_h)))
    return boxes


def part_profiles(
    spec: ModelSpec, part: str, max_batch: int, *, image_size: int = 224, segments: int = 4, text_length: int = 77
) -> list[Profile]:
    """The optimisation profiles of ``part`` (a name from ``contract.parts``); the keywords are a
    CLIP checkpoint's sizes (defaults: ViT-L/14 at InstructVideo's 4 segments)."""
    s = spec.sampling
    if part == "signal":
        profiles = []
        for (h0, h1), (w0, w1), (ho, wo) in frame_boxes(spec):
            frames = Range(
                (1, s.min_frames, h0, w0, 3), (max_batch, s.max_frames, ho, wo, 3), (max_batch, s.max_frames, h1, w1, 3)
            )
            counts = Range((1, 1), (max_batch, 1), (max_batch, 1))
            profiles.append({contract.FRAMES: frames, contract.NUM_FRAMES: counts})
        return profiles
    if part.endswith(".image"):
        size = (segments, 3, image_size, image_size)
        return [{contract.PIXELS: Range((1, *size), (max_batch, *size), (max_batch, *size))}]
    if part.endswith(".text"):
        ids = Range((1, 2), (max_batch, min(16, text_length)), (max_batch, text_length))  # bos + eos at least
        return [{contract.INPUT_IDS: ids, contract.ATTENTION_MASK: ids}]
    if part.endswith(".vision"):
        r = spec.resolution
        patch_area = 14 * 14
        merge = 4  # 2x2 patches per merged token: a group has a multiple of 4 patches
        least = max(merge, r.size_factor**2 // patch_area)  # a one-factor-square frame
        most = r.max_pixels // patch_area // merge * merge
        groups = -(-s.max_frames // 2)
        short = min(groups, 8)  # a few seconds of video: its own profile, tuned for its size
        tokens = (least, most // 2 // merge * merge or least, most)
        profiles = []
        for g0, g1 in ((1, short), (short, groups)):
            gopt = (g0 + g1) // 2
            patches = Range((g0, tokens[0], 1176), (gopt, tokens[1], 1176), (g1, tokens[2], 1176))
            positions = Range((tokens[0], 2), (tokens[1], 2), (tokens[2], 2))
            profiles.append({contract.PATCHES: patches, contract.POSITIONS: positions})
        return profiles if groups > short else profiles[:1]
    raise ValueError(f"no profiles for part {part!r}")


def as_json(profiles: list[Profile]) -> list[dict[str, dict[str, list[int]]]]:
    return [
        {name: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for name, r in p.items()} for p in profiles
    ]


def from_json(raw: list[dict]) -> list[Profile]:
    return [{name: Range(tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])) for name, r in p.items()} for p in raw]
