"""YUV -> RGB in pure torch, for frames a hardware decoder leaves on the GPU (NV12, P010).

Pure math on tensors, no decoder and no device assumptions, so it is tested on the CPU against
FFmpeg's own conversion of the same frames (tests/test_colour.py).

Layouts (as PyAV's DLPack export of CUDA frames gives them, see service/nvdec.py):
- NV12: luma ``y`` uint8 [H, W], interleaved chroma ``uv`` uint8 [H/2, W/2, 2] (U, V).
- P010: the same shapes in 16-bit words with the sample in the top 10 bits (``torch.uint16``
  or ``int16`` storage); they are scaled to the 8-bit range before the same matrix.

Matrix: BT.601, BT.709, BT.2020 (non-constant luminance), SMPTE 240M or FCC (Kr, Kb), with
limited ("TV", 16-235 / 16-240) or full ("PC", 0-255) range. Chroma
is upsampled by repeating each sample over its 2x2 block, as FFmpeg's unscaled YUV->RGB
converters do, so the result matches the CPU path's ``frame.to_ndarray(format="rgb24")``.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

Matrix = Literal["bt601", "bt709", "bt2020", "smpte240m", "fcc"]
_K = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
    "smpte240m": (0.212, 0.087),
    "fcc": (0.30, 0.11),
}  # (Kr, Kb)


def yuv_to_rgb_coefficients(matrix: Matrix = "bt601", full_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(M float32 [3, 3], offset float32 [3]) with rgb = M @ (yuv - offset), all in 0..255 units."""
    kr, kb = _K[matrix]
    kg = 1.0 - kr - kb
    y_scale, c_scale = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
    # R = Y + 2(1-Kr) V;  B = Y + 2(1-Kb) U;  G = (Y - Kr R - Kb B) / Kg
    m = torch.tensor(
        [
            [y_scale, 0.0, 2 * (1 - kr) * c_scale],
            [y_scale, -2 * (1 - kb) * kb / kg * c_scale, -2 * (1 - kr) * kr / kg * c_scale],
            [y_scale, 2 * (1 - kb) * c_scale, 0.0],
        ],
        dtype=torch.float32,
    )
    offset = torch.tensor([0.0 if full_range else 16.0, 128.0, 128.0], dtype=torch.float32)
    return m, offset


def nv12_to_rgb(y: torch.Tensor, uv: torch.Tensor, matrix: Matrix = "bt601", full_range: bool = False) -> torch.Tensor:
    """NV12 (or P010) planes -> RGB uint8 [H, W, 3] on the planes' device.

    ``y`` [H, W], ``uv`` [ceil(H/2), ceil(W/2), 2]; odd sizes take the chroma of their block. A chroma
    plane exported one row or column short of that (DLPack of an odd-sized frame gives [H//2, W//2])
    repeats its last row or column.
    """
    h, w = y.shape
    if y.dtype == torch.uint8:
        luma, chroma = y.float(), uv.float()
    else:  # 16-bit words, 10 significant bits at the top: 8-bit units are word / 256
        luma, chroma = _as_unsigned(y) / 256.0, _as_unsigned(uv) / 256.0
    short_h, short_w = (h + 1) // 2 - chroma.shape[0], (w + 1) // 2 - chroma.shape[1]
    if short_h > 0 or short_w > 0:  # [H, W, 2] -> [2, H, W] for replicate padding, and back
        pad = (0, max(short_w, 0), 0, max(short_h, 0))
        chroma = torch.nn.functional.pad(chroma.permute(2, 0, 1)[None], pad, mode="replicate")[0].permute(1, 2, 0)
    chroma = chroma.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)[:h, :w]  # [H, W, 2]
    yuv = torch.cat([luma.unsqueeze(-1), chroma], dim=-1)  # [H, W, 3]
    m, offset = _coefficients_on(matrix, full_range, yuv.device)
    rgb = (yuv - offset) @ m.T
    return rgb.round_().clamp_(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=32)
def _coefficients_on(matrix: Matrix, full_range: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The coefficients, moved to ``device`` once (not once per frame)."""
    m, offset = yuv_to_rgb_coefficients(matrix, full_range)
    return m.to(device), offset.to(device)


def _as_unsigned(x: torch.Tensor) -> torch.Tensor:
    """16-bit storage (uint16, or int16 as some DLPack consumers see it) -> float32 of the unsigned value."""
    if x.dtype == torch.int16:
        return x.to(torch.int32).bitwise_and_(0xFFFF).float()
    return x.to(torch.float32) if x.dtype != torch.uint16 else x.to(torch.int32).float()
