"""Assigning boxes to ground truth and sampling them for the losses: shared by the RPN (anchors) and the RoI head
(proposals), like torchvision's ``Matcher`` and ``BalancedPositiveNegativeSampler``.

Semantics are MMDetection's ``MaxIoUAssigner`` (``gt_max_assign_all=True``) and ``RandomSampler``, which the official
LSKNet configs use. A match is the index of the assigned ground truth (``>= 0``) or one of the named constants
:data:`NEGATIVE` (background) and :data:`IGNORED` (neither: not trained).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["IGNORED", "NEGATIVE", "MaxIoUAssigner", "RandomSampler"]

#: A box whose best overlap is below ``neg_iou_thr``: trained as background.
NEGATIVE = -1
#: A box between the thresholds (or with a negative overlap): not trained.
IGNORED = -2


@dataclass(frozen=True, kw_only=True)
class MaxIoUAssigner:
    """Max-IoU assignment.

    Args:
        pos_iou_thr: a box whose best overlap is ``>= pos_iou_thr`` matches that ground truth.
        neg_iou_thr: a box whose best overlap is in ``[0, neg_iou_thr)`` is :data:`NEGATIVE`.
        min_pos_iou: with ``match_low_quality`` every ground truth whose best overlap is ``>= min_pos_iou`` also
            claims all boxes reaching that best overlap (later ground truths win ties, as MMDetection's loop).
        match_low_quality: see ``min_pos_iou``.
        chunk_size: the (G, N) overlap matrix is computed in column blocks of about this many elements.
    """

    pos_iou_thr: float
    neg_iou_thr: float
    min_pos_iou: float
    match_low_quality: bool = True
    chunk_size: int = 1 << 22

    def __call__(
        self, iou_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], gt_boxes: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(matches, max_iou)`` for ``boxes`` against ``gt_boxes``; ``iou_fn(gt_boxes, boxes)`` gives the (G, N)
        overlaps in whatever box format both use. ``matches`` (N,) int64: ground-truth index, :data:`NEGATIVE` or
        :data:`IGNORED`; ``max_iou`` (N,) the best overlap of each box (0 without ground truth)."""
        num_gt, num_boxes = gt_boxes.shape[0], boxes.shape[0]
        device = boxes.device
        matches = torch.full((num_boxes,), IGNORED, dtype=torch.long, device=device)
        if num_boxes == 0:
            return matches, boxes.new_zeros(0)
        if num_gt == 0:
            matches.fill_(NEGATIVE)
            return matches, boxes.new_zeros(num_boxes)
        step = max(1, self.chunk_size // num_gt)
        whole: torch.Tensor | None = None
        max_iou = boxes.new_empty(num_boxes)
        argmax = torch.empty(num_boxes, dtype=torch.long, device=device)
        gt_max = boxes.new_full((num_gt,), -1.0)
        for start in range(0, num_boxes, step):
            iou = iou_fn(gt_boxes, boxes[start : start + step])
            max_iou[start : start + step], argmax[start : start + step] = iou.max(dim=0)
            gt_max = torch.maximum(gt_max, iou.max(dim=1).values)
            if num_boxes <= step:
                whole = iou
        matches[(max_iou >= 0) & (max_iou < self.neg_iou_thr)] = NEGATIVE
        positive = max_iou >= self.pos_iou_thr
        matches[positive] = argmax[positive]
        if self.match_low_quality:
            gt_index = torch.arange(num_gt, device=device)[:, None]
            for start in range(0, num_boxes, step):
                iou = whole if whole is not None else iou_fn(gt_boxes, boxes[start : start + step])
                hit = (iou == gt_max[:, None]) & (gt_max[:, None] >= self.min_pos_iou)
                if hit.any():
                    last = torch.where(hit, gt_index.expand_as(hit), torch.full_like(hit, -1, dtype=torch.long))
                    last = last.max(dim=0).values  # later ground truths override earlier ones
                    claimed = last >= 0
                    block = matches[start : start + step]
                    block[claimed] = last[claimed]
        return matches, max_iou


@dataclass(frozen=True, kw_only=True)
class RandomSampler:
    """Random sampling of positives and negatives for a loss (MMDetection ``RandomSampler``): up to
    ``int(num * pos_fraction)`` positives, negatives fill up to ``num``; :data:`IGNORED` boxes are never sampled."""

    num: int
    pos_fraction: float

    def __call__(
        self, matches: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positive_indices, negative_indices)`` into ``matches`` (random subsets; the permutations are drawn
        on the CPU so a seeded generator gives the same sample on every device)."""
        pos = torch.nonzero(matches >= 0).flatten()
        neg = torch.nonzero(matches == NEGATIVE).flatten()
        num_pos = int(self.num * self.pos_fraction)
        if pos.numel() > num_pos:
            pos = pos[torch.randperm(pos.numel(), generator=generator, device="cpu")[:num_pos].to(pos.device)]
        num_neg = self.num - pos.numel()
        if neg.numel() > num_neg:
            neg = neg[torch.randperm(neg.numel(), generator=generator, device="cpu")[:num_neg].to(neg.device)]
        return pos, neg
