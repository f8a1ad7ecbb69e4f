"""RoIAlignRotated in pure PyTorch with MMCV's semantics (``mmcv.ops.RoIAlignRotated``).

A RoI is ``(batch_idx, cx, cy, w, h, theta)`` in input-image pixels (``spatial_scale`` maps them to the feature
map). Each of the ``out_h x out_w`` bins averages ``gh x gw`` bilinear samples taken on a grid rotated by
``theta`` about the RoI centre; ``gh = gw = sampling_ratio`` or, when it is 0, ``ceil(roi_h / out_h)`` and
``ceil(roi_w / out_w)`` per RoI. ``aligned=True`` shifts the centre by -0.5 pixel (pixel centres at integers).
MMCV rotates the sampling grid counter-clockwise by ``theta``; ``clockwise=True`` negates the angle, which is
what boxes in the lsknet/MMRotate convention need (the official Oriented R-CNN config sets it).

Bilinear rules (MMCV's): a sample with ``y < -1``, ``y > H``, ``x < -1`` or ``x > W`` contributes 0; otherwise
coordinates are clamped to ``>= 0`` and to the last row/column, so the border pixel is repeated.

Implementation: every output bin is a weighted sum of ``4 * gh * gw`` feature vectors, so the whole op is one
``embedding_bag`` (sum mode with per-sample weights) over the channels-last feature table: no giant gather,
differentiable w.r.t. the features (not the RoIs, like MMCV), the same code on CPU and GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RoIAlignRotated", "roi_align_rotated"]

_MAX_SAMPLES = 1 << 22  # index/weight entries per embedding_bag call


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"output_size must be a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _bags(
    rois: Tensor, out_hw: tuple[int, int], feat_hw: tuple[int, int], grid: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Flat table indices and weights, both (R * out_h * out_w, 4 * gh * gw), for RoIs sharing one grid."""
    (ph, pw), (hh, ww), (gh, gw) = out_hw, feat_hw, grid
    b, cx, cy, rw, rh, cos, sin = rois.unbind(1)
    dev, dt = rois.device, rois.dtype
    r = rois.shape[0]
    # sample offsets from the RoI centre, before rotation: (R, ph, gh) and (R, pw, gw)
    fy = torch.arange(ph, device=dev, dtype=dt).view(ph, 1) + (torch.arange(gh, device=dev, dtype=dt) + 0.5) / gh
    fx = torch.arange(pw, device=dev, dtype=dt).view(pw, 1) + (torch.arange(gw, device=dev, dtype=dt) + 0.5) / gw
    yy = (-rh / 2).view(r, 1, 1) + fy.unsqueeze(0) * (rh / ph).view(r, 1, 1)
    xx = (-rw / 2).view(r, 1, 1) + fx.unsqueeze(0) * (rw / pw).view(r, 1, 1)
    yy = yy.view(r, ph, 1, gh, 1)
    xx = xx.view(r, 1, pw, 1, gw)
    c, s = cos.view(r, 1, 1, 1, 1), sin.view(r, 1, 1, 1, 1)
    y = yy * c - xx * s + cy.view(r, 1, 1, 1, 1)  # (R, ph, pw, gh, gw)
    x = yy * s + xx * c + cx.view(r, 1, 1, 1, 1)
    valid = (y >= -1) & (y <= hh) & (x >= -1) & (x <= ww)
    y, x = y.clamp_min(0), x.clamp_min(0)
    y0, x0 = y.floor(), x.floor()
    ytop, xtop = y0 >= hh - 1, x0 >= ww - 1
    y0 = torch.where(ytop, torch.full_like(y0, hh - 1), y0)
    x0 = torch.where(xtop, torch.full_like(x0, ww - 1), x0)
    ly = torch.where(ytop, torch.zeros_like(y), y - y0)
    lx = torch.where(xtop, torch.zeros_like(x), x - x0)
    y1 = torch.where(ytop, y0, y0 + 1)
    x1 = torch.where(xtop, x0, x0 + 1)
    scale = valid.to(dt) / (gh * gw)
    w = torch.stack([(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], dim=-1) * scale.unsqueeze(-1)
    base = b.long().view(r, 1, 1, 1, 1) * (hh * ww)
    y0l, y1l, x0l, x1l = y0.long(), y1.long(), x0.long(), x1.long()
    idx = torch.stack([y0l * ww + x0l, y0l * ww + x1l, y1l * ww + x0l, y1l * ww + x1l], dim=-1) + base.unsqueeze(-1)
    idx = torch.where(valid.unsqueeze(-1), idx, torch.zeros_like(idx))  # keep indices in range
    n_bag = 4 * gh * gw
    return idx.reshape(r * ph * pw, n_bag), w.reshape(r * ph * pw, n_bag)


def _roi_geometry(r: Tensor, b: Tensor, spatial_scale: float, aligned: bool, clockwise: bool) -> Tensor:
    """(R, 7) = (batch, cx, cy, w, h, cos, sin) in feature-map pixels, the sampling frame of every RoI."""
    offset = 0.5 if aligned else 0.0
    rw, rh = r[:, 3] * spatial_scale, r[:, 4] * spatial_scale
    if not aligned:  # MMCV: legacy mode forces malformed RoIs to be at least 1x1
        rw, rh = rw.clamp_min(1.0), rh.clamp_min(1.0)
    theta = -r[:, 5] if clockwise else r[:, 5]
    return torch.stack(
        [b, r[:, 1] * spatial_scale - offset, r[:, 2] * spatial_scale - offset, rw, rh, theta.cos(), theta.sin()], 1
    )


def roi_align_rotated(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
    *,
    channels_last: bool = False,
) -> Tensor:
    """Pool rotated RoIs from ``features`` (B, C, H, W) into (R, C, out_h, out_w).

    ``rois``: (R, 6) = (batch_idx, cx, cy, w, h, theta [rad]) in image pixels; ``spatial_scale`` = feature
    size / image size (e.g. 1/4). See the module docstring for the exact sampling rules. ``channels_last``: return
    the result in channels-last memory (the layout it is computed in: no copy); same values.
    """
    if not isinstance(features, Tensor) or features.dim() != 4 or not features.is_floating_point():
        got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a floating (B, C, H, W) tensor, got {got}")
    if not isinstance(rois, Tensor) or rois.dim() != 2 or rois.shape[1] != 6 or not rois.is_floating_point():
        got = tuple(rois.shape) if isinstance(rois, Tensor) else type(rois).__name__
        raise ValueError(f"rois must be a floating (R, 6) tensor = (batch_idx, cx, cy, w, h, theta), got {got}")
    if sampling_ratio < 0:
        raise ValueError(f"sampling_ratio must be >= 0, got {sampling_ratio}")
    ph, pw = _pair(output_size)
    bsz, ch, hh, ww = features.shape
    nr = rois.shape[0]
    if nr == 0:
        return features.new_zeros((0, ch, ph, pw))
    r = rois.detach().to(torch.float64 if features.dtype == torch.float64 else torch.float32)
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rois contain NaN or inf values")
    b = r[:, 0].round()
    if bool(((b < 0) | (b >= bsz)).any()):
        raise ValueError(f"rois batch indices must be in [0, {bsz - 1}] for a batch of {bsz} feature maps")
    geo = _roi_geometry(r, b, spatial_scale, aligned, clockwise)
    rw, rh = geo[:, 3], geo[:, 4]
    table = features.permute(0, 2, 3, 1).reshape(bsz * hh * ww, ch)

    def pool(sel: Tensor | None, grid: tuple[int, int]) -> Tensor:
        g = geo if sel is None else geo[sel]
        n = g.shape[0]
        if grid[0] <= 0 or grid[1] <= 0:  # empty sampling grid: MMCV divides by max(count, 1) -> zeros
            return features.new_zeros((n * ph * pw, ch))
        step = max(1, _MAX_SAMPLES // (ph * pw * 4 * grid[0] * grid[1]))
        outs = []
        for s in range(0, n, step):
            idx, w = _bags(g[s : s + step], (ph, pw), (hh, ww), grid)
            outs.append(F.embedding_bag(idx, table, per_sample_weights=w.to(table.dtype), mode="sum"))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    if sampling_ratio > 0:
        out = pool(None, (sampling_ratio, sampling_ratio))
    else:  # adaptive grid: one pass per distinct (gh, gw)
        gh = torch.ceil(rh / ph).clamp_min(0).long()
        gw = torch.ceil(rw / pw).clamp_min(0).long()
        key = gh * (int(gw.max()) + 1) + gw
        uniq = torch.unique(key)
        if uniq.numel() == 1:
            out = pool(None, (int(gh[0]), int(gw[0])))
        else:
            parts, order = [], []
            for k in uniq.tolist():
                sel = torch.nonzero(key == k).flatten()
                parts.append(pool(sel, (int(gh[sel[0]]), int(gw[sel[0]]))).view(-1, ph * pw * ch))
                order.append(sel)
            inv = torch.empty(nr, dtype=torch.long, device=rois.device)
            inv[torch.cat(order)] = torch.arange(nr, device=rois.device)
            out = torch.cat(parts)[inv]
    out = out.view(nr, ph, pw, ch).permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()


class RoIAlignRotated(nn.Module):
    """Module form of :func:`roi_align_rotated` (same arguments and defaults as ``mmcv.ops.RoIAlignRotated``)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        aligned: bool = True,
        clockwise: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.clockwise = bool(clockwise)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_align_rotated(
            features, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.clockwise
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, clockwise={self.clockwise}"
        )
