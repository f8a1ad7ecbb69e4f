"""Greedy rotated non-maximum suppression with exact IoU, batched by class.

Result: exactly the boxes that the textbook greedy loop keeps (visit boxes by descending score, keep a box
unless an already kept box of the same class overlaps it with IoU > ``iou_threshold``). How:

1. candidate pairs (i before j in score order, same class, overlapping axis-aligned envelopes and an IoU upper
   bound from the areas and the envelope overlap above the threshold), found on a dense rows x columns matrix
   for small sets, else by sweep and prune;
2. the exact IoU of rectangle pairs in one rectangle's own frame (:func:`lsknet.ops.iou._rect_intersection`,
   ~100 elementwise ops for any number of pairs), computed only for pairs whose first box is kept;
3. the greedy order, solved one of two ways (same result), picked by the density of the set:
   - sparse sets (few envelope overlaps per box): the recurrence ``kept[j] = not any(kept[i] and IoU(i, j) > t
     for candidate pairs i -> j)`` in parallel rounds over all candidate pairs: an undecided box is removed once
     a kept box overlaps it too much and kept once every candidate pointing at it is removed or overlaps it too
     little; every round settles at least the best undecided box;
   - dense sets (clusters of heavily overlapping detections): block by block in score order, the next unsettled
     boxes are resolved among themselves (greedy over their suppression bits), then the block's kept boxes
     remove the later boxes they overlap too much. Pairs whose first box is suppressed are never looked at, so
     a cluster of hundreds of boxes costs about (kept boxes) x (cluster size) exact pair tests.

Classes never interact (equivalent to MMCV's coordinate-offset trick, without its precision loss).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lsknet.ops.boxes import _check_finite, check_rboxes
from lsknet.ops.iou import _rect_envelopes, _rect_frames, _rect_overlaps

__all__ = ["nms_rotated"]

_MAX_CANDIDATES, _MAX_CANDIDATES_CPU = 1 << 22, 1 << 17  # raw sweep-and-prune pairs per chunk (CPU: stay in cache)
_DENSE = 100.0  # x-overlapping same-class pairs per box above which the block-wise greedy beats the rounds
_BLOCK, _BLOCK_MAX = 64, 512  # boxes per block (doubled while most of a block is kept)
_DENSE_PAIRS = 1 << 17  # largest rows x columns matrix searched densely for candidate pairs


def _check_vector(x: object, n: int, name: str, floating: bool) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 1 or x.shape[0] != n:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 1-D tensor of length {n} (one per box), got {shape}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not floating and (x.is_floating_point() or x.is_complex()):
        raise ValueError(f"{name} must be an integer tensor of class ids, got {x.dtype}")
    return x


def _may_suppress(
    env: Tensor, area: Tensor, labels: Tensor | None, i: Tensor, j: Tensor, iou_threshold: float
) -> Tensor:
    """Whether box pairs (i, j) can overlap with IoU above the threshold: same class, overlapping envelopes and
    an IoU upper bound above it. IoU = I / (A1 + A2 - I) grows with I, and I <= U = min(A1, A2, envelope
    overlap): pairs whose bound U / (A1 + A2 - U) cannot exceed the threshold are skipped (margin for rounding)."""
    e1, e2 = env.index_select(0, i), env.index_select(0, j)
    ok = (e1[:, 0] < e2[:, 2]) & (e2[:, 0] < e1[:, 2]) & (e1[:, 1] < e2[:, 3]) & (e2[:, 1] < e1[:, 3])
    a1, a2 = area.index_select(0, i), area.index_select(0, j)
    ov = (torch.minimum(e1[:, 2:], e2[:, 2:]) - torch.maximum(e1[:, :2], e2[:, :2])).prod(1)
    u = torch.minimum(torch.minimum(a1, a2), ov)
    ok = ok & (u > iou_threshold * (1 - 1e-9) * (a1 + a2 - u))
    if labels is not None:
        ok = ok & (labels.index_select(0, i) == labels.index_select(0, j))
    return ok


def _chunk(device: torch.device) -> int:
    return _MAX_CANDIDATES_CPU if device.type == "cpu" else _MAX_CANDIDATES


def _shifted_x(env: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """Envelope x ranges (x1, x2) with the classes shifted apart along x (so one sweep sees one class at a time)."""
    x1, x2 = env[:, 0], env[:, 2]
    if labels is not None:
        span = (x2.max() - x1.min()).clamp_min(0) + 1
        shift = (labels - labels.min()).to(env.dtype) * span
        x1, x2 = x1 + shift, x2 + shift
    return x1, x2


def _candidate_pairs(env: Tensor, area: Tensor, labels: Tensor | None, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """Pairs (i, j), i < j, of the same class whose envelopes overlap and whose IoU can exceed the threshold.

    Sweep and prune: sorted by left edge (classes shifted apart along x), box p can only overlap the boxes
    that start before its right edge, found with one ``searchsorted``; the rest is elementwise.
    """
    k, device = env.shape[0], env.device
    ix = torch.int32 if k < 1 << 31 else torch.int64  # int32 positions: half the memory traffic per raw pair
    x1, x2 = _shifted_x(env, labels)
    order = torch.argsort(x1)
    xs1, xs2 = x1.index_select(0, order), x2.index_select(0, order)
    ys1, ys2 = env[:, 1].index_select(0, order), env[:, 3].index_select(0, order)
    order = order.to(ix)
    end = torch.searchsorted(xs1, xs2, side="left")
    pos = torch.arange(k, device=device)
    count = (end - pos - 1).clamp_min(0)
    csum = torch.cumsum(count, 0)
    # blocks of sorted positions with at most `chunk` raw pairs each (memory stays bounded)
    chunk = _chunk(device)
    cuts = torch.searchsorted(csum, torch.arange(1, int(csum[-1]) // chunk + 1, device=device) * chunk).tolist()
    src, dst = [pos[:0]], [pos[:0]]
    for b0, b1 in zip([0, *cuts], [*cuts, k]):
        if b1 <= b0:
            continue
        cnt = count[b0:b1]
        total = int(cnt.sum())
        if total == 0:
            continue
        local = torch.repeat_interleave(torch.arange(b1 - b0, dtype=ix, device=device), cnt, output_size=total)
        first = (pos[b0:b1] + 1 - torch.cumsum(cnt, 0) + cnt).to(ix)  # q = first[p] + (rank of the pair overall)
        p = local + b0
        q = first.index_select(0, local) + torch.arange(total, dtype=ix, device=device)
        near = (ys1.index_select(0, p) < ys2.index_select(0, q)) & (ys1.index_select(0, q) < ys2.index_select(0, p))
        near = torch.nonzero(near).squeeze(1)  # cheap first cut (x overlap holds by construction)
        i, j = order.index_select(0, p.index_select(0, near)), order.index_select(0, q.index_select(0, near))
        i, j = torch.minimum(i, j), torch.maximum(i, j)
        ok = torch.nonzero(_may_suppress(env, area, labels, i, j, iou_threshold)).squeeze(1)
        src.append(i.index_select(0, ok).long())
        dst.append(j.index_select(0, ok).long())
    return torch.cat(src), torch.cat(dst)


def nms_rotated(
    rboxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    labels: Tensor | None = None,
    max_dets: int | None = None,
    *,
    score_threshold: float | None = None,
) -> Tensor:
    """Rotated NMS; returns int64 indices into ``rboxes`` of the kept boxes, sorted by descending score.

    ``rboxes``: (N, 5) = (cx, cy, w, h, theta [rad]); ``scores``: (N,); ``labels``: optional (N,) integer class
    ids (boxes of different classes never suppress each other). A box is suppressed by a higher-scored kept box
    when their IoU is > ``iou_threshold``. Boxes with ``score <= score_threshold`` are dropped first;
    ``max_dets`` keeps only the best ones. Equal scores keep their input order.
    """
    rboxes = check_rboxes(rboxes, "rboxes")
    n = rboxes.shape[0]
    scores = _check_vector(scores, n, "scores", floating=True)
    _check_finite(scores, "scores")
    if labels is not None:
        labels = _check_vector(labels, n, "labels", floating=False)
    if max_dets is not None and max_dets < 0:
        raise ValueError(f"max_dets must be >= 0, got {max_dets}")
    device = rboxes.device

    cand = torch.arange(n, device=device)
    if score_threshold is not None:
        cand = cand[scores > score_threshold]
    order = torch.sort(scores[cand], descending=True, stable=True).indices
    cand = cand[order]
    k = cand.numel()
    if k == 0 or max_dets == 0:
        return cand[:0]

    boxes = rboxes[cand].to(torch.float64)
    ctx = _Context(boxes, labels[cand] if labels is not None else None, float(iou_threshold))
    keep = _greedy_blocks(ctx) if ctx.overlaps_per_box() > _DENSE else _greedy_rounds(ctx)
    keep = cand[keep]
    return keep if max_dets is None else keep[:max_dets]


class _Context:
    """Score-sorted float64 boxes with everything the pair tests need."""

    def __init__(self, boxes: Tensor, labels: Tensor | None, iou_threshold: float) -> None:
        self.k, self.device = boxes.shape[0], boxes.device
        frames = _rect_frames(boxes)
        self.env, self.labels, self.t = _rect_envelopes(frames), labels, iou_threshold
        self.area = (boxes[:, 2] * boxes[:, 3]).abs()  # a negative width or height is the same rectangle
        self._rect = frames.t().contiguous()  # (K, 6) rows: gathered per pair
        self._x1, self._x2 = _shifted_x(self.env, labels)
        self._by_x = torch.argsort(self._x1)
        self._sorted_x1 = self._x1[self._by_x]
        width = float((self._x2 - self._x1).max())  # with slack: the shift may round the width up
        self._width = width * (1 + 1e-9) + 1e-12 * float(self._x2.abs().max())

    def overlaps_per_box(self) -> float:
        """Mean number of same-class boxes whose envelopes overlap a box's in x (the density of the set)."""
        ends = torch.searchsorted(self._sorted_x1, self._x2[self._by_x], side="left")
        return float((ends - torch.arange(1, self.k + 1, device=self.device)).clamp_min(0).sum()) / self.k

    def dense_pairs(self, rows: Tensor, cols: Tensor, upper: bool) -> tuple[Tensor, Tensor]:
        """Candidate pairs (``rows[a]``, ``cols[b]``) as positions (a, b), found on the rows x columns matrix (for
        small sets): same class, and an IoU upper bound from the envelopes' overlap and the areas above the
        threshold (as :func:`_may_suppress`); ``upper``: rows == cols and only a < b."""
        er, ec = self.env.index_select(0, rows), self.env.index_select(0, cols)
        ar, ac = self.area.index_select(0, rows).unsqueeze(1), self.area.index_select(0, cols)
        ov = (torch.minimum(er[:, 2:3], ec[:, 2]) - torch.maximum(er[:, 0:1], ec[:, 0])).clamp_min_(0)
        ov *= (torch.minimum(er[:, 3:4], ec[:, 3]) - torch.maximum(er[:, 1:2], ec[:, 1])).clamp_min_(0)
        u = torch.minimum(ov, torch.minimum(ar, ac))
        ok = u > (ar + ac - u).mul_(self.t * (1 - 1e-9))
        if self.labels is not None:
            ok &= self.labels.index_select(0, rows).unsqueeze(1) == self.labels.index_select(0, cols)
        if upper:
            ok &= _upper(rows.numel(), rows.device)
        a, b = torch.nonzero(ok, as_tuple=True)
        return a, b

    def reach_out(self, src: Tensor, alive: Tensor) -> tuple[Tensor, Tensor]:
        """Candidate pairs (i in ``src``, j with ``alive[j]``) found by sweep and prune: j starts (in the classes'
        shifted x) after i's start minus the widest envelope and before i's end; the rest as :func:`_may_suppress`."""
        lo = torch.searchsorted(self._sorted_x1, self._x1[src] - self._width, side="left")
        hi = torch.searchsorted(self._sorted_x1, self._x2[src], side="left")
        count = (hi - lo).clamp_min(0)
        csum = torch.cumsum(count, 0)
        total = int(csum[-1])
        if total == 0:
            return src[:0], src[:0]
        chunk = _chunk(src.device)
        steps = torch.arange(1, total // chunk + 1, device=src.device) * chunk
        cuts = [0, *torch.searchsorted(csum, steps).tolist(), src.numel()]
        out_i, out_j = [], []
        y1, y2 = self.env[:, 1], self.env[:, 3]
        for c0, c1 in zip(cuts[:-1], cuts[1:]):
            if c1 <= c0:
                continue
            cnt = count[c0:c1]
            n = int(cnt.sum())
            owner = torch.repeat_interleave(torch.arange(c0, c1, device=src.device), cnt, output_size=n)
            first = lo[c0:c1] - torch.cumsum(cnt, 0) + cnt  # sorted position of owner's pair r: first[owner] + r
            j = self._by_x.index_select(0, first.index_select(0, owner - c0) + torch.arange(n, device=src.device))
            i = src.index_select(0, owner)
            live = alive.index_select(0, j) & (self._x2.index_select(0, j) > self._x1.index_select(0, i))
            live &= (y1.index_select(0, j) < y2.index_select(0, i)) & (y1.index_select(0, i) < y2.index_select(0, j))
            live = torch.nonzero(live).squeeze(1)  # cheap first cut
            i, j = i.index_select(0, live), j.index_select(0, live)
            ok = torch.nonzero(_may_suppress(self.env, self.area, self.labels, i, j, self.t)).squeeze(1)
            out_i.append(i.index_select(0, ok))
            out_j.append(j.index_select(0, ok))
        return torch.cat(out_i), torch.cat(out_j)

    def exact(self, i: Tensor, j: Tensor) -> Tensor:
        """Exact ``IoU(i, j) > threshold`` (bool) of the pairs (i, j) (:func:`lsknet.ops.iou._rect_intersection`;
        0 for two empty boxes)."""
        return _rect_overlaps(self._rect, self._rect, i, j, "iou") > self.t


_UPPER: dict[torch.device, Tensor] = {}


def _upper(n: int, device: torch.device) -> Tensor:
    """(n, n) view of a cached strictly upper-triangular bool mask (one ``triu`` per device: under contention for
    the cores, each small parallel op such as ``triu`` can wait a whole scheduler slice for its second thread)."""
    if device not in _UPPER or _UPPER[device].shape[0] < n:
        size = max(n, _BLOCK_MAX)
        _UPPER[device] = torch.ones(size, size, dtype=torch.bool, device=device).triu_(1)
    return _UPPER[device][:n, :n]


def _greedy_rounds(ctx: _Context) -> Tensor:
    """Kept-box mask by the greedy recurrence solved in parallel rounds over all candidate pairs."""
    k, device = ctx.k, ctx.device
    src, dst = _candidate_pairs(ctx.env, ctx.area, ctx.labels, ctx.t)
    verdict = torch.zeros(src.shape, dtype=torch.int8, device=device)  # 0 not tested yet, 1 suppresses, 2 does not
    # box state 0 undecided, 1 kept, 2 removed; the exact IoU is computed lazily: only edges from kept boxes can
    # suppress, so edges from removed boxes never need it
    state = torch.zeros(k, dtype=torch.int8, device=device)
    has_pred = torch.zeros(k, dtype=torch.bool, device=device)
    has_pred[dst] = True
    state[~has_pred] = 1
    while src.numel():
        s_state = state.index_select(0, src)
        todo = torch.nonzero((verdict == 0) & (s_state == 1)).squeeze(1)
        if todo.numel():
            hit = ctx.exact(src.index_select(0, todo), dst.index_select(0, todo))
            verdict.index_copy_(0, todo, 2 - hit.to(torch.int8))
        supp = torch.zeros(k, dtype=torch.int32, device=device)
        supp.index_add_(0, dst, ((verdict == 1) & (s_state == 1)).int())
        open_ = torch.zeros(k, dtype=torch.int32, device=device)
        open_.index_add_(0, dst, ((verdict != 2) & (s_state != 2)).int())
        und = state == 0
        state[und & (supp > 0)] = 2
        state[und & (open_ == 0)] = 1
        live = torch.nonzero(state.index_select(0, dst) == 0).squeeze(1)  # edges into settled boxes are done
        src, dst, verdict = src.index_select(0, live), dst.index_select(0, live), verdict.index_select(0, live)
    return state == 1


def _greedy_blocks(ctx: _Context) -> Tensor:
    """Kept-box mask, block by block in score order: the next ``block`` unsettled boxes are resolved among
    themselves (textbook greedy on their suppression bits), then the block's kept boxes remove the later boxes
    they overlap too much. Only pairs with a kept first box are ever tested against later blocks. Pairs are
    found on a dense rows x columns matrix while that is small, else by sweep and prune."""
    k, device, lab = ctx.k, ctx.device, ctx.labels
    keep = torch.zeros(k, dtype=torch.bool, device=device)
    rem = torch.arange(k, device=device)  # unsettled boxes, in score order
    block = _BLOCK
    while rem.numel():
        blk, rem = rem[:block], rem[block:]
        nb = blk.numel()
        if nb * nb <= _DENSE_PAIRS:
            p, q = ctx.dense_pairs(blk, blk, upper=True)
        else:
            p, q = _candidate_pairs(ctx.env[blk], ctx.area[blk], lab[blk] if lab is not None else None, ctx.t)
        hit = ctx.exact(blk.index_select(0, p), blk.index_select(0, q))
        kept = _greedy_bits(nb, p[hit], q[hit])
        kb = blk.index_select(0, kept)
        keep[kb] = True
        if rem.numel() == 0:
            break
        if kb.numel() * rem.numel() <= _DENSE_PAIRS:
            a, b = ctx.dense_pairs(kb, rem, upper=False)
            i, j = kb.index_select(0, a), rem.index_select(0, b)
        else:
            alive = torch.zeros(k, dtype=torch.bool, device=device)
            alive[rem] = True
            i, j = ctx.reach_out(kb, alive)
        alive = torch.ones(k, dtype=torch.bool, device=device)
        alive[j[ctx.exact(i, j)]] = False
        rem = rem[alive.index_select(0, rem)]
        block = min(2 * block, _BLOCK_MAX) if 2 * kb.numel() > nb else _BLOCK
    return keep


def _greedy_bits(n: int, src: Tensor, dst: Tensor) -> Tensor:
    """Textbook greedy over ``n`` boxes in order given the suppressing pairs ``src -> dst`` (src < dst); kept
    local indices (int64). Runs on the host with Python integers as bit sets (n is a block, not the whole set)."""
    rows = [0] * n
    for a, b in zip(src.tolist(), dst.tolist()):
        rows[a] |= 1 << b
    removed, kept = 0, []
    for a in range(n):
        if not removed >> a & 1:
            kept.append(a)
            removed |= rows[a]
    return torch.tensor(kept, dtype=torch.int64, device=src.device)
