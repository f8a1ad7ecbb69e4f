"""Exact overlaps of rotated boxes and quadrilaterals: IoU and IoF, pairwise (N x M) or aligned (N).

Quadrilaterals. The intersection of two convex polygons is bounded by the pieces of each polygon's edges that lie
inside the other one, so its area is Green's integral ``1/2 * sum cross(a, b)`` over those pieces. Each edge
is clipped against the other polygon's half-planes with one vectorised Cyrus-Beck pass: no vertex lists, no
sorting, fixed shapes, so the same code runs on any device. Edges lying on the same line are counted once
(same direction) or cancel (opposite directions); "on the same line" uses a tolerance of 1.5e-8 of the pair's
size (the square root of float64 eps balances that tie error against the conditioning of near-parallel
crossings, so the worst case is ~1e-8 relative and typical cases are exact to float64 rounding).

Rotated boxes are rectangles, which allows a cheaper exact method (:func:`_rect_intersection`, 2-5x faster): the
second box is clipped in the first one's own frame, where that one is an axis-aligned box, and the arcs along its
boundary come from a closed-form integral, so every crossing point is computed once and collinear edges need no
tie rule (float64 rounding only; grid-aligned boxes are exact).

Precision and memory. Pairs are computed in float64 whatever the input dtype (quadrilateral pairs centred on their
joint bounding box, rectangle pairs in the first one's frame, so 1e4-pixel coordinates stay exact in float32);
results come back in the promoted input dtype. Pairs whose axis-aligned envelopes do not overlap are exactly 0 and
never reach the exact computation; the rest is processed in chunks (``_MAX_PAIRS``, ``_RECT_CHUNK``), so memory
stays bounded for any N x M.

Non-convex (but simple) quadrilaterals, which appear in DOTA ground truth, are split into two triangles
along the diagonal at their reflex vertex; self-intersecting quadrilaterals raise ``ValueError``.
Zero-area boxes/polygons give 0 (never NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lsknet.ops.boxes import check_polys, check_rboxes

__all__ = ["poly_iof", "poly_iou", "rbox_iof", "rbox_iou"]

_MAX_PAIRS = 1 << 12  # pairs per exact-computation chunk on CPU (temporaries stay in cache)
_MAX_PAIRS_GPU = 1 << 18  # pairs per chunk on accelerators (~200 MB of float64 temporaries)
_MAX_ENVELOPE = 1 << 22  # pairs per envelope pre-filter chunk (bool matrix)
_RECT_CHUNK = 2048  # rectangle pairs per exact-computation chunk on CPU (temporaries stay in cache)
_TIE_TOL = 1.5e-8  # relative distance under which an edge counts as lying on a line
_CONVEX_TOL = 1e-9  # relative turn under which a vertex counts as straight


# ----------------------------------------------------------------------------------------------- polygons
def _orient(polys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """float64 polygons (N, K, 2) -> (positively oriented polygons, areas (N,), envelopes (N, 4)); no checks, fixed
    shapes (the part of :func:`_prepare` that graph exports of convex boxes use)."""
    p = polys.to(torch.float64)
    local = p - p.mean(1, keepdim=True)  # centred: the shoelace sum cancels badly at large coordinates
    x, y = local[..., 0], local[..., 1]
    area2 = (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1)
    p = torch.where((area2 < 0).view(-1, 1, 1), p.flip(-2), p)
    area = area2.abs() / 2
    env = torch.cat([p.amin(1), p.amax(1)], dim=-1)
    return p, area, env


def _prepare(polys: Tensor, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """float64 polygons -> (pieces (N, T, K, 2) positively oriented, areas (N,), envelopes (N, 4))."""
    p, area, env = _orient(polys)
    d = p.roll(-1, 1) - p  # edges
    dprev = d.roll(1, 1)
    turn = dprev[..., 0] * d[..., 1] - dprev[..., 1] * d[..., 0]  # (N, 4) cross at each vertex
    reflex = turn < -_CONVEX_TOL * dprev.norm(dim=-1) * d.norm(dim=-1)
    nreflex = reflex.sum(-1)
    if p.shape[0] and bool((nreflex > 1).any()):
        bad = torch.nonzero(nreflex > 1).flatten()[:5].tolist()
        raise ValueError(f"{name} contains self-intersecting quadrilaterals (rows {bad}); expected simple polygons")
    if p.shape[0] == 0 or not bool(reflex.any()):
        return p.unsqueeze(1), area, env
    # split every quad into two triangles along the diagonal through its reflex vertex (vertex 0 if convex)
    r = torch.where(reflex.any(-1), turn.argmin(-1), torch.zeros_like(nreflex))
    order = (r.view(-1, 1) + torch.arange(4, device=p.device)) % 4
    q = p.gather(1, order.unsqueeze(-1).expand(-1, 4, 2))
    tris = torch.stack([q[:, [0, 1, 2]], q[:, [0, 2, 3]]], dim=1)  # (N, 2, 3, 2)
    return tris, area, env


def _clip_pass(px: Tensor, py: Tensor, qx: Tensor, qy: Tensor, scale: Tensor, second: Tensor) -> Tensor:
    """Twice the Green's-integral contribution of polygon p's edges clipped to convex polygon q.

    Coordinates are (K, E) / (L, E) with the pair dimension E last, so every elementwise op runs over long
    contiguous rows. The pair axis holds each pair twice, first polygon clipped to the second, then the second to
    the first (K == L); ``second`` (E,) marks the latter half: there an edge lying on a same-direction edge line
    of q is dropped, because that piece was already counted for the first polygon.
    """
    dx, dy = px.roll(-1, 0) - px, py.roll(-1, 0) - py  # p's edges (K, E)
    ex, ey = qx.roll(-1, 0) - qx, qy.roll(-1, 0) - qy  # q's edges (L, E)
    c = ex * qy - ey * qx  # cross(e_l, q_l)
    # n0[k, l] = cross(e_l, p_k - q_l) >= 0 when p's vertex k is inside q's edge line l: (K, L, E)
    n0 = torch.addcmul(torch.addcmul(-c, ex, py.unsqueeze(1)), ey, px.unsqueeze(1), value=-1)
    nd = n0 - n0.roll(-1, 0)  # n0 - n1 along p's edge k (its end is vertex k + 1)
    tol = _TIE_TOL * torch.sqrt(ex * ex + ey * ey) * scale  # (L, E) (no hypot: graph exports lack it)
    near = n0.abs() <= tol
    tie = near & near.roll(-1, 0)  # the whole edge lies on the line: decided by the tie rule, not clipped
    # edge k of p lies on edge l's line of q in one pass exactly when edge l lies on edge k's line in the other:
    # one-sided ties (an edge a hair longer than the tolerance on one side) would drop both pieces or count both
    both = tie.unflatten(-1, (2, -1))
    tie = (both[..., 0, :] | both[..., 1, :].transpose(0, 1)).unsqueeze(-2)
    tie = torch.cat([tie, tie.transpose(0, 1)], -2).flatten(-2)
    nd.masked_fill_(tie, 0.0)  # a tie constrains nothing here
    r = n0 / nd  # crossing parameter; x/0 is masked out below
    t_lo = r.masked_fill(nd >= 0, -torch.inf).amax(1).clamp_min(0)  # entering the half-plane
    t_hi = r.masked_fill(nd <= 0, torch.inf).amin(1).clamp_max(1)  # leaving it
    empty = (nd == 0) & (n0 < -tol) & ~tie  # parallel and outside
    if torch.jit.is_tracing() or bool(tie.any()):  # rare: collinear edges (graph exports keep the branch)
        same = torch.addcmul(dx.unsqueeze(1) * ex, dy.unsqueeze(1), ey) > 0
        empty = empty | (tie & same & second)
    span = (t_hi - t_lo).clamp_min(0).masked_fill(empty.any(1), 0.0)
    return (span * (px * dy - py * dx)).sum(0)


def _intersection(pa: Tensor, pb: Tensor) -> Tensor:
    """Intersection areas of aligned polygon pairs; ``pa`` (E, T, K, 2), ``pb`` (E, S, K, 2) convex pieces."""
    e, t, k = pa.shape[:3]
    s = pb.shape[1]
    lo = torch.minimum(pa.flatten(1, 2).amin(1), pb.flatten(1, 2).amin(1))
    hi = torch.maximum(pa.flatten(1, 2).amax(1), pb.flatten(1, 2).amax(1))
    ref = ((lo + hi) / 2).view(e, 1, 1, 2)
    scale = ((hi - lo).amax(-1) / 2).clamp_min(torch.finfo(torch.float64).tiny)
    a = (pa - ref).unsqueeze(2).expand(e, t, s, k, 2).reshape(-1, k, 2)
    b = (pb - ref).unsqueeze(1).expand(e, t, s, k, 2).reshape(-1, k, 2)
    m = a.shape[0]
    # both passes (a clipped to b, b clipped to a) in one batch, pair dimension last
    p = torch.cat([a, b]).permute(2, 1, 0)  # (2, K, 2M)
    q = torch.cat([b, a]).permute(2, 1, 0)
    sc = scale.view(e, 1).expand(e, t * s).reshape(-1).repeat(2)
    second = torch.arange(2 * m, device=a.device) >= m
    twice = _clip_pass(p[0], p[1], q[0], q[1], sc, second)
    return ((twice[:m] + twice[m:]).view(e, t * s).sum(1) / 2).clamp_min(0)


def _pair_overlaps(pa, area_a, pb, area_b, ia: Tensor, ib: Tensor, mode: str) -> Tensor:
    """IoU or IoF (float64) for the listed pairs, in chunks of ``_MAX_PAIRS``."""
    out = []
    step = _MAX_PAIRS if ia.device.type == "cpu" else max(_MAX_PAIRS, _MAX_PAIRS_GPU)
    for s in range(0, ia.numel(), step):
        out.append(_pair_block(pa, area_a, pb, area_b, ia[s : s + step], ib[s : s + step], mode))
    return torch.cat(out) if out else area_a.new_zeros(0)


def _pair_block(pa, area_a, pb, area_b, i: Tensor, j: Tensor, mode: str) -> Tensor:
    """IoU or IoF (float64) of the pairs ``(i, j)`` in one pass (no chunking: also the graph-export path)."""
    aa, ab = area_a[i], area_b[j]
    inter = torch.minimum(_intersection(pa[i], pb[j]), torch.minimum(aa, ab))
    ok = (aa > 0) & (ab > 0)
    denom = aa if mode == "iof" else aa + ab - inter
    return torch.where(ok, inter / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(inter))


def _overlaps(
    a: Tensor, b: Tensor, aligned: bool, mode: str, names: tuple[str, str], out_dtype: torch.dtype | None = None
) -> Tensor:
    """``a``/``b``: validated (N, 4, 2) / (M, 4, 2) polygons; result in ``out_dtype`` (default: promoted)."""
    out_dtype = out_dtype or torch.promote_types(a.dtype, b.dtype)
    _check_aligned(a.shape[0], b.shape[0], aligned, names)
    pa, area_a, env_a = _prepare(a, names[0])
    pb, area_b, env_b = _prepare(b, names[1])
    if pa.shape[1] != pb.shape[1] or pa.shape[2] != pb.shape[2]:  # one side non-convex: both as triangles
        pa = pa if pa.shape[2] == 3 else _prepare_tris(pa)
        pb = pb if pb.shape[2] == 3 else _prepare_tris(pb)
    return _fill(env_a, env_b, aligned, out_dtype, lambda i, j: _pair_overlaps(pa, area_a, pb, area_b, i, j, mode))


def _check_aligned(n: int, m: int, aligned: bool, names: tuple[str, str]) -> None:
    if aligned and n != m:
        raise ValueError(f"aligned=True needs the same number of {names[0]} and {names[1]}, got {n} and {m}")


def _fill(env_a: Tensor, env_b: Tensor, aligned: bool, out_dtype: torch.dtype, pairs) -> Tensor:
    """(N,) aligned or (N, M) overlaps from ``pairs(i, j)`` (float64 values of the listed pairs), which only sees
    the pairs whose envelopes (N, 4) / (M, 4) overlap: the rest is exactly 0."""
    n, m = env_a.shape[0], env_b.shape[0]
    if aligned:
        idx = torch.arange(n, device=env_a.device)
        return pairs(idx, idx).to(out_dtype)
    result = torch.zeros((n, m), dtype=out_dtype, device=env_a.device)  # the only N x M allocation
    if n == 0 or m == 0:
        return result
    rows = max(1, _MAX_ENVELOPE // m)
    for r0 in range(0, n, rows):
        ea = env_a[r0 : r0 + rows].unsqueeze(1)
        eb = env_b.unsqueeze(0)
        hit = (ea[..., 0] < eb[..., 2]) & (eb[..., 0] < ea[..., 2])
        hit &= (ea[..., 1] < eb[..., 3]) & (eb[..., 1] < ea[..., 3])
        i, j = torch.nonzero(hit, as_tuple=True)
        i = i + r0
        result[i, j] = pairs(i, j).to(out_dtype)
    return result


def _rbox_overlaps(a: Tensor, b: Tensor, aligned: bool, mode: str) -> Tensor:
    """Rotated boxes as rectangles (:func:`_rect_overlaps`), float64 whatever the input dtype."""
    a, b = check_rboxes(a, "a"), check_rboxes(b, "b")
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    _check_aligned(a.shape[0], b.shape[0], aligned, ("a", "b"))
    fa, fb = _rect_frames(a), _rect_frames(b)
    env_a, env_b = _rect_envelopes(fa), _rect_envelopes(fb)
    fa, fb = fa.t().contiguous(), fb.t().contiguous()
    return _fill(env_a, env_b, aligned, out_dtype, lambda i, j: _rect_overlaps(fa, fb, i, j, mode))


def _prepare_tris(pieces: Tensor) -> Tensor:
    """Convex quads (N, 1, 4, 2) -> two triangles (N, 2, 3, 2) along the 0-2 diagonal."""
    q = pieces[:, 0]
    return torch.stack([q[:, [0, 1, 2]], q[:, [0, 2, 3]]], dim=1)


# ----------------------------------------------------------------------------------------------- rectangles
_WRAP_TOL = 1e-9  # relative distance to a full turn under which the centre test settles the turn count


def _rect_frames(rboxes: Tensor) -> Tensor:
    """(N, 5) rboxes -> float64 (6, N): centre x, y, half width, half height (absolute), cos, sin of theta."""
    r = rboxes.to(torch.float64)
    t = r[:, 4]
    return torch.stack([r[:, 0], r[:, 1], r[:, 2].abs() / 2, r[:, 3].abs() / 2, torch.cos(t), torch.sin(t)])


def _rect_envelopes(frames: Tensor) -> Tensor:
    """Axis-aligned envelopes (N, 4) = (x1, y1, x2, y2) of rectangles given as frames (6, N) (no trigonometry)."""
    x, y, a, b, c, s = frames
    c, s = c.abs(), s.abs()
    ex, ey = a * c + b * s, a * s + b * c
    return torch.stack([x - ex, y - ey, x + ex, y + ey], 1)


def _rect_intersection(fa: Tensor, fb: Tensor) -> Tensor:
    """Intersection areas (float64, (E,)) of aligned rectangle pairs given as frames (6, E) (:func:`_rect_frames`).

    Everything happens in rectangle a's own frame, where it is the box [-a, a] x [-b, b]: b's four corners are
    computed once, each of b's edges is clipped to the box (Liang-Barsky), and the boundary of the intersection is
    those pieces joined by arcs along the box's boundary. Green's integral ``x dy - y dx`` over a piece from S to E
    is cross(S, E); along the box's boundary, counter-clockwise from the point (a, 0), it is
    ``G(x, y) = ab (5 - 2 s) - 2 s b x + x y`` with s = +-1 the sign of y (linear on each side, checked side by
    side), so twice the area is ``sum(cross(S, E) + G(S) - G(E))`` modulo one full turn (8ab). Every crossing point
    is computed once and used by both the piece and the arc, and a piece lying on the box's boundary contributes 0
    (exactly so when it lies exactly on it: such pieces are dropped), so collinear edges need no tie rule. Pieces
    joined at one of b's corners inside the box see the same point twice, whose G values cancel. The full-turn
    ambiguity (nothing or all of a) is settled by whether a's centre lies in b. Pairs whose edges are exactly
    parallel (same angle, quarter turns) take the overlap of two axis-aligned boxes, exact for boxes on a grid
    (exact IoU ties stay ties). Zero-area rectangles give 0.
    """
    xa, ya, a, b, ca, sa = fa
    xb, yb, p, q, cb, sb = fb
    dx, dy = xb - xa, yb - ya
    u, v = dx * ca + dy * sa, dy * ca - dx * sa  # b's centre in a's frame
    c, s = ca * cb + sa * sb, ca * sb - sa * cb  # b's rotation relative to a
    k = _corner_signs(fa.dtype, fa.device)
    half = torch.stack([a, b]).unsqueeze(1)  # (2, 1, E)
    # corners (2, 4, E) counter-clockwise: centre + k1 * p (c, s) + k2 * q (-s, c)
    pc, ps, qs, qc = p * c, p * s, q * s, q * c
    pt = torch.stack([u + k[0] * pc - k[1] * qs, v + k[0] * ps + k[1] * qc])
    nxt = pt.roll(-1, 1)  # each edge's end
    d = nxt - pt
    # parameters where each edge crosses the box's side lines (+-inf when parallel; NaN when it lies on one: the
    # piece is then dropped, as it lies on the boundary)
    t1, t2 = (-half - pt) / d, (half - pt) / d
    enter, leave = torch.minimum(t1, t2), torch.maximum(t1, t2)
    tlo = torch.maximum(enter[0], enter[1]).clamp_min(0)  # (4, E)
    thi = torch.minimum(leave[0], leave[1]).clamp_max(1)
    live = thi > tlo
    ends = torch.cat([pt + tlo * d, nxt + (thi - 1) * d], 1)  # (2, 8, E): starts, ends (thi == 1: the next corner)
    gx, gy = ends[0], ends[1]
    ab = a * b
    g = torch.copysign(torch.addcmul(ab, b, gx), gy).mul_(-2).add_(5 * ab).addcmul_(gx, gy)
    piece = gx[:4] * gy[4:] - gy[:4] * gx[4:] + g[:4] - g[4:]
    twice = torch.where(live, piece, 0.0).sum(0)
    full = 8 * ab.clamp_min(torch.finfo(ab.dtype).tiny)
    # twice the area is `twice` modulo `full`, in [0, full]; near 0 or near full (nothing or all of a), whether a's
    # centre (the origin here) lies on the inner side of b's four edges decides
    inside = (d[0] * pt[1] - d[1] * pt[0]).amax(0) <= 0
    off = (inside.to(full.dtype) - 0.5) * (2 * _WRAP_TOL) * full
    inter = (torch.remainder(twice - off, full) + off) / 2
    parallel = s * c == 0
    if torch.jit.is_tracing() or bool(parallel.any()):
        # exactly parallel edges: overlap of two axis-aligned boxes (b's half extents along a's axes)
        ac, as_ = c.abs(), s.abs()
        hx, hy = p * ac + q * as_, p * as_ + q * ac
        ox = torch.minimum(torch.minimum(a, hx) * 2, a + hx - u.abs()).clamp_min(0)
        oy = torch.minimum(torch.minimum(b, hy) * 2, b + hy - v.abs()).clamp_min(0)
        inter = torch.where(parallel, ox * oy, inter)
    cap = 4 * torch.minimum(ab, p * q)
    return torch.where(cap > 0, torch.minimum(inter.clamp_min(0), cap), 0.0)

_CORNERS: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _corner_signs(dtype: torch.dtype, device: torch.device) -> Tensor:
    """(2, 4, 1) signs of the half axes at a rectangle's corners, counter-clockwise (cached per dtype and device)."""
    key = (dtype, device)
    if key not in _CORNERS:
        signs = [[-1.0, 1.0, 1.0, -1.0], [-1.0, -1.0, 1.0, 1.0]]
        _CORNERS[key] = torch.tensor(signs, dtype=dtype, device=device).unsqueeze(-1)
    return _CORNERS[key]


