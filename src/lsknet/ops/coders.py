"""Box coders of Oriented R-CNN, with the semantics of MMRotate 0.x (the official LSKNet configs).

* :class:`DeltaXYWHTCoder` - rbox <-> rbox deltas ``(dx, dy, dw, dh, dtheta)`` of the RoI head
  (MMRotate ``DeltaXYWHAOBBoxCoder``). Official config: ``angle_version="le90"``, ``norm_factor=None``,
  ``edge_swap=True``, ``proj_xy=True``, means 0, stds ``(0.1, 0.1, 0.2, 0.2, 0.1)``.
* :class:`MidpointOffsetCoder` - horizontal anchor ``(x1, y1, x2, y2)`` <-> rbox through the six
  midpoint-offset deltas ``(dx, dy, dw, dh, da, db)`` of the oriented RPN (Xie et al., Oriented R-CNN,
  arXiv 2108.05699). Official config: means 0, stds ``(1, 1, 1, 1, 0.5, 0.5)``.
* :class:`DeltaXYWHCoder` - hbox <-> hbox deltas of a horizontal RPN (MMDetection ``DeltaXYWHBBoxCoder``).
* :class:`DeltaXYWHAHCoder` - horizontal RoI <-> rbox deltas of RoI Transformer's RRoI learner (MMRotate
  ``DeltaXYWHAHBBoxCoder``).

Decoding clamps the ``exp`` inputs to ``|log(wh_ratio_clip)|`` (default ``16 / 1000``), like MMRotate.
Boxes are in pixels, angles in radians (lsknet convention, see :mod:`lsknet.ops.boxes`). The coders are
plain objects (no parameters, no state): tensors in, tensors out, on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lsknet.ops.boxes import _check_version, rbox_to_corners, rbox_to_hbox, regularize_rbox

__all__ = ["DeltaXYWHAHCoder", "DeltaXYWHCoder", "DeltaXYWHTCoder", "MidpointOffsetCoder"]

_WH_RATIO_CLIP = 16 / 1000


def _norm_angle(t: Tensor, version: str, half_open: bool = True) -> Tensor:
    """MMRotate's ``norm_angle`` ``(t - start) % pi + start`` (identity for ``oc``). ``half_open``: results that
    round up to ``start + pi`` are wrapped to ``start`` (MMRotate leaves them, so it can return +pi/2 in le90)."""
    if version == "oc":
        return t
    start = -math.pi / 2 if version == "le90" else -math.pi / 4
    t = torch.remainder(t - start, math.pi) + start
    return torch.where(t >= start + math.pi, t - math.pi, t) if half_open else t


def _check_last(x: object, size: int, name: str, what: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] % size or not x.is_floating_point():
        got = (tuple(x.shape), x.dtype) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating (N, {what}) tensor, got {got}")
    return x


def _stats(values: Sequence[float], n: int, name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != n:
        raise ValueError(f"{name} must have {n} values, got {len(values)}")
    return values


class DeltaXYWHTCoder:
    """Rotated-box deltas for the RoI head: ``encode(proposals, gt) -> deltas``, ``decode(proposals, deltas)``.

    With ``proj_xy`` the centre offset is measured in the proposal's own frame (along its width / height axes);
    with ``edge_swap`` the target is re-expressed with w and h exchanged (angle + pi/2) when that makes the
    angle difference smaller, and decoded boxes come back with ``w >= h`` (swap when not ``w > h``).
    """

    def __init__(
        self,
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0, 0.0),
        target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2, 0.1),
        angle_version: str = "le90",
        norm_factor: float | None = None,
        edge_swap: bool = True,
        proj_xy: bool = True,
    ) -> None:
        self.means = _stats(target_means, 5, "target_means")
        self.stds = _stats(target_stds, 5, "target_stds")
        self.angle_version = _check_version(angle_version)
        self.norm_factor = norm_factor
        self.edge_swap = edge_swap
        self.proj_xy = proj_xy

    def __repr__(self) -> str:
        return (
            f"DeltaXYWHTCoder(means={self.means}, stds={self.stds}, angle_version={self.angle_version!r}, "
            f"norm_factor={self.norm_factor}, edge_swap={self.edge_swap}, proj_xy={self.proj_xy})"
        )

    def encode(self, rboxes: Tensor, gt_rboxes: Tensor) -> Tensor:
        """(N, 5) proposals and (N, 5) targets -> (N, 5) normalised deltas."""
        p, g = _check_last(rboxes, 5, "rboxes", "5"), _check_last(gt_rboxes, 5, "gt_rboxes", "5")
        if p.shape != g.shape or p.shape[1] != 5:
            raise ValueError(f"rboxes and gt_rboxes must both be (N, 5), got {tuple(p.shape)} and {tuple(g.shape)}")
        px, py, pw, ph, pa = p.unbind(1)
        gx, gy, gw, gh, ga = g.unbind(1)
        if self.proj_xy:
            cos, sin = torch.cos(pa), torch.sin(pa)
            dx = (cos * (gx - px) + sin * (gy - py)) / pw
            dy = (-sin * (gx - px) + cos * (gy - py)) / ph
        else:
            dx, dy = (gx - px) / pw, (gy - py) / ph
        gw, gh, da = _closest_edges(gw, gh, ga - pa, self.angle_version, self.edge_swap)
        if self.norm_factor:
            da = da / (self.norm_factor * math.pi)
        deltas = torch.stack([dx, dy, torch.log(gw / pw), torch.log(gh / ph), da], dim=1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(
        self,
        rboxes: Tensor,
        deltas: Tensor,
        max_shape: Sequence[int] | None = None,
        wh_ratio_clip: float = _WH_RATIO_CLIP,
    ) -> Tensor:
        """(N, 5) proposals and (N, 5 * k) deltas (k classes) -> (N, 5 * k) rboxes.

        ``max_shape`` = (height, width[, ...]) clamps centres to the image like MMRotate.
        """
        p = _check_last(rboxes, 5, "rboxes", "5")
        d = _check_last(deltas, 5, "deltas", "5 * k")
        if p.shape[1] != 5 or p.shape[0] != d.shape[0]:
            raise ValueError(f"rboxes (N, 5) and deltas (N, 5 * k) disagree: {tuple(p.shape)}, {tuple(d.shape)}")
        n, k = d.shape[0], d.shape[1] // 5
        d = d.view(n, k, 5) * d.new_tensor(self.stds) + d.new_tensor(self.means)
        dx, dy, dw, dh, da = d.unbind(-1)
        if self.norm_factor:
            da = da * (self.norm_factor * math.pi)
        px, py, pw, ph, pa = (v.unsqueeze(1) for v in p.unbind(1))
        max_ratio = abs(math.log(wh_ratio_clip))
        gw = pw * dw.clamp(-max_ratio, max_ratio).exp()
        gh = ph * dh.clamp(-max_ratio, max_ratio).exp()
        if self.proj_xy:
            cos, sin = torch.cos(pa), torch.sin(pa)
            gx = dx * pw * cos - dy * ph * sin + px
            gy = dx * pw * sin + dy * ph * cos + py
        else:
            gx, gy = px + dx * pw, py + dy * ph
        ga = _norm_angle(pa + da, self.angle_version)
        if max_shape is not None:
            gx = gx.clamp(0, max_shape[1] - 1)
            gy = gy.clamp(0, max_shape[0] - 1)
        if self.edge_swap:
            gw, gh, ga = _long_edge_first(gw, gh, ga, self.angle_version)
        return torch.stack([gx, gy, gw, gh, ga], dim=-1).view(n, 5 * k)


def _closest_edges(
    w: Tensor, h: Tensor, angle: Tensor, version: str, edge_swap: bool, half_open: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """A regression target's ``(w, h, angle)``: with ``edge_swap`` the box is re-expressed with w and h exchanged
    (angle + pi/2) when that makes the wrapped angle smaller in magnitude (MMRotate's edge swap)."""
    d1 = _norm_angle(angle, version, half_open)
    if not edge_swap:
        return w, h, d1
    d2 = _norm_angle(angle + math.pi / 2, version, half_open)
    keep = d1.abs() < d2.abs()
    return torch.where(keep, w, h), torch.where(keep, h, w), torch.where(keep, d1, d2)


def _long_edge_first(w: Tensor, h: Tensor, angle: Tensor, version: str, half_open: bool = True) -> tuple[Tensor, ...]:
    """Decoded boxes with ``w > h`` kept, others swapped and turned by pi/2 (MMRotate's edge swap on decode)."""
    wider = w > h
    return (
        torch.where(wider, w, h),
        torch.where(wider, h, w),
        _norm_angle(torch.where(wider, angle, angle + math.pi / 2), version, half_open),
    )


class MidpointOffsetCoder:
    """Oriented-RPN coder: horizontal anchors (N, 4) ``(x1, y1, x2, y2)`` <-> rboxes (N, 5).

    Encoding describes the target by its envelope ``(x, y, w, h)`` and the offsets of its top vertex from the
    envelope's top midpoint (``da = (top_x - x) / w``) and of its right vertex from the right midpoint
    (``db = (right_y - y) / h``). As in MMRotate, a vertex counts as "top" within 0.1 px of the minimum y; on a
    tie (horizontal edge) the rightmost one is taken, and for "right" the lowest one. Decoding builds the
    centrally symmetric quadrilateral from the four offsets (``da``, ``db`` clamped to [-0.5, 0.5]), stretches
    its half-diagonals to equal length (a rectangle) and converts it to an rbox in ``angle_version``.

    ``official_rounding``: decode with MMRotate's arithmetic (corners in absolute image coordinates, angle wrapped
    by ``(a + pi/2) % pi - pi/2`` without fixing the rounding at the end of the interval). Near-vertical long sides
    then come out as ``+pi/2 - eps`` (or ``+pi/2``) where the exact le90 value is ``-pi/2``: the same rectangle,
    but RoIAlignRotated samples it turned by 180 degrees, as the official detector does. Off (default): corners
    relative to the centre and a half-open ``[-pi/2, pi/2)`` interval.
    """

    def __init__(
        self,
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5),
        angle_version: str = "le90",
        official_rounding: bool = False,
    ) -> None:
        self.means = _stats(target_means, 6, "target_means")
        self.stds = _stats(target_stds, 6, "target_stds")
        self.angle_version = _check_version(angle_version)
        self.official_rounding = bool(official_rounding)

    def __repr__(self) -> str:
        return (
            f"MidpointOffsetCoder(means={self.means}, stds={self.stds}, angle_version={self.angle_version!r}, "
            f"official_rounding={self.official_rounding})"
        )

    def encode(self, hboxes: Tensor, gt_rboxes: Tensor) -> Tensor:
        """(N, 4) anchors and (N, 5) target rboxes -> (N, 6) normalised deltas."""
        a = _check_last(hboxes, 4, "hboxes", "4")
        g = _check_last(gt_rboxes, 5, "gt_rboxes", "5")
        if a.shape[1] != 4 or g.shape[1] != 5 or a.shape[0] != g.shape[0]:
            raise ValueError(f"hboxes (N, 4) and gt_rboxes (N, 5) disagree: {tuple(a.shape)}, {tuple(g.shape)}")
        px, py = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
        pw, ph = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        env = rbox_to_hbox(g)
        gx, gy = (env[:, 0] + env[:, 2]) / 2, (env[:, 1] + env[:, 3]) / 2
        gw, gh = env[:, 2] - env[:, 0], env[:, 3] - env[:, 1]
        corners = rbox_to_corners(g)
        x, y = corners[..., 0], corners[..., 1]
        ninf = torch.full_like(x, -math.inf)
        top_x = torch.where((y - y.amin(1, keepdim=True)).abs() > 0.1, ninf, x).amax(1)
        right_y = torch.where((x - x.amax(1, keepdim=True)).abs() > 0.1, ninf, y).amax(1)
        deltas = torch.stack(
            [
                (gx - px) / pw,
                (gy - py) / ph,
                torch.log(gw / pw),
                torch.log(gh / ph),
                (top_x - gx) / gw,
                (right_y - gy) / gh,
            ],
            dim=1,
        )
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(self, hboxes: Tensor, deltas: Tensor, wh_ratio_clip: float = _WH_RATIO_CLIP) -> Tensor:
        """(N, 4) anchors and (N, 6 * k) deltas -> (N, 5 * k) rboxes."""
        a = _check_last(hboxes, 4, "hboxes", "4")
        d = _check_last(deltas, 6, "deltas", "6 * k")
        if a.shape[1] != 4 or a.shape[0] != d.shape[0]:
            raise ValueError(f"hboxes (N, 4) and deltas (N, 6 * k) disagree: {tuple(a.shape)}, {tuple(d.shape)}")
        n, k = d.shape[0], d.shape[1] // 6
        d = d.view(n, k, 6) * d.new_tensor(self.stds) + d.new_tensor(self.means)
        dx, dy, dw, dh, da, db = d.unbind(-1)
        px, py = ((a[:, 0] + a[:, 2]) / 2).unsqueeze(1), ((a[:, 1] + a[:, 3]) / 2).unsqueeze(1)
        pw, ph = (a[:, 2] - a[:, 0]).unsqueeze(1), (a[:, 3] - a[:, 1]).unsqueeze(1)
        max_ratio = abs(math.log(wh_ratio_clip))
        gw = pw * dw.clamp(-max_ratio, max_ratio).exp()
        gh = ph * dh.clamp(-max_ratio, max_ratio).exp()
        gx, gy = px + pw * dx, py + ph * dy
        da, db = da.clamp(-0.5, 0.5), db.clamp(-0.5, 0.5)
        if self.official_rounding:
            return _official_quad_to_rbox(gx, gy, gw, gh, da, db, self.angle_version).view(n, 5 * k)
        # vertices relative to the centre: top, right, bottom, left (clockwise on screen)
        top = torch.stack([da * gw, -gh / 2], dim=-1)
        right = torch.stack([gw / 2, db * gh], dim=-1)
        rel = torch.stack([top, right, -top, -right], dim=-2)  # (N, k, 4, 2)
        dist = rel.norm(dim=-1, keepdim=True)
        rel = rel * (dist.amax(-2, keepdim=True) / dist.clamp_min(torch.finfo(dist.dtype).tiny))
        rb = _rectangle_to_rbox(rel, gx, gy, self.angle_version)
        return rb.view(n, 5 * k)


