"""Export-friendly formulations of the detector's data-dependent steps (traced into one ONNX graph).

Each function computes what its eager counterpart in :mod:`lsknet.ops` / :mod:`lsknet.models` computes, but with
operations that ``torch.onnx.export`` (TorchScript tracer) turns into a graph that works for every input size:

- :func:`topk_min` - top-k with ``k = min(k, n)`` decided in the graph, not at trace time;
- :func:`multiclass_nms` - torchvision-style horizontal NMS per class (the RPN's per-level NMS) as ONNX
  ``NonMaxSuppression``;
- :func:`roi_align_rotated_graph` - RoIAlignRotated as 4 x gh x gw gathers of the MMCV bilinear samples
  (the same sample positions and weights as :func:`lsknet.ops.roi_align_rotated`);
- :func:`deform_conv2d_graph` - ``torchvision.ops.deform_conv2d`` (stride 1, no dilation, groups or mask; the
  S2A-Net AlignConv) as 4 bilinear gathers per kernel tap and one matrix product;
- :func:`nms_rotated_graph` - the greedy class-wise rotated NMS of :func:`lsknet.ops.nms_rotated`: candidate pairs
  from the same pair test, exact IoU from the same polygon clipping, and the greedy recurrence solved by a scripted
  loop (an ONNX ``Loop``) that iterates ``keep[j] = no kept i -> j suppresses j`` to its fixed point.

They run eagerly too (that is how the tests compare them with the eager detector).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lsknet.ops.boxes import rbox_to_corners, rbox_to_hbox
from lsknet.ops.iou import _orient, _pair_block
from lsknet.ops.nms import _may_suppress
from lsknet.ops.roi_align_rotated import _bags, _roi_geometry

__all__ = [
    "deform_conv2d_graph",
    "multiclass_nms",
    "multiclass_nms_rotated_graph",
    "nms_rotated_graph",
    "roi_align_rotated_graph",
    "topk_min",
]


def _numel(x: Tensor) -> Tensor:
    """Length of the first axis as an int64 0-d tensor (a graph value when tracing, not a constant)."""
    if torch.jit.is_tracing():
        return torch._shape_as_tensor(x)[0]
    return torch.tensor(x.shape[0], dtype=torch.int64)


def topk_min(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``x.topk(min(k, len(x)))`` (descending, ties by index) for a 1-d ``x`` whose length the graph decides."""
    if not torch.jit.is_tracing():
        return x.topk(min(k, x.shape[0]))
    n = torch.clamp(_numel(x), max=k)
    return x.topk(n)  # the tracer records k as a graph value