def _rect_overlaps(fa: Tensor, fb: Tensor, i: Tensor, j: Tensor, mode: str) -> Tensor:
    """IoU or IoF (float64) of the rectangle pairs (``fa[i]``, ``fb[j]``), frames as rows (N, 6) / (M, 6), in
    chunks whose temporaries stay in cache on CPU; 0 where the denominator is 0."""
    step = _RECT_CHUNK if i.device.type == "cpu" else _MAX_PAIRS_GPU
    out = [fa.new_zeros(0)]
    for c in range(0, i.numel(), step):
        a, b = fa.index_select(0, i[c : c + step]), fb.index_select(0, j[c : c + step])
        inter = _rect_intersection(a.t(), b.t())
        area_a = 4 * a[:, 2] * a[:, 3]
        denom = area_a if mode == "iof" else area_a + 4 * b[:, 2] * b[:, 3] - inter
        out.append(torch.where(denom > 0, inter / denom, 0.0))
    return torch.cat(out) if len(out) > 2 else out[-1]


# ----------------------------------------------------------------------------------------------- public API
def poly_iou(a: Tensor, b: Tensor, aligned: bool = False) -> Tensor:
    """IoU of quadrilaterals ``a`` (N, 4, 2)|(N, 8) and ``b`` (M, 4, 2)|(M, 8), pixel corners, either orientation.

    Returns (N, M), or (N,) with ``aligned=True``. Convex or simple non-convex quads; exact (see module doc).
    """
    return _overlaps(check_polys(a, "a"), check_polys(b, "b"), aligned, "iou", ("a", "b"))


def poly_iof(a: Tensor, b: Tensor, aligned: bool = False) -> Tensor:
    """Intersection over the area of ``a`` (the "foreground"), quads as in :func:`poly_iou`."""
    return _overlaps(check_polys(a, "a"), check_polys(b, "b"), aligned, "iof", ("a", "b"))


def rbox_iou(a: Tensor, b: Tensor, aligned: bool = False) -> Tensor:
    """IoU of rotated boxes ``a`` (N, 5) and ``b`` (M, 5) = (cx, cy, w, h, theta [rad]).

    Returns (N, M), or (N,) with ``aligned=True``. Any angle convention (the rectangles are what counts).
    """
    return _rbox_overlaps(a, b, aligned, "iou")


def rbox_iof(a: Tensor, b: Tensor, aligned: bool = False) -> Tensor:
    """Intersection over the area of ``a`` for rotated boxes (N, 5) x (M, 5); (N, M) or (N,) if aligned."""
    return _rbox_overlaps(a, b, aligned, "iof")