def _official_quad_to_rbox(
    gx: Tensor, gy: Tensor, gw: Tensor, gh: Tensor, da: Tensor, db: Tensor, version: str
) -> Tensor:
    """MMRotate's order of operations for the midpoint-offset quadrilateral -> rectangle -> rbox: vertices in
    absolute coordinates, half-diagonals scaled to the longest, ``poly2obb`` on the absolute corners."""
    ctr = torch.stack([gx, gy], dim=-1).unsqueeze(-2)
    quad = torch.stack(
        [
            torch.stack([gx + da * gw, gy - gh * 0.5], dim=-1),  # top
            torch.stack([gx + gw * 0.5, gy + db * gh], dim=-1),  # right
            torch.stack([gx - da * gw, gy + gh * 0.5], dim=-1),  # bottom
            torch.stack([gx - gw * 0.5, gy - db * gh], dim=-1),  # left
        ],
        dim=-2,
    )
    rel = quad - ctr
    dist = torch.sqrt(rel[..., 0] * rel[..., 0] + rel[..., 1] * rel[..., 1]).unsqueeze(-1)
    rect = rel * (dist.amax(-2, keepdim=True) / dist.clamp_min(torch.finfo(dist.dtype).tiny)) + ctr
    p1, p2, p3, p4 = rect.unbind(-2)
    e1 = torch.sqrt((p1[..., 0] - p2[..., 0]) ** 2 + (p1[..., 1] - p2[..., 1]) ** 2)
    e2 = torch.sqrt((p2[..., 0] - p3[..., 0]) ** 2 + (p2[..., 1] - p3[..., 1]) ** 2)
    a1 = torch.atan2(p2[..., 1] - p1[..., 1], p2[..., 0] - p1[..., 0])
    a2 = torch.atan2(p4[..., 1] - p1[..., 1], p4[..., 0] - p1[..., 0])
    angle = torch.where(e1 > e2, a1, a2)
    cx, cy = (p1[..., 0] + p3[..., 0]) / 2.0, (p1[..., 1] + p3[..., 1]) / 2.0
    rb = torch.stack([cx, cy, torch.maximum(e1, e2), torch.minimum(e1, e2), angle], dim=-1)
    if version == "oc":
        return regularize_rbox(rb, "oc")
    return torch.cat([rb[..., :4], _norm_angle(rb[..., 4:], version, half_open=False)], dim=-1)