class _MultiClassNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` for one image: hboxes (N, 4), scores (C, N) -> (M, 3) rows (0, class, box)."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou: float, score_thr: float, max_out: int) -> Tensor:  # noqa: ARG004
        from torchvision.ops import nms

        rows = []
        for c in range(scores.shape[0]):
            cand = torch.nonzero(scores[c] > score_thr).flatten()
            keep = cand[nms(boxes[cand], scores[c, cand], iou)][:max_out]
            rows.append(torch.stack([torch.zeros_like(keep), torch.full_like(keep, c), keep], 1))
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, boxes, scores, iou: float, score_thr: float, max_out: int):
        return g.op(
            "NonMaxSuppression",
            g.op("Unsqueeze", boxes, g.op("Constant", value_t=torch.tensor([0]))),
            g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([0]))),
            g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float32)),
        )


def multiclass_nms(hboxes: Tensor, scores: Tensor, iou: float, score_thr: float, max_out: int) -> Tensor:
    """Horizontal NMS per class (torchvision semantics: suppress IoU > ``iou``), classes sharing the boxes.

    ``hboxes`` (N, 4) ``(x1, y1, x2, y2)``; ``scores`` (C, N), a box takes part in class c when its score there is
    above ``score_thr``. Returns the kept box indices of all classes (class-major, by descending score in a class).
    """
    return _MultiClassNMS.apply(hboxes, scores, float(iou), float(score_thr), int(max_out))[:, 2]


def roi_align_rotated_graph(
    features: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = True,
    clockwise: bool = False,
) -> Tensor:
    """:func:`lsknet.ops.roi_align_rotated` (fixed ``sampling_ratio > 0``) without input checks or chunking:
    features (B, C, H, W), rois (R, 6) -> (R, C, out_h, out_w)."""
    if sampling_ratio <= 0:
        raise ValueError("the graph export needs a fixed sampling_ratio > 0 (the official config uses 2)")
    ph, pw = output_size
    bsz, ch, hh, ww = features.shape
    r = rois.to(torch.float32)
    geo = _roi_geometry(r, r[:, 0].round(), spatial_scale, aligned, clockwise)
    idx, w = _bags(geo, (ph, pw), (hh, ww), (sampling_ratio, sampling_ratio))
    table = features.permute(0, 2, 3, 1).reshape(-1, ch)
    out = F.embedding(idx[:, 0], table) * w[:, :1]
    for s in range(1, idx.shape[1]):  # a sum over the 4 * gh * gw weighted samples of every bin
        out = out + F.embedding(idx[:, s], table) * w[:, s : s + 1]
    return out.view(-1, ph, pw, ch).permute(0, 3, 1, 2)


@torch.jit.script
def _greedy_fixed_point(keep: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Iterate ``keep[j] = not any(keep[i] for edges i -> j)`` from all-kept until it no longer changes.

    The edges (i earlier than j in score order) form a DAG, so the iteration settles the boxes of chain depth d
    in round d + 1 and stops at the unique fixed point: exactly the boxes the sequential greedy loop keeps.
    """
    changed = True
    while changed:
        hits = torch.zeros_like(keep, dtype=torch.float32).scatter_add(0, dst, keep.index_select(0, src).float())
        new = hits == 0
        changed = bool((new != keep).any())
        keep = new
    return keep


def nms_rotated_graph(
    rboxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, max_dets: int | None = None
) -> Tensor:
    """Class-wise greedy rotated NMS with the result of :func:`lsknet.ops.nms_rotated` (suppress IoU > threshold,
    ties in input order); indices of the kept boxes by descending score. Memory: a few K x K boolean masks (K boxes;
    K = 5000 -> ~25 MB each), then work only for same-class pairs with overlapping envelopes; a single graph without
    data-dependent chunking cannot do the eager sweep-and-prune."""
    _, order = topk_min(scores, 1 << 62)  # stable descending sort
    boxes = rboxes.index_select(0, order).to(torch.float64)
    lab = labels.index_select(0, order)
    pos = torch.arange(boxes.shape[0], device=boxes.device)
    env = rbox_to_hbox(boxes)
    area = boxes[:, 2] * boxes[:, 3]
    # K x K boolean masks (K^2 bytes each): earlier in score order, same class, overlapping envelopes
    e1, e2 = env[:, None, :], env[None, :, :]
    near = (e1[..., 0] < e2[..., 2]) & (e2[..., 0] < e1[..., 2]) & (e1[..., 1] < e2[..., 3]) & (e2[..., 1] < e1[..., 3])
    near = near & (lab[:, None] == lab[None, :]) & (pos[:, None] < pos[None, :])
    i, j = torch.nonzero(near, as_tuple=True)
    ok = _may_suppress(env, area, lab, i, j, float(iou_threshold))
    # one sentinel pair (a unit box with itself, IoU dropped) keeps every pair tensor non-empty: onnxruntime cannot
    # reshape an empty (0, ...) tensor with an inferred axis
    sentinel = _numel(boxes).view(1)
    boxes = torch.cat([boxes, boxes.new_tensor([[0.0, 0.0, 1.0, 1.0, 0.0]])])
    i, j = torch.cat([i[ok], sentinel]), torch.cat([j[ok], sentinel])
    polys, areas, _ = _orient(rbox_to_corners(boxes))
    iou = _pair_block(polys.unsqueeze(1), areas, polys.unsqueeze(1), areas, i, j, "iou")[:-1]
    i, j = i[:-1], j[:-1]
    hit = iou > iou_threshold
    keep = _greedy_fixed_point(torch.ones_like(lab, dtype=torch.bool), i[hit], j[hit])
    kept = order[torch.nonzero(keep).flatten()]
    return kept if max_dets is None else kept[:max_dets]


def multiclass_nms_rotated_graph(
    rboxes: Tensor, scores: Tensor, score_thr: float, iou_thr: float, max_per_img: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`lsknet.ops.multiclass_nms_rotated` as graph steps: ``rboxes`` (N, 5) shared by the classes or (N, 5 * C)
    per class, ``scores`` (N, C) -> ``(rboxes (D, 5), scores (D,), labels (D,) int64)`` by descending score."""
    boxes3 = rboxes.reshape(rboxes.shape[0], -1, 5)
    mask = (scores > score_thr) & torch.isfinite(boxes3).all(dim=2)
    box_idx, labels = torch.nonzero(mask, as_tuple=True)
    per_class = rboxes.shape[1] != 5
    cand_boxes = boxes3[box_idx, labels] if per_class else rboxes[box_idx]
    cand_scores = scores[box_idx, labels]
    keep = nms_rotated_graph(cand_boxes, cand_scores, labels, iou_thr, max_per_img)
    return cand_boxes[keep], cand_scores[keep], labels[keep]


def deform_conv2d_graph(x: Tensor, offset: Tensor, weight: Tensor, padding: int) -> Tensor:
    """``torchvision.ops.deform_conv2d(x, offset, weight, padding=padding)`` for stride 1, dilation 1, one offset
    group, no mask or bias, one image: ``x`` (1, C, H, W), ``offset`` (1, 2 * kh * kw, H', W') as ``(dy, dx)`` per
    tap (row-major), ``weight`` (O, C, kh, kw) -> (1, O, H', W'). Tap ``(i, j)`` of output ``(y, x)`` samples
    ``(y - padding + i + dy, x - padding + j + dx)`` bilinearly; a point outside ``(-1, H) x (-1, W)`` gives 0 and
    corners outside the map count 0 (torchvision's ``bilinear_interpolate``)."""
    _, ch, hh, ww = x.shape
    out_c, _, kh, kw = weight.shape
    oh, ow = offset.shape[2], offset.shape[3]
    off = offset[0].reshape(kh * kw, 2, -1).to(x.dtype)  # (K, 2, H'W')
    ys = torch.arange(oh, device=x.device).to(x.dtype).repeat_interleave(ow)
    xs = torch.arange(ow, device=x.device).to(x.dtype).repeat(oh)
    tap = torch.arange(kh * kw, device=x.device)
    ti, tj = (tap // kw).to(x.dtype), (tap % kw).to(x.dtype)
    py = ys[None, :] + (ti[:, None] - padding) + off[:, 0]
    px = xs[None, :] + (tj[:, None] - padding) + off[:, 1]
    inside = (py > -1) & (py < hh) & (px > -1) & (px < ww)
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    table = x[0].permute(1, 2, 0).reshape(-1, ch)  # (H * W, C)
    cols = None
    for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        ok = inside & (yy >= 0) & (yy <= hh - 1) & (xx >= 0) & (xx <= ww - 1)
        idx = (yy.clamp(0, hh - 1) * ww + xx.clamp(0, ww - 1)).long()
        part = F.embedding(idx, table) * (wgt * ok.to(x.dtype)).unsqueeze(-1)  # (K, H'W', C)
        cols = part if cols is None else cols + part
    cols = cols.permute(1, 0, 2).reshape(-1, kh * kw * ch)  # (H'W', K * C)
    w2 = weight.permute(0, 2, 3, 1).reshape(out_c, kh * kw * ch)
    return (cols @ w2.t()).t().reshape(1, out_c, oh, ow)
