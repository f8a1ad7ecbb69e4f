"""Class-wise rotated NMS over per-class scores (MMRotate ``multiclass_nms_rotated``), shared by every detector head.

Every (box, class) pair whose score is ``> score_thr`` is a candidate (pairs in box-major order, as MMRotate's
``nonzero``); boxes of different classes never suppress each other; the ``max_per_img`` best survivors are kept,
sorted by descending score.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lsknet.ops.nms import nms_rotated

__all__ = ["multiclass_nms_rotated"]


def multiclass_nms_rotated(
    rboxes: Tensor, scores: Tensor, score_thr: float, iou_thr: float, max_per_img: int | None = None
) -> dict[str, Tensor]:
    """``rboxes`` (N, 5) shared by all classes or (N, 5 * C) per class (class ``c`` in columns ``5c .. 5c + 4``, as a
    class-specific regressor gives them), ``scores`` (N, C) without a background column -> ``{"rboxes": (D, 5),
    "scores": (D,), "labels": (D,) int64}``. Boxes with a non-finite coordinate are never candidates."""
    n = rboxes.shape[0] if rboxes.dim() == 2 else -1
    per_class = rboxes.dim() == 2 and scores.dim() == 2 and rboxes.shape[-1] == 5 * scores.shape[-1] != 5
    if n < 0 or not (rboxes.shape[-1] == 5 or per_class) or scores.dim() != 2 or scores.shape[0] != n:
        raise ValueError(
            f"rboxes (N, 5) or (N, 5 * C) and scores (N, C) disagree: {tuple(rboxes.shape)}, {tuple(scores.shape)}"
        )
    boxes3 = rboxes.view(n, -1, 5)
    mask = (scores > score_thr) & torch.isfinite(boxes3).all(dim=2)
    box_idx, labels = torch.nonzero(mask, as_tuple=True)
    cand_boxes = boxes3[box_idx, labels] if per_class else rboxes[box_idx]
    cand_scores = scores[box_idx, labels]
    if cand_scores.numel() == 0:
        return {"rboxes": rboxes.new_zeros(0, 5), "scores": scores.new_zeros(0), "labels": labels}
    keep = nms_rotated(cand_boxes, cand_scores, iou_thr, labels=labels, max_dets=max_per_img)
    return {"rboxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": labels[keep]}
