"""Minimum-area rectangles of quadrilaterals chosen exactly as OpenCV's ``cv2.minAreaRect`` chooses them.

MMRotate turns every DOTA polygon into an rbox with ``cv2.minAreaRect`` (``poly2obb_np``), for training targets
and for the ground truth of its evaluation. Integer DOTA quadrilaterals often have two minimal rectangles of
(nearly) equal area; OpenCV's pick follows from its arithmetic, reproduced here in pure torch:

1. the convex hull (``convexHull(clockwise=False)``): hull vertices counter-clockwise with y pointing up
   (clockwise on screen), starting at the rightmost point (largest x, then y), then cyclically shifted to start at
   the smallest index when the hull indices run cyclically ascending, or at the largest when they run descending;
2. rotating calipers in float32: the caliper sides start at the lowest, rightmost, highest and leftmost hull
   vertices (first index on ties); each step turns onto the hull edge that lies furthest clockwise (a float32
   cross-product sign test, the earlier caliper on ties) and measures the rectangle; the last candidate with
   ``area <= best`` wins;
3. the corner and side vectors of that candidate (float32), the centre, the sides (``sqrt`` in double) and the
   ``RotatedRect`` convention of OpenCV >= 4.5.1: width = the second side, angle ``-atan2(s1.x, s1.y)`` in
   degrees (-90 with the sides exchanged when the first side points straight along +y).

Inputs whose four points are not all hull vertices (a point inside, three collinear, duplicates) run the same
calipers on their 3- or 2-point hull one polygon at a time (with repeated corners the index OpenCV keeps can
differ: about 1 in 600 random small-integer quads). Written from reading OpenCV's ``convhull.cpp`` and
``rotcalipers.cpp``; checked against ``cv2.minAreaRect`` (4.14) in the tests: identical on the 984 real DOTA
labels of the sample and on random integer and float quadrilaterals.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["min_area_rect_opencv"]


def _hull_order(p: Tensor) -> Tensor:
    """(N, 4) hull order of (N, 4, 2) float64 points that are all hull vertices (OpenCV's start and direction)."""
    n = p.shape[0]
    dev = p.device
    ctr = p.mean(dim=1, keepdim=True)
    ang = torch.atan2(p[..., 1] - ctr[..., 1], p[..., 0] - ctr[..., 0])
    order = torch.argsort(ang, dim=1)  # counter-clockwise with y up (clockwise on screen)
    # start at the last point in (x, y, index) order: the rightmost
    last = torch.zeros(n, dtype=torch.long, device=dev)
    for j in range(1, 4):
        xj, yj = p[:, j, 0], p[:, j, 1]
        xl, yl = p[torch.arange(n, device=dev), last, 0], p[torch.arange(n, device=dev), last, 1]
        later = (xj > xl) | ((xj == xl) & (yj >= yl))
        last = torch.where(later, torch.full_like(last, j), last)
    pos = (order == last[:, None]).long().argmax(dim=1)
    ar = torch.arange(4, device=dev)
    order = order.gather(1, (pos[:, None] + ar) % 4)
    # cyclic shift to the smallest / largest index when the indices run cyclically ascending / descending
    steps = (order.roll(-1, dims=1) - order) % 4
    asc, desc = (steps == 1).all(dim=1), (steps == 3).all(dim=1)
    start = torch.where(asc, (order == 0).long().argmax(1), torch.where(desc, (order == 3).long().argmax(1), 0))
    return order.gather(1, (start[:, None] + ar) % 4)


def _calipers(h: Tensor) -> Tensor:
    """Rotating calipers on (B, n, 2) float32 hull points (OpenCV order, n >= 3) -> (B, 5) float64
    ``(cx, cy, width, height, angle_degrees)`` as ``cv2.minAreaRect`` returns them."""
    b, n = h.shape[:2]
    dev = h.device
    rows = torch.arange(b, device=dev)
    x, y = h[..., 0], h[..., 1]
    d32 = torch.roll(h, -1, dims=1) - h  # float32 differences, as OpenCV's float points
    vx, vy = d32[..., 0], d32[..., 1]
    d64 = d32.double()
    inv = (1.0 / torch.sqrt(d64[..., 0] ** 2 + d64[..., 1] ** 2)).float()
    # extremes: first index of the strict minimum / maximum
    left, right = x.argmin(1), x.argmax(1)
    top, bottom = y.argmax(1), y.argmin(1)
    seq = torch.stack([bottom, right, top, left], dim=1)  # (B, 4)
    best = torch.full((b,), float(torch.finfo(torch.float32).max), device=dev)
    rec = {k: torch.zeros(b, device=dev) for k in ("a", "b", "w", "h")}
    rec_left = torch.zeros(b, dtype=torch.long, device=dev)
    rec_bottom = torch.zeros(b, dtype=torch.long, device=dev)

    def at(t: Tensor, i: Tensor) -> Tensor:
        return t[rows, i]

    for _ in range(n):
        # each caliper's next hull edge turned into caliper 0's frame (exact sign swaps); the main caliper is the
        # one whose edge lies furthest clockwise: v_i is right of v_main when v_i.y * v_main.x + (-v_i.x) * v_main.y
        # < 0 (float32 products and sum); the earlier caliper wins ties
        ex = [at(vx, seq[:, j]) for j in range(4)]
        ey = [at(vy, seq[:, j]) for j in range(4)]
        rot_x = torch.stack([ex[0], ey[1], -ex[2], -ey[3]], 1)
        rot_y = torch.stack([ey[0], -ex[1], -ey[2], ex[3]], 1)
        main = torch.zeros(b, dtype=torch.long, device=dev)
        for j in range(1, 4):
            mx, my = rot_x[rows, main], rot_y[rows, main]
            right_of = (rot_y[:, j] * mx + (-rot_x[:, j]) * my) < 0
            main = torch.where(right_of, torch.full_like(main, j), main)
        pidx = seq[rows, main]
        lx, ly = at(vx, pidx) * at(inv, pidx), at(vy, pidx) * at(inv, pidx)
        base_a = torch.stack([lx, ly, -lx, -ly], 1)[rows, main]
        base_b = torch.stack([ly, -lx, -ly, lx], 1)[rows, main]
        seq[rows, main] = (pidx + 1) % n
        dx, dy = at(x, seq[:, 1]) - at(x, seq[:, 3]), at(y, seq[:, 1]) - at(y, seq[:, 3])
        width = dx * base_a + dy * base_b
        dx, dy = at(x, seq[:, 2]) - at(x, seq[:, 0]), at(y, seq[:, 2]) - at(y, seq[:, 0])
        height = -dx * base_b + dy * base_a
        area = width * height
        take = area <= best
        best = torch.where(take, area, best)
        for key, val in (("a", base_a), ("b", base_b), ("w", width), ("h", height)):
            rec[key] = torch.where(take, val, rec[key])
        rec_left = torch.where(take, seq[:, 3], rec_left)
        rec_bottom = torch.where(take, seq[:, 0], rec_bottom)
    a1, b1 = rec["a"], rec["b"]
    a2, b2 = -b1, a1
    c1 = a1 * at(x, rec_left) + at(y, rec_left) * b1
    c2 = a2 * at(x, rec_bottom) + at(y, rec_bottom) * b2
    idet = 1.0 / (a1 * b2 - a2 * b1)
    px = (c1 * b2 - c2 * b1) * idet
    py = (a1 * c2 - a2 * c1) * idet
    o1x, o1y = a1 * rec["w"], b1 * rec["w"]
    o2x, o2y = a2 * rec["h"], b2 * rec["h"]
    cx = px + (o1x + o2x) * 0.5
    cy = py + (o1y + o2y) * 0.5
    len1 = torch.sqrt(o1x.double() ** 2 + o1y.double() ** 2).float().double()
    len2 = torch.sqrt(o2x.double() ** 2 + o2y.double() ** 2).float().double()
    # RotatedRect: width = |side 2|, height = |side 1|, angle = -atan2(side1.x, side1.y); a side 1 pointing
    # straight down (+y) keeps angle -90 degrees with the sides exchanged
    up = (o1x == 0) & (o1y > 0)
    ang = torch.where(up, torch.full_like(len1, -math.pi / 2), -torch.atan2(o1x.double(), o1y.double()))
    w, hh = torch.where(up, len1, len2), torch.where(up, len2, len1)
    deg = (ang * 180 / math.pi).float().double()
    return torch.stack([cx.double(), cy.double(), w, hh, deg], dim=1)


def _small_hull(q: Tensor) -> list[int]:
    """OpenCV-ordered hull indices of one (4, 2) float64 quadrilateral whose points are not all hull vertices."""
    pts = q.tolist()
    order = sorted(range(4), key=lambda i: (pts[i][0], pts[i][1], i))
    uniq: list[int] = []
    for i in order:  # drop duplicates (first index kept)
        if not any(pts[i] == pts[j] for j in uniq):
            uniq.append(i)
    if len(uniq) == 1:
        return uniq

    def cross(o: int, a: int, c: int) -> float:
        return (pts[a][0] - pts[o][0]) * (pts[c][1] - pts[o][1]) - (pts[a][1] - pts[o][1]) * (pts[c][0] - pts[o][0])

    # Andrew's monotone chain without collinear points: counter-clockwise with y up, from the leftmost point
    lower: list[int] = []
    upper: list[int] = []
    for i in uniq:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], i) <= 0:
            lower.pop()
        lower.append(i)
    for i in reversed(uniq):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], i) <= 0:
            upper.pop()
        upper.append(i)
    hull = lower[:-1] + upper[:-1]
    if len(hull) <= 2:
        return [uniq[-1], uniq[0]]
    s = hull.index(uniq[-1])  # OpenCV starts at the rightmost point
    hull = hull[s:] + hull[:s]
    m = len(hull)
    descents = sum(hull[(k + 1) % m] < hull[k] for k in range(m))
    if descents in (1, m - 1):  # cyclically ascending (one descent) or descending (one ascent)
        s = hull.index(min(hull) if descents == 1 else max(hull))
        hull = hull[s:] + hull[:s]
    return hull