def _rectangle_to_rbox(rel: Tensor, cx: Tensor, cy: Tensor, version: str) -> Tensor:
    """Rectangle corners (..., 4, 2) around (cx, cy) -> rbox, as MMRotate's ``poly2obb`` (long edge's angle)."""
    p1, p2, p3, p4 = rel.unbind(-2)
    e1, e2 = (p2 - p1).norm(dim=-1), (p3 - p2).norm(dim=-1)
    a1 = torch.atan2(p2[..., 1] - p1[..., 1], p2[..., 0] - p1[..., 0])
    a2 = torch.atan2(p4[..., 1] - p1[..., 1], p4[..., 0] - p1[..., 0])
    angle = torch.where(e1 > e2, a1, a2)
    ctr = (p1 + p3) / 2
    rb = torch.stack([cx + ctr[..., 0], cy + ctr[..., 1], torch.maximum(e1, e2), torch.minimum(e1, e2), angle], dim=-1)
    if version == "oc":
        return regularize_rbox(rb, "oc")
    return torch.cat([rb[..., :4], _norm_angle(rb[..., 4:], version)], dim=-1)


def _hbox_centre_size(hboxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(N, 4) ``(x1, y1, x2, y2)`` -> centre x, centre y, width, height (MMDetection: no ``+ 1``)."""
    return (
        (hboxes[:, 0] + hboxes[:, 2]) * 0.5,
        (hboxes[:, 1] + hboxes[:, 3]) * 0.5,
        hboxes[:, 2] - hboxes[:, 0],
        hboxes[:, 3] - hboxes[:, 1],
    )


class DeltaXYWHCoder:
    """Horizontal-box deltas ``(dx, dy, dw, dh)`` of a horizontal RPN (MMDetection ``DeltaXYWHBBoxCoder``,
    ``clip_border=True``): hboxes ``(x1, y1, x2, y2)`` in, hboxes out. RoI Transformer config: means 0, stds 1."""

    def __init__(
        self,
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    ) -> None:
        self.means = _stats(target_means, 4, "target_means")
        self.stds = _stats(target_stds, 4, "target_stds")

    def __repr__(self) -> str:
        return f"DeltaXYWHCoder(means={self.means}, stds={self.stds})"

    def encode(self, hboxes: Tensor, gt_hboxes: Tensor) -> Tensor:
        """(N, 4) anchors and (N, 4) target hboxes -> (N, 4) normalised deltas."""
        a, g = _check_last(hboxes, 4, "hboxes", "4"), _check_last(gt_hboxes, 4, "gt_hboxes", "4")
        if a.shape != g.shape or a.shape[1] != 4:
            raise ValueError(f"hboxes and gt_hboxes must both be (N, 4), got {tuple(a.shape)} and {tuple(g.shape)}")
        px, py, pw, ph = _hbox_centre_size(a)
        gx, gy, gw, gh = _hbox_centre_size(g)
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(
        self,
        hboxes: Tensor,
        deltas: Tensor,
        max_shape: Sequence[int] | None = None,
        wh_ratio_clip: float = _WH_RATIO_CLIP,
    ) -> Tensor:
        """(N, 4) anchors and (N, 4) deltas -> (N, 4) hboxes; ``max_shape`` = (height, width[, ...]) clips x to
        ``[0, width]`` and y to ``[0, height]`` (MMDetection's ``clip_border``)."""
        a = _check_last(hboxes, 4, "hboxes", "4")
        d = _check_last(deltas, 4, "deltas", "4")
        if a.shape[1] != 4 or d.shape != a.shape:
            raise ValueError(f"hboxes (N, 4) and deltas (N, 4) disagree: {tuple(a.shape)}, {tuple(d.shape)}")
        d = d * d.new_tensor(self.stds) + d.new_tensor(self.means)
        px, py, pw, ph = _hbox_centre_size(a)
        max_ratio = abs(math.log(wh_ratio_clip))
        gw = pw * d[:, 2].clamp(-max_ratio, max_ratio).exp()
        gh = ph * d[:, 3].clamp(-max_ratio, max_ratio).exp()
        gx, gy = px + pw * d[:, 0], py + ph * d[:, 1]
        out = torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], dim=1)
        if max_shape is not None:
            h, w = max_shape[0], max_shape[1]  # no float(): a traced export keeps them graph values
            out = torch.stack(
                [out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)], dim=1
            )
        return out


