"""Rotated feature alignment of R3Det's feature refinement module (Yang et al., "R3Det: Refined Single-Stage Detector
with Feature Refinement for Rotating Object", AAAI 2021), in plain PyTorch: MMCV's ``rotated_feature_align``.

Every location ``(h, w)`` of a (B, C, H, W) map carries one refined rotated box. The output at that location is the
feature there plus the features bilinearly sampled at the box's centre (``points=1``) or at its centre and four
corners (``points=5``), all in feature-map units (box pixels times ``spatial_scale``).

Official conventions kept on purpose (they are what R3Det checkpoints were trained with):

* the box's first column is read as the *y* coordinate and the second as *x* (``xy_swapped=True``): MMCV's kernel
  reads the boxes that way while MMRotate passes ``(cx, cy, w, h, theta)``; ``xy_swapped=False`` samples at the
  geometric centre instead (a deviation from the official detector);
* bilinear sampling as MMCV's ``bilinear_interpolate``: a point with ``y < -1``, ``y > H``, ``x < -1`` or ``x > W``
  gives 0; otherwise coordinates are clamped to ``>= 0`` and to the last row / column (border replication);
* no gradient reaches the boxes (the official backward only returns the features' gradient).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rotated_feature_align"]


def _bilinear(flat: Tensor, height: int, width: int, x: Tensor, y: Tensor) -> Tensor:
    """Samples of ``flat`` (B, C, H * W) at points ``x, y`` (B, N) -> (B, C, N), MMCV border rules."""
    inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    y, x = y.clamp(min=0), x.clamp(min=0)
    y0, x0 = y.floor(), x.floor()
    last_row, last_col = y0 >= height - 1, x0 >= width - 1
    y0 = torch.where(last_row, torch.full_like(y0, height - 1), y0)
    x0 = torch.where(last_col, torch.full_like(x0, width - 1), x0)
    y = torch.where(last_row, y0, y)
    x = torch.where(last_col, x0, x)
    y1 = torch.where(last_row, y0, y0 + 1)
    x1 = torch.where(last_col, x0, x0 + 1)
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    y0, x0, y1, x1 = (v.long() for v in (y0, x0, y1, x1))
    b, c, _ = flat.shape

    def take(yy: Tensor, xx: Tensor) -> Tensor:
        idx = (yy * width + xx).unsqueeze(1).expand(b, c, -1)
        return torch.gather(flat, 2, idx)

    val = (
        (hy * hx).unsqueeze(1) * take(y0, x0)
        + (hy * lx).unsqueeze(1) * take(y0, x1)
        + (ly * hx).unsqueeze(1) * take(y1, x0)
        + (ly * lx).unsqueeze(1) * take(y1, x1)
    )
    return val * inside.unsqueeze(1).to(val.dtype)


def rotated_feature_align(
    features: Tensor, rboxes: Tensor, spatial_scale: float, points: int = 1, *, xy_swapped: bool = True
) -> Tensor:
    """``features`` (B, C, H, W); ``rboxes`` (B, H, W, 5) or (B * H * W, 5) boxes ``(cx, cy, w, h, theta)`` in pixels
    and radians, one per location in row-major order; ``spatial_scale`` = 1 / stride; ``points`` 1 or 5.
    Returns (B, C, H, W): ``features`` plus the sum of the bilinear samples (see the module docstring)."""
    if points not in (1, 5):
        raise ValueError(f"points must be 1 or 5, got {points}")
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got {tuple(features.shape)}")
    b, c, h, w = features.shape
    if rboxes.numel() != b * h * w * 5:
        raise ValueError(
            f"rboxes must hold one (cx, cy, w, h, theta) box per location of {tuple(features.shape)}, "
            f"got {tuple(rboxes.shape)}"
        )
    r = rboxes.detach().reshape(b, h * w, 5).to(features.dtype)
    first, second = r[..., 0] * spatial_scale, r[..., 1] * spatial_scale
    y, x = (first, second) if xy_swapped else (second, first)
    pts = [(x, y)]
    if points == 5:
        half_w, half_h = r[..., 2] * (spatial_scale / 2), r[..., 3] * (spatial_scale / 2)
        cos, sin = torch.cos(r[..., 4]), torch.sin(r[..., 4])
        wx, wy, hx, hy = cos * half_w, sin * half_w, -sin * half_h, cos * half_h
        pts += [(x + wx + hx, y + wy + hy), (x - wx + hx, y - wy + hy), (x - wx - hx, y - wy - hy),
                (x + wx - hx, y + wy - hy)]  # fmt: skip
    flat = features.reshape(b, c, h * w)
    out = flat
    for px, py in pts:
        out = out + _bilinear(flat, h, w, px, py)
    return out.reshape(b, c, h, w)