def min_area_rect_opencv(polys: Tensor) -> Tensor:
    """``cv2.minAreaRect`` of each (N, 4, 2) quadrilateral (taken as float32, as MMRotate passes them).

    Returns (N, 5) float64 ``(cx, cy, width, height, angle)`` with the angle in **degrees**, OpenCV's
    ``RotatedRect`` fields (width along the direction ``angle``; not regularized).
    """
    p32 = polys.to(torch.float32)
    p64 = p32.double()
    n = p32.shape[0]
    out = torch.zeros(n, 5, dtype=torch.float64, device=polys.device)
    if n == 0:
        return out
    # all four points are hull vertices <=> each point is strictly outside the triangle of the other three,
    # i.e. the two diagonals' endpoints lie strictly on either side in one of the three pairings
    def side(a: int, c: int, d: int) -> Tensor:
        pa, pc, pd = p64[:, a], p64[:, c], p64[:, d]
        return torch.sign((pc[:, 0] - pa[:, 0]) * (pd[:, 1] - pa[:, 1]) - (pc[:, 1] - pa[:, 1]) * (pd[:, 0] - pa[:, 0]))

    s = {(a, c, d): side(a, c, d) for a in range(4) for c in range(4) for d in range(4) if len({a, c, d}) == 3}
    nondeg = torch.ones(n, dtype=torch.bool, device=polys.device)
    for a, c, d in s:
        nondeg &= s[(a, c, d)] != 0  # no three points collinear (also excludes duplicates)
    inside = torch.zeros(n, dtype=torch.bool, device=polys.device)
    for i in range(4):
        a, c, d = [j for j in range(4) if j != i]
        si = [s[(a, c, i)], s[(c, d, i)], s[(d, a, i)]]
        inside |= (si[0] == si[1]) & (si[1] == si[2])
    regular = nondeg & ~inside
    if bool(regular.any()):
        idx = torch.nonzero(regular).flatten()
        order = _hull_order(p64[idx])
        hull = p32[idx].gather(1, order[..., None].expand(-1, 4, 2))
        out[idx] = _calipers(hull)
    for i in torch.nonzero(~regular).flatten().tolist():
        hull_idx = _small_hull(p64[i])
        pts = p32[i, hull_idx]
        if len(hull_idx) >= 3:
            out[i] = _calipers(pts[None])[0]
        elif len(hull_idx) == 2:  # a segment: RotatedRect of its two ends
            c = (pts[0] + pts[1]) * 0.5
            d = pts[0] - pts[1]
            length = torch.sqrt(d.double()[0] ** 2 + d.double()[1] ** 2).float().double()
            w, hh, ang = 0.0, length, -math.pi / 2
            if d[0] == 0:
                w, hh = length, 0.0
            elif d[1] < 0:
                ang, w, hh = math.atan2(float(d[1]), float(d[0])), length, 0.0
            elif d[1] > 0:
                ang = -math.atan2(float(d[0]), float(d[1]))
            deg = float(torch.tensor(ang * 180 / math.pi, dtype=torch.float32))
            out[i] = torch.tensor([float(c[0]), float(c[1]), float(w), float(hh), deg], dtype=torch.float64)
        else:  # a point: OpenCV's default angle -90 degrees
            out[i, :2] = pts[0].double()
            out[i, 4] = -90.0
    return out