class DeltaXYWHAHCoder:
    """Horizontal RoI ``(x1, y1, x2, y2)`` <-> rbox deltas ``(dx, dy, dw, dh, da)``: the RRoI learner of RoI
    Transformer (MMRotate ``DeltaXYWHAHBBoxCoder``). Official config: ``angle_version="le90"``, ``norm_factor=2``,
    ``edge_swap=True``, means 0, stds ``(0.1, 0.1, 0.2, 0.2, 1)``.

    The angle delta is the target's absolute angle (the RoI has none) divided by ``norm_factor * pi``; with
    ``edge_swap`` the target is re-expressed with w and h exchanged when that gives the smaller angle, and decoded
    boxes come back with ``w >= h``. Angles are wrapped with MMRotate's ``(a - start) % pi + start`` as is (a
    result that rounds to ``start + pi`` stays there), so decoded RoIs equal the official ones float for float.
    No clamping of centres (the official decode ignores ``max_shape``).
    """

    def __init__(
        self,
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0, 0.0),
        target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2, 1.0),
        angle_version: str = "le90",
        norm_factor: float | None = 2.0,
        edge_swap: bool = True,
    ) -> None:
        self.means = _stats(target_means, 5, "target_means")
        self.stds = _stats(target_stds, 5, "target_stds")
        self.angle_version = _check_version(angle_version)
        self.norm_factor = norm_factor
        self.edge_swap = edge_swap

    def __repr__(self) -> str:
        return (
            f"DeltaXYWHAHCoder(means={self.means}, stds={self.stds}, angle_version={self.angle_version!r}, "
            f"norm_factor={self.norm_factor}, edge_swap={self.edge_swap})"
        )

    def encode(self, hboxes: Tensor, gt_rboxes: Tensor) -> Tensor:
        """(N, 4) horizontal RoIs and (N, 5) target rboxes -> (N, 5) normalised deltas."""
        a = _check_last(hboxes, 4, "hboxes", "4")
        g = _check_last(gt_rboxes, 5, "gt_rboxes", "5")
        if a.shape[1] != 4 or g.shape[1] != 5 or a.shape[0] != g.shape[0]:
            raise ValueError(f"hboxes (N, 4) and gt_rboxes (N, 5) disagree: {tuple(a.shape)}, {tuple(g.shape)}")
        px, py, pw, ph = _hbox_centre_size(a)
        gx, gy, gw, gh, ga = g.unbind(1)
        gw, gh, ga = _closest_edges(gw, gh, ga, self.angle_version, self.edge_swap, half_open=False)
        da = ga / (self.norm_factor * math.pi) if self.norm_factor else ga
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph), da], dim=1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(self, hboxes: Tensor, deltas: Tensor, wh_ratio_clip: float = _WH_RATIO_CLIP) -> Tensor:
        """(N, 4) horizontal RoIs and (N, 5 * k) deltas -> (N, 5 * k) rboxes."""
        a = _check_last(hboxes, 4, "hboxes", "4")
        d = _check_last(deltas, 5, "deltas", "5 * k")
        if a.shape[1] != 4 or a.shape[0] != d.shape[0]:
            raise ValueError(f"hboxes (N, 4) and deltas (N, 5 * k) disagree: {tuple(a.shape)}, {tuple(d.shape)}")
        n, k = d.shape[0], d.shape[1] // 5
        d = d.view(n, k, 5) * d.new_tensor(self.stds) + d.new_tensor(self.means)
        dx, dy, dw, dh, da = d.unbind(-1)
        if self.norm_factor:
            da = da * (self.norm_factor * math.pi)
        px, py, pw, ph = (v.unsqueeze(1) for v in _hbox_centre_size(a))
        max_ratio = abs(math.log(wh_ratio_clip))
        gw = pw * dw.clamp(-max_ratio, max_ratio).exp()
        gh = ph * dh.clamp(-max_ratio, max_ratio).exp()
        gx, gy = px + pw * dx, py + ph * dy
        ga = _norm_angle(da, self.angle_version, half_open=False)
        if self.edge_swap:
            gw, gh, ga = _long_edge_first(gw, gh, ga, self.angle_version, half_open=False)
        return torch.stack([gx, gy, gw, gh, ga], dim=-1).view(n, 5 * k)
