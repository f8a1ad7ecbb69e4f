"""Oriented R-CNN second stage: rotated RoI features, two shared FC layers, classification and class-agnostic
rotated-box refinement (MMRotate ``OrientedStandardRoIHead`` + ``RotatedShared2FCBBoxHead``, official defaults).

Parameter names (``bbox_head.shared_fcs.{0,1}``, ``bbox_head.fc_cls``, ``bbox_head.fc_reg``) match official
checkpoints. Class ``k`` of ``num_classes`` is logit ``k``; the background is the last logit (MMDetection v2).
Boxes are rboxes ``(cx, cy, w, h, theta)`` in pixels and radians, le90.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lsknet.models.matching import MaxIoUAssigner, RandomSampler
from lsknet.ops import DeltaXYWHTCoder, RoIAlignRotated, multiclass_nms_rotated, rbox_iou


class RotatedRoIExtractor(nn.Module):
    """Pools a (C, 7, 7) feature for every rotated RoI from the pyramid level matching its scale.

    Level ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` clamped to the available levels
    (MMDetection / MMRotate rule, ``finest_scale`` 56); RoIAlignRotated with ``sampling_ratio`` points per bin
    side, half-pixel aligned, clockwise angles (official: 7x7, sampling 2, clockwise).
    """

    def __init__(
        self,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        output_size: int = 7,
        sampling_ratio: int = 2,
        clockwise: bool = True,
        finest_scale: float = 56.0,
    ) -> None:
        super().__init__()
        self.featmap_strides = [int(s) for s in featmap_strides]
        self.output_size = output_size
        self.finest_scale = finest_scale
        self.roi_layers = nn.ModuleList(
            RoIAlignRotated(output_size, 1.0 / s, sampling_ratio, aligned=True, clockwise=clockwise)
            for s in self.featmap_strides
        )

    def map_levels(self, rois: torch.Tensor) -> torch.Tensor:
        """Pyramid level index of each RoI (rois: (K, 6) = batch index + rbox)."""
        scale = torch.sqrt(rois[:, 3].clamp(min=0) * rois[:, 4].clamp(min=0))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(0, len(self.featmap_strides) - 1).long()

    def forward(self, feats: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """``feats``: pyramid maps (at least ``len(featmap_strides)``); ``rois`` (K, 6). Returns (K, C, S, S)."""
        channels = feats[0].shape[1]
        out = feats[0].new_zeros(rois.shape[0], channels, self.output_size, self.output_size)
        if rois.shape[0] == 0:
            return out
        levels = self.map_levels(rois)
        for lvl, layer in enumerate(self.roi_layers):
            idx = torch.nonzero(levels == lvl).flatten()
            if idx.numel():
                out[idx] = layer(feats[lvl], rois[idx]).to(out.dtype)
        return out


class RotatedBBoxHead(nn.Module):
    """Two shared FC layers (ReLU) then a ``num_classes + 1`` classifier and a 5-d class-agnostic regressor
    (``reg_class_agnostic=False``: 5 deltas per class, class ``k`` in outputs ``5k .. 5k + 4``)."""

    def __init__(
        self,
        num_classes: int = 15,
        in_channels: int = 256,
        roi_size: int = 7,
        fc_channels: int = 1024,
        reg_class_agnostic: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.reg_class_agnostic = reg_class_agnostic
        self.shared_fcs = nn.ModuleList(
            [nn.Linear(in_channels * roi_size * roi_size, fc_channels), nn.Linear(fc_channels, fc_channels)]
        )
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 5 if reg_class_agnostic else 5 * num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform shared FCs, Normal(0, 0.01) classifier, Normal(0, 0.001) regressor (official)."""
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, roi_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, C, S, S) -> class logits (K, num_classes + 1), deltas (K, 5) or (K, 5 * num_classes)."""
        x = roi_feats.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


@dataclass
class RoITestConfig:
    """Inference post-processing: scores above ``score_thr``, rotated NMS per class at ``nms_iou``,
    at most ``max_per_img`` detections."""

    score_thr: float = 0.05
    nms_iou: float = 0.1
    max_per_img: int = 2000


def rois_from_boxes(rboxes_per_image: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-image rboxes (first 5 columns used) into (K, 6) rois ``(batch_index, cx, cy, w, h, theta)``."""
    rois = []
    for i, boxes in enumerate(rboxes_per_image):
        idx = boxes.new_full((boxes.shape[0], 1), float(i))
        rois.append(torch.cat([idx, boxes[:, :5]], dim=1))
    return torch.cat(rois, dim=0)


class OrientedRoIHead(nn.Module):
    """Second stage of Oriented R-CNN.

    Args:
        num_classes: object classes (15 for DOTA-v1.0).
        in_channels: pyramid channels (256).
        featmap_strides: strides of the levels RoIs are pooled from (4, 8, 16, 32).
        pos_iou_thr, neg_iou_thr: rotated-IoU assigner (0.5, 0.5; no low-quality matches).
        num_samples, pos_fraction, add_gt_as_proposals: RoI sampling per image (512, 0.25, True).
        bbox_coder: ``DeltaXYWHT`` coder (official stds 0.1, 0.1, 0.2, 0.2, 0.1; edge swap; projected xy).
        test_cfg: :class:`RoITestConfig`.
    """

    def __init__(
        self,
        num_classes: int = 15,
        in_channels: int = 256,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        roi_size: int = 7,
        sampling_ratio: int = 2,
        fc_channels: int = 1024,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.5,
        num_samples: int = 512,
        pos_fraction: float = 0.25,
        add_gt_as_proposals: bool = True,
        bbox_coder: DeltaXYWHTCoder | None = None,
        test_cfg: RoITestConfig | None = None,
        smooth_l1_beta: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bbox_roi_extractor = RotatedRoIExtractor(featmap_strides, roi_size, sampling_ratio, clockwise=True)
        self.bbox_head = RotatedBBoxHead(num_classes, in_channels, roi_size, fc_channels)
        self.bbox_coder = bbox_coder or DeltaXYWHTCoder()
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.num_samples = num_samples
        self.pos_fraction = pos_fraction
        self.add_gt_as_proposals = add_gt_as_proposals
        self.test_cfg = test_cfg or RoITestConfig()
        self.smooth_l1_beta = smooth_l1_beta

    def _sample(
        self, proposals: torch.Tensor, gt_rboxes: torch.Tensor, gt_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled rboxes (S, 5), their labels (background = num_classes) and regression targets for positives."""
        assigner = MaxIoUAssigner(
            pos_iou_thr=self.pos_iou_thr,
            neg_iou_thr=self.neg_iou_thr,
            min_pos_iou=self.pos_iou_thr,
            match_low_quality=False,
        )
        sampler = RandomSampler(num=self.num_samples, pos_fraction=self.pos_fraction)
        boxes, matches, pos, neg = assign_and_sample(
            proposals[:, :5], gt_rboxes, rbox_iou, assigner, sampler, self.add_gt_as_proposals
        )
        sampled = torch.cat([boxes[pos], boxes[neg]], dim=0)
        labels = torch.full((sampled.shape[0],), self.num_classes, dtype=torch.long, device=boxes.device)
        targets = boxes.new_zeros(pos.numel(), 5)
        if pos.numel():
            gt_idx = matches[pos]
            labels[: pos.numel()] = gt_labels[gt_idx]
            targets = self.bbox_coder.encode(boxes[pos], gt_rboxes[gt_idx].to(boxes.dtype))
        return sampled, labels, targets

    def loss(
        self,
        feats: Sequence[torch.Tensor],
        proposals: Sequence[torch.Tensor],
        gt_rboxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Softmax cross-entropy (mean over sampled RoIs) and smooth-L1 on positives (summed, divided by the
        number of sampled RoIs): ``loss_cls``, ``loss_bbox``; ``acc`` (percent, no gradient) for logging."""
        sampled, labels, targets = [], [], []
        for props, gts, lbls in zip(proposals, gt_rboxes, gt_labels):
            s, l, t = self._sample(props.detach(), gts, lbls)
            sampled.append(s)
            labels.append(l)
            targets.append(t)
        rois = rois_from_boxes(sampled)
        cls_logits, deltas = self.bbox_head(self.bbox_roi_extractor(feats, rois))
        return bbox_head_loss(cls_logits, deltas, torch.cat(labels), torch.cat(targets), self.smooth_l1_beta)

    @torch.no_grad()
    def predict(
        self,
        feats: Sequence[torch.Tensor],
        proposals: Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
        cfg: RoITestConfig | None = None,
        scale_factors: Sequence[tuple[float, float]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Per image ``{"rboxes": (D, 5), "scores": (D,), "labels": (D,) int64}`` after class-wise rotated NMS.

        ``image_sizes``: (H, W) of each image before padding; decoded centres are clamped into it.
        ``scale_factors``: (w_scale, h_scale) of a test resize per image; boxes are mapped back before NMS as
        MMRotate's ``rescale=True`` does (``cx, w`` divided by ``w_scale``, ``cy, h`` by ``h_scale``)."""
        cfg = cfg or self.test_cfg
        rois = rois_from_boxes(proposals)
        cls_logits, deltas = self.bbox_head(self.bbox_roi_extractor(feats, rois))
        probs = F.softmax(cls_logits.float(), dim=1)
        return detections_per_image(self.bbox_coder, rois, deltas, probs, image_sizes, cfg, scale_factors)

    def _postprocess(self, rboxes: torch.Tensor, probs: torch.Tensor, cfg: RoITestConfig) -> dict[str, torch.Tensor]:
        num_classes = probs.shape[1] - 1
        return multiclass_nms_rotated(rboxes, probs[:, :num_classes], cfg.score_thr, cfg.nms_iou, cfg.max_per_img)


def detections_per_image(
    coder: DeltaXYWHTCoder,
    rois: torch.Tensor,
    deltas: torch.Tensor,
    probs: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    cfg: RoITestConfig,
    scale_factors: Sequence[tuple[float, float]] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """MMRotate ``RotatedBBoxHead.get_bboxes`` per image: rotated ``rois`` (K, 6) (batch index first) decoded with
    their ``deltas`` (K, 5) or (K, 5 * C), centres clamped to ``[0, W - 1] x [0, H - 1]`` of the unpadded image,
    mapped back by ``scale_factors`` (``cx, w`` / w_scale, ``cy, h`` / h_scale, as ``rescale=True``) and put through
    :func:`~lsknet.ops.multiclass_nms_rotated` with ``probs`` (K, C + 1) (background last)."""
    results = []
    for i, size in enumerate(image_sizes):
        sel = rois[:, 0] == i
        boxes = coder.decode(rois[sel, 1:], deltas[sel].float(), max_shape=size)
        if scale_factors is not None:
            sw, sh = scale_factors[i]
            boxes = boxes / boxes.new_tensor([sw, sh, sw, sh, 1.0]).repeat(boxes.shape[1] // 5)
        scores = probs[sel, :-1]
        results.append(multiclass_nms_rotated(boxes, scores, cfg.score_thr, cfg.nms_iou, cfg.max_per_img))
    return results


def assign_and_sample(
    boxes: torch.Tensor,
    gt_boxes: torch.Tensor,
    iou_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    assigner: MaxIoUAssigner,
    sampler: RandomSampler,
    add_gt_as_proposals: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's RoI sampling (MMDetection ``assign`` then ``sample`` with ``add_gt_as_proposals``): ``boxes``
    (N, D) are assigned to ``gt_boxes`` (G, D) (same format, ``iou_fn(gt, boxes)``); with ``add_gt_as_proposals``
    the ground truths are then put in front, each matched to itself. Returns ``(boxes', matches, pos, neg)``:
    the (G + N or N, D) candidates, their matches and the sampled positive / negative indices into them (a positive
    index ``< G`` is a ground-truth box when added)."""
    gt_boxes = gt_boxes.to(boxes.dtype)
    matches, _ = assigner(iou_fn, gt_boxes, boxes)
    if add_gt_as_proposals and gt_boxes.shape[0]:
        boxes = torch.cat([gt_boxes, boxes], dim=0)
        matches = torch.cat([torch.arange(gt_boxes.shape[0], device=boxes.device), matches])
    pos, neg = sampler(matches)
    return boxes, matches, pos, neg


def bbox_head_loss(
    cls_logits: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, beta: float = 1.0
) -> dict[str, torch.Tensor]:
    """MMRotate ``RotatedBBoxHead.loss`` over the sampled RoIs of a batch, positives first in each image.

    ``cls_logits`` (S, C + 1), ``deltas`` (S, 5) class-agnostic or (S, 5 * C) per class (the labelled class's 5 are
    used), ``labels`` (S,) with background ``C``, ``targets`` (P, 5) for the positives in order. Softmax
    cross-entropy averaged over the S RoIs (``loss_cls``), smooth-L1 on positives summed and divided by S
    (``loss_bbox``), ``acc`` in percent (no gradient)."""
    num_classes = cls_logits.shape[1] - 1
    count = max(labels.numel(), 1)
    loss_cls = F.cross_entropy(cls_logits.float(), labels, reduction="sum") / count
    pos = labels < num_classes
    if bool(pos.any()):
        pred = deltas[pos]
        if deltas.shape[1] != 5:
            pred = pred.view(pred.shape[0], -1, 5)[torch.arange(pred.shape[0], device=pred.device), labels[pos]]
        loss_bbox = F.smooth_l1_loss(pred, targets.to(pred.dtype), beta=beta, reduction="sum") / count
    else:
        loss_bbox = deltas.sum() * 0.0
    with torch.no_grad():
        acc = (cls_logits.argmax(dim=1) == labels).float().mean() * 100.0
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "acc": acc}
