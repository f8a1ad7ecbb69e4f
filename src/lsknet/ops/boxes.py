"""Rotated-box conventions and converters.

A rotated box ("rbox") is ``(cx, cy, w, h, theta)`` in pixels and radians. ``theta`` turns the width axis
towards +y, i.e. clockwise on screen because image y points down: the width axis is ``(cos t, sin t)`` and
the height axis ``(-sin t, cos t)``. This is MMRotate's (and the official LSKNet checkpoints') meaning.

Regularizations (identical to MMRotate 0.x ``norm_angle`` / ``poly2obb_*``):

* ``le90``  (default): ``w >= h`` (swap when ``w < h``), ``theta`` in ``[-pi/2, pi/2)``.
* ``le135``: ``w >= h`` (swap when ``w < h``), ``theta`` in ``[-pi/4, 3pi/4)``.
* ``oc``: ``theta`` in ``(0, pi/2]``; ``w``/``h`` are swapped whenever the angle moves by an odd multiple of pi/2.

Polygons are ``(N, 4, 2)`` corner tensors (``(N, 8)`` accepted as input); :func:`rbox_to_corners` returns them
in DOTA order, clockwise on screen (top-left, top-right, bottom-right, bottom-left for ``theta = 0``).
Horizontal boxes ("hbox") are ``(x1, y1, x2, y2)``.

All functions are pure tensor code: they run on the input's device and dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "ANGLE_VERSIONS",
    "hbox_to_rbox",
    "poly_to_rbox",
    "rbox_to_corners",
    "rbox_to_hbox",
    "rbox_to_tv_boxes",
    "regularize_rbox",
    "tv_boxes_to_rbox",
]

ANGLE_VERSIONS = ("le90", "le135", "oc")
_HALF_PI = math.pi / 2


# ----------------------------------------------------------------------------------------------- validation
def _check_tensor(x: object, name: str, expected: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape {expected}, got dtype {x.dtype}")
    return x


def _check_finite(x: Tensor, name: str) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def check_rboxes(rboxes: object, name: str = "rboxes", finite: bool = True) -> Tensor:
    """Validate an ``(N, 5)`` floating rbox tensor (raises ``ValueError``)."""
    x = _check_tensor(rboxes, name, "(N, 5) = (cx, cy, w, h, theta)")
    if x.dim() != 2 or x.shape[-1] != 5:
        raise ValueError(f"{name} must have shape (N, 5) = (cx, cy, w, h, theta), got {tuple(x.shape)}")
    if finite:
        _check_finite(x, name)
    return x


def check_polys(polys: object, name: str = "polys", finite: bool = True) -> Tensor:
    """Validate polygons given as ``(N, 4, 2)`` or ``(N, 8)``; returns an ``(N, 4, 2)`` view."""
    x = _check_tensor(polys, name, "(N, 4, 2) or (N, 8)")
    if x.dim() == 2 and x.shape[-1] == 8:
        x = x.reshape(-1, 4, 2)
    elif not (x.dim() == 3 and x.shape[-2:] == (4, 2)):
        raise ValueError(f"{name} must have shape (N, 4, 2) or (N, 8), got {tuple(x.shape)}")
    if finite:
        _check_finite(x, name)
    return x


def _check_version(version: str) -> str:
    if version not in ANGLE_VERSIONS:
        raise ValueError(f"angle version must be one of {ANGLE_VERSIONS}, got {version!r}")
    return version


# ----------------------------------------------------------------------------------------------- conventions
def regularize_rbox(rboxes: Tensor, version: str = "le90") -> Tensor:
    """Return the same rectangles written in the ``version`` convention (see module docstring).

    ``rboxes``: ``(..., 5)`` tensor ``(cx, cy, w, h, theta)``, theta in radians. NaN propagates.
    """
    _check_version(version)
    _check_tensor(rboxes, "rboxes", "(..., 5)")
    if rboxes.shape[-1] != 5:
        raise ValueError(f"rboxes must have shape (..., 5), got {tuple(rboxes.shape)}")
    cx, cy, w, h, t = rboxes.unbind(-1)
    if version in ("le90", "le135"):
        swap = w < h
        w, h = torch.where(swap, h, w), torch.where(swap, w, h)
        t = torch.where(swap, t + _HALF_PI, t)
        start = -_HALF_PI if version == "le90" else -math.pi / 4
        t = torch.remainder(t - start, math.pi) + start
        # remainder() can round up to exactly pi for tiny negative inputs: keep the interval half-open.
        t = torch.where(t >= start + math.pi, t - math.pi, t)
    else:  # oc: theta in (0, pi/2]
        q = torch.floor(t / _HALF_PI)
        r = t - q * _HALF_PI
        low = r <= 0
        r, q = torch.where(low, r + _HALF_PI, r), torch.where(low, q - 1, q)
        high = r > _HALF_PI
        r, q = torch.where(high, r - _HALF_PI, r), torch.where(high, q + 1, q)
        swap = torch.remainder(q, 2) == 1
        w, h = torch.where(swap, h, w), torch.where(swap, w, h)
        t = r
    return torch.stack([cx, cy, w, h, t], dim=-1)


def rbox_to_corners(rboxes: Tensor) -> Tensor:
    """``(..., 5)`` rboxes -> ``(..., 4, 2)`` corners in DOTA order (clockwise on screen, image y down).

    Corner 0 is ``center - w/2 * u - h/2 * v`` with ``u = (cos t, sin t)``, ``v = (-sin t, cos t)``;
    the following corners go along ``+u``, then ``+v``, then ``-u``. NaN propagates.
    """
    _check_tensor(rboxes, "rboxes", "(..., 5)")
    if rboxes.shape[-1] != 5:
        raise ValueError(f"rboxes must have shape (..., 5), got {tuple(rboxes.shape)}")
    ctr = rboxes[..., :2]
    w, h, t = rboxes[..., 2:3], rboxes[..., 3:4], rboxes[..., 4:5]
    cos, sin = torch.cos(t), torch.sin(t)
    u = torch.cat([cos, sin], dim=-1) * (w / 2)
    v = torch.cat([-sin, cos], dim=-1) * (h / 2)
    return torch.stack([ctr - u - v, ctr + u - v, ctr + u + v, ctr - u + v], dim=-2)


def rbox_to_hbox(rboxes: Tensor) -> Tensor:
    """``(..., 5)`` rboxes -> ``(..., 4)`` axis-aligned envelopes ``(x1, y1, x2, y2)``."""
    _check_tensor(rboxes, "rboxes", "(..., 5)")
    if rboxes.shape[-1] != 5:
        raise ValueError(f"rboxes must have shape (..., 5), got {tuple(rboxes.shape)}")
    ctr = rboxes[..., :2]
    w, h, t = rboxes[..., 2:3], rboxes[..., 3:4], rboxes[..., 4:5]
    cos, sin = torch.cos(t), torch.sin(t)
    bx = (w / 2 * cos).abs() + (h / 2 * sin).abs()
    by = (w / 2 * sin).abs() + (h / 2 * cos).abs()
    half = torch.cat([bx, by], dim=-1)
    return torch.cat([ctr - half, ctr + half], dim=-1)


def hbox_to_rbox(hboxes: Tensor, version: str = "le90") -> Tensor:
    """``(..., 4)`` horizontal boxes ``(x1, y1, x2, y2)`` -> ``(..., 5)`` rboxes in ``version``."""
    _check_tensor(hboxes, "hboxes", "(..., 4) = (x1, y1, x2, y2)")
    if hboxes.shape[-1] != 4:
        raise ValueError(f"hboxes must have shape (..., 4) = (x1, y1, x2, y2), got {tuple(hboxes.shape)}")
    x1, y1, x2, y2 = hboxes.unbind(-1)
    rb = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)], dim=-1)
    return regularize_rbox(rb, version)


def poly_to_rbox(polys: Tensor, version: str = "le90", method: str = "opencv") -> Tensor:
    """Minimum-area enclosing rectangles of quadrilaterals, then regularized.

    ``polys``: ``(N, 4, 2)`` or ``(N, 8)`` pixel corners (any order, any orientation, may be degenerate).
    Returns ``(N, 5)`` rboxes in the input dtype. Raises ``ValueError`` for bad shapes or non-finite values.

    ``method="opencv"`` (default): the rectangle MMRotate gets from ``cv2.minAreaRect`` on float32 corners
    (``poly2obb_np``), the same choice among (nearly) equal-area rectangles, in pure torch
    (:mod:`lsknet.ops.min_area_rect`); for ``le90`` also MMRotate's regularization steps (swap when ``w < h``, then
    wrap into ``[-pi/2, pi/2)``). Use it for labels (training targets, evaluation ground truth).
    ``method="exact"``: float64, every direction between two corners tried, the first smallest area kept: the
    best inverse of :func:`rbox_to_corners` (e.g. for detections written as polygons).
    """
    _check_version(version)
    pts = check_polys(polys)
    if method == "opencv":
        return _poly_to_rbox_opencv(pts, version)
    if method != "exact":
        raise ValueError(f"method must be 'opencv' or 'exact', got {method!r}")
    dtype = pts.dtype
    p = pts.to(torch.float64)
    n = p.shape[0]
    if n == 0:
        return pts.new_zeros((0, 5))
    origin = p.mean(dim=1, keepdim=True)
    p = p - origin
    ii = torch.tensor([0, 0, 0, 1, 1, 2], device=p.device)
    jj = torch.tensor([1, 2, 3, 2, 3, 3], device=p.device)
    d = p[:, jj] - p[:, ii]  # (N, 6, 2) candidate side directions
    length = d.norm(dim=-1)
    ok = length > 0
    u = d / length.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(-1)
    u = torch.where(ok.unsqueeze(-1), u, torch.tensor([1.0, 0.0], dtype=p.dtype, device=p.device))
    v = torch.stack([-u[..., 1], u[..., 0]], dim=-1)
    # projections of the 4 points on each candidate frame: (N, 6, 4)
    pu = torch.einsum("nkc,npc->nkp", u, p)
    pv = torch.einsum("nkc,npc->nkp", v, p)
    umin, umax = pu.amin(-1), pu.amax(-1)
    vmin, vmax = pv.amin(-1), pv.amax(-1)
    area = (umax - umin) * (vmax - vmin)
    area = torch.where(ok, area, torch.full_like(area, math.inf))
    best = area.argmin(dim=1)  # first minimum on ties; all-inf (coincident points) -> 0 with u = (1, 0)
    idx = best.view(n, 1)
    umin_b, umax_b, vmin_b, vmax_b = (x.gather(1, idx).squeeze(1) for x in (umin, umax, vmin, vmax))
    bu = u.gather(1, idx.unsqueeze(-1).expand(n, 1, 2)).squeeze(1)
    bv = torch.stack([-bu[:, 1], bu[:, 0]], dim=-1)
    cu, cv = (umin_b + umax_b) / 2, (vmin_b + vmax_b) / 2
    ctr = origin.squeeze(1) + cu.unsqueeze(-1) * bu + cv.unsqueeze(-1) * bv
    theta = torch.atan2(bu[:, 1], bu[:, 0])
    rb = torch.stack([ctr[:, 0], ctr[:, 1], umax_b - umin_b, vmax_b - vmin_b, theta], dim=-1)
    return regularize_rbox(rb, version).to(dtype)


def _poly_to_rbox_opencv(pts: Tensor, version: str) -> Tensor:
    from lsknet.ops.min_area_rect import min_area_rect_opencv

    if pts.shape[0] == 0:
        return pts.new_zeros((0, 5))
    rect = min_area_rect_opencv(pts)  # (cx, cy, w, h, degrees), float64 holding float32 values
    cx, cy, w, h, deg = rect.unbind(1)
    t = deg / 180 * math.pi
    if version != "le90":
        return regularize_rbox(torch.stack([cx, cy, w, h, t], 1), version).to(pts.dtype)
    # MMRotate poly2obb_np_le90: swap when w < h (angle + pi/2), then step by pi into [-pi/2, pi/2)
    swap = w < h
    w, h, t = torch.where(swap, h, w), torch.where(swap, w, h), torch.where(swap, t + _HALF_PI, t)
    for _ in range(4):  # |deg| <= 180, so a few steps always suffice
        t = torch.where(t >= _HALF_PI, t - math.pi, torch.where(t < -_HALF_PI, t + math.pi, t))
    return torch.stack([cx, cy, w, h, t], 1).to(pts.dtype)


# ----------------------------------------------------------------------------------------------- torchvision
def rbox_to_tv_boxes(rboxes: Tensor, canvas_size: tuple[int, int], fmt: str = "CXCYWHR"):
    """Wrap ``(N, 5)`` rboxes as ``torchvision.tv_tensors.BoundingBoxes`` so v2 transforms can augment them.

    ``canvas_size`` is ``(height, width)``. ``fmt="CXCYWHR"``: torchvision's angle is in degrees and
    counter-clockwise on screen, so ``r = -degrees(theta)``. ``fmt="XYXYXYXY"``: the DOTA-order corners.
    """
    from torchvision import tv_tensors

    rboxes = check_rboxes(rboxes, finite=False)
    fmt = fmt.upper()
    if fmt == "CXCYWHR":
        data = torch.cat([rboxes[:, :4], torch.rad2deg(-rboxes[:, 4:5])], dim=-1)
    elif fmt == "XYXYXYXY":
        data = rbox_to_corners(rboxes).reshape(-1, 8)
    else:
        raise ValueError(f"fmt must be 'CXCYWHR' or 'XYXYXYXY', got {fmt!r}")
    return tv_tensors.BoundingBoxes(data, format=fmt, canvas_size=tuple(canvas_size))


def tv_boxes_to_rbox(boxes: Tensor, version: str = "le90") -> Tensor:
    """torchvision rotated ``BoundingBoxes`` (any rotated format) -> ``(N, 5)`` rboxes in ``version``.

    ``CXCYWHR`` converts exactly (sign flip, degrees -> radians); other formats go through their corners and
    :func:`poly_to_rbox` (so sheared corners after an affine transform become their minimum-area rectangle).
    """
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    _check_version(version)
    if not isinstance(boxes, tv_tensors.BoundingBoxes):
        raise ValueError(f"expected torchvision.tv_tensors.BoundingBoxes, got {type(boxes).__name__}")
    fmt = boxes.format
    if not tv_tensors.is_rotated_bounding_format(fmt):
        raise ValueError(f"expected a rotated BoundingBoxes format (CXCYWHR, XYWHR, XYXYXYXY), got {fmt}")
    if fmt == tv_tensors.BoundingBoxFormat.CXCYWHR:
        data = boxes.as_subclass(Tensor).reshape(-1, 5)
        data = data if data.is_floating_point() else data.float()
        rb = torch.cat([data[:, :4], torch.deg2rad(-data[:, 4:5])], dim=-1)
        return regularize_rbox(rb, version)
    corners = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXYXYXY)
    corners = corners.as_subclass(Tensor).reshape(-1, 8)
    if not corners.is_floating_point():
        corners = corners.float()
    return poly_to_rbox(corners, version)
