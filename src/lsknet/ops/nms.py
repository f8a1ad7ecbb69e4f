"""Greedy rotated non-maximum suppression with exact IoU, batched by class.

Result: exactly the boxes that the textbook greedy loop keeps (visit boxes by descending score, keep a box
unless an already kept box of the same class overlaps it with IoU > ``iou_threshold``). How:

1. candidate pairs (i before j in score order, same class, overlapping axis-aligned envelopes found by sweep
   and prune, and an IoU upper bound from the areas and the envelope overlap above the threshold): most
   pairs never reach step 2;
2. the greedy recurrence ``kept[j] = not any(kept[i] and IoU(i, j) > t for candidate pairs i -> j)`` solved
   in parallel rounds: an undecided box is removed once a kept box overlaps it too much and kept once every
   candidate pointing at it is removed or overlaps it too little. The exact IoU (:mod:`lsknet.ops.iou`) is
   computed lazily, only for pairs whose first box is kept. Every round settles at least the best undecided
   box; real detections need a handful of rounds.

Classes never interact (equivalent to MMCV's coordinate-offset trick, without its precision loss).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lsknet.ops.boxes import _check_finite, check_rboxes, rbox_to_corners, rbox_to_hbox
from lsknet.ops.iou import _pair_overlaps, _prepare

__all__ = ["nms_rotated"]

_MAX_CANDIDATES = 1 << 22  # raw sweep-and-prune pairs per block


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
    e1, e2 = env[i], env[j]
    ok = (e1[:, 0] < e2[:, 2]) & (e2[:, 0] < e1[:, 2]) & (e1[:, 1] < e2[:, 3]) & (e2[:, 1] < e1[:, 3])
    a1, a2 = area[i], area[j]
    ov = (torch.minimum(e1[:, 2:], e2[:, 2:]) - torch.maximum(e1[:, :2], e2[:, :2])).prod(1)
    u = torch.minimum(torch.minimum(a1, a2), ov)
    ok = ok & (u > iou_threshold * (1 - 1e-9) * (a1 + a2 - u))
    if labels is not None:
        ok = ok & (labels[i] == labels[j])
    return ok


def _candidate_pairs(env: Tensor, area: Tensor, labels: Tensor | None, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """Pairs (i, j), i < j, of the same class whose envelopes overlap and whose IoU can exceed the threshold.

    Sweep and prune: sorted by left edge (classes shifted apart along x), box p can only overlap the boxes
    that start before its right edge, found with one ``searchsorted``; the rest is elementwise.
    """
    k = env.shape[0]
    x1, x2 = env[:, 0], env[:, 2]
    if labels is not None:
        span = (x2.max() - x1.min()).clamp_min(0) + 1
        shift = (labels - labels.min()).to(env.dtype) * span
        x1, x2 = x1 + shift, x2 + shift
    order = torch.argsort(x1)
    xs1, xs2 = x1[order], x2[order]
    end = torch.searchsorted(xs1, xs2, side="left")
    pos = torch.arange(k, device=env.device)
    count = (end - pos - 1).clamp_min(0)
    csum = torch.cumsum(count, 0)
    # blocks of sorted positions with at most _MAX_CANDIDATES raw pairs each (memory stays bounded)
    cuts = torch.searchsorted(
        csum, torch.arange(1, int(csum[-1]) // _MAX_CANDIDATES + 1, device=env.device) * _MAX_CANDIDATES
    ).tolist()
    src, dst = [], []
    for b0, b1 in zip([0, *cuts], [*cuts, k]):
        if b1 <= b0:
            continue
        cnt = count[b0:b1]
        total = int(cnt.sum())
        if total == 0:
            continue
        p = torch.repeat_interleave(pos[b0:b1], cnt, output_size=total)
        start = torch.cumsum(cnt, 0) - cnt
        q = p + 1 + torch.arange(total, device=env.device) - start[p - b0]
        i, j = order[p], order[q]
        i, j = torch.minimum(i, j), torch.maximum(i, j)
        ok = _may_suppress(env, area, labels, i, j, iou_threshold)
        src.append(i[ok])
        dst.append(j[ok])
    if not src:
        return pos[:0], pos[:0]
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
    env = rbox_to_hbox(boxes)
    area = boxes[:, 2] * boxes[:, 3]
    lab = labels[cand] if labels is not None else None

    # 1. candidate pairs (i < j in score order)
    src, dst = _candidate_pairs(env, area, lab, float(iou_threshold))

    # 2 + 3. greedy recurrence in parallel rounds (box state 0 undecided, 1 kept, 2 removed), computing the
    # exact IoU lazily: only edges from kept boxes can suppress, so edges from removed boxes never need it
    polys, areas, _ = _prepare(rbox_to_corners(boxes), "rboxes")
    state = torch.zeros(k, dtype=torch.int8, device=device)
    has_pred = torch.zeros(k, dtype=torch.bool, device=device)
    has_pred[dst] = True
    state[~has_pred] = 1
    verdict = torch.zeros(src.numel(), dtype=torch.int8, device=device)  # 0 unknown, 1 suppresses, 2 does not
    while src.numel():
        s_state = state[src]
        todo = (verdict == 0) & (s_state == 1)
        if bool(todo.any()):
            iou = _pair_overlaps(polys, areas, polys, areas, src[todo], dst[todo], "iou")
            verdict[todo] = torch.where(iou > iou_threshold, 1, 2).to(torch.int8)
        supp = torch.zeros(k, dtype=torch.int32, device=device).index_add_(0, dst, (verdict == 1).int())
        open_ = torch.zeros(k, dtype=torch.int32, device=device).index_add_(
            0, dst, ((verdict != 2) & (s_state != 2)).int()
        )
        und = state == 0
        state[und & (supp > 0)] = 2
        state[und & (open_ == 0)] = 1
        live = state[dst] == 0  # edges into settled boxes are done
        src, dst, verdict = src[live], dst[live], verdict[live]
    keep = cand[state == 1]
    return keep if max_dets is None else keep[:max_dets]
