"""RoI Transformer's second stage (Ding et al., "Learning RoI Transformer for Oriented Object Detection in Aerial
Images", CVPR 2019), as MMRotate 0.3.4's ``RoITransRoIHead`` with the official LSKNet / MMRotate config.

Two cascaded stages share the pyramid features:

* stage 0, the **RRoI learner**: horizontal proposals ``(x1, y1, x2, y2)`` -> RoIAlign (7x7, adaptive sampling,
  aligned) -> two shared FCs -> class logits + 5 class-agnostic deltas that
  :class:`~lsknet.ops.DeltaXYWHAHCoder` turns into **rotated RoIs** (le90, ``norm_factor=2``, edge swap);
* stage 1, the **rotated RoI head**: rotated RoIs -> RoIAlignRotated (7x7, 2 samples, clockwise) -> two shared FCs
  -> class logits + 5 deltas per class decoded with :class:`~lsknet.ops.DeltaXYWHTCoder`
  (stds 0.05, 0.05, 0.1, 0.1, 0.5).

Training (``loss``): stage 0 assigns proposals to the ground truths' envelopes by horizontal IoU, stage 1 assigns
the refined rotated RoIs (stage 0's sampled RoIs decoded, ground-truth RoIs removed) by rotated IoU; both sample 512
RoIs with 25 % positives and the ground truths added (as MMDetection's ``RandomSampler`` / MMRotate's
``RRandomSampler``). Inference (``predict``): proposals pass both stages; the class logits of the two stages are
averaged before the softmax, and the last stage's per-class boxes go through per-class rotated NMS.

Parameter names (``bbox_head.{0,1}.shared_fcs.{0,1}``, ``fc_cls``, ``fc_reg``) match official checkpoints.
Boxes: ``hbox`` = ``(x1, y1, x2, y2)``; ``rbox`` = ``(cx, cy, w, h, theta)`` pixels, radians, le90.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import RoIAlign, box_iou

from lsknet.models.matching import MaxIoUAssigner, RandomSampler
from lsknet.models.roi_head import (
    RoITestConfig,
    RotatedBBoxHead,
    RotatedRoIExtractor,
    assign_and_sample,
    bbox_head_loss,
    detections_per_image,
    rois_from_boxes,
)
from lsknet.ops import DeltaXYWHAHCoder, DeltaXYWHTCoder, rbox_iou, rbox_to_hbox

__all__ = ["HorizontalRoIExtractor", "RoITransRoIHead", "StageTrainConfig"]


class HorizontalRoIExtractor(RotatedRoIExtractor):
    """MMDetection ``SingleRoIExtractor`` with ``RoIAlign`` (torchvision's, the same op): horizontal RoIs
    ``(batch_index, x1, y1, x2, y2)`` pooled from level ``floor(log2(sqrt(w * h) / 56 + 1e-6))`` (clamped).
    Official RoI Transformer: 7x7, ``sampling_ratio=0`` (adaptive), aligned."""

    def __init__(
        self,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        output_size: int = 7,
        sampling_ratio: int = 0,
        finest_scale: float = 56.0,
    ) -> None:
        super().__init__(featmap_strides, output_size, sampling_ratio, finest_scale=finest_scale)
        self.roi_layers = nn.ModuleList(
            RoIAlign(output_size, 1.0 / s, sampling_ratio, aligned=True) for s in self.featmap_strides
        )

    def map_levels(self, rois: torch.Tensor) -> torch.Tensor:
        """Pyramid level index of each RoI (rois: (K, 5) = batch index + hbox)."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(0, len(self.featmap_strides) - 1).long()


@dataclass
class StageTrainConfig:
    """Assignment and sampling of one stage (official: IoU 0.5 / 0.5, no low-quality matches, 512 RoIs per image,
    25 % positives, ground truths added)."""

    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.5
    num_samples: int = 512
    pos_fraction: float = 0.25
    add_gt_as_proposals: bool = True


class RoITransRoIHead(nn.Module):
    """The two stages of RoI Transformer (see the module docstring).

    Args:
        num_classes: object classes (15 for DOTA-v1.0).
        in_channels: pyramid channels (256).
        featmap_strides: strides of the levels RoIs are pooled from (4, 8, 16, 32).
        fc_channels: width of the shared FCs (1024).
        stage_loss_weights: loss weight of each stage (official 1, 1).
        train_cfg: one :class:`StageTrainConfig` (or mapping of its fields) per stage, or one for both.
        hbox_coder: stage 0's coder (official ``DeltaXYWHAHBBoxCoder`` settings by default).
        rbox_coder: stage 1's coder (official ``DeltaXYWHAOBBoxCoder`` stds 0.05, 0.05, 0.1, 0.1, 0.5).
        test_cfg: :class:`RoITestConfig` (score 0.05, NMS 0.1, 2000 per image).
        smooth_l1_beta: beta of both stages' regression loss (1.0).
    """

    num_stages = 2

    def __init__(
        self,
        num_classes: int = 15,
        in_channels: int = 256,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        roi_size: int = 7,
        fc_channels: int = 1024,
        stage_loss_weights: Sequence[float] = (1.0, 1.0),
        train_cfg: StageTrainConfig | Sequence[StageTrainConfig] | None = None,
        hbox_coder: DeltaXYWHAHCoder | None = None,
        rbox_coder: DeltaXYWHTCoder | None = None,
        test_cfg: RoITestConfig | None = None,
        smooth_l1_beta: float = 1.0,
    ) -> None:
        super().__init__()
        if len(stage_loss_weights) != self.num_stages:
            raise ValueError(f"stage_loss_weights needs {self.num_stages} values, got {list(stage_loss_weights)}")
        self.num_classes = num_classes
        self.bbox_roi_extractor = nn.ModuleList(
            [
                HorizontalRoIExtractor(featmap_strides, roi_size, sampling_ratio=0),
                RotatedRoIExtractor(featmap_strides, roi_size, sampling_ratio=2, clockwise=True),
            ]
        )
        self.bbox_head = nn.ModuleList(
            [
                RotatedBBoxHead(num_classes, in_channels, roi_size, fc_channels, reg_class_agnostic=True),
                RotatedBBoxHead(num_classes, in_channels, roi_size, fc_channels, reg_class_agnostic=False),
            ]
        )
        self.hbox_coder = hbox_coder or DeltaXYWHAHCoder()
        self.rbox_coder = rbox_coder or DeltaXYWHTCoder(target_stds=(0.05, 0.05, 0.1, 0.1, 0.5))
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        if train_cfg is None or isinstance(train_cfg, StageTrainConfig):
            train_cfg = [train_cfg or StageTrainConfig()] * self.num_stages
        if len(train_cfg) != self.num_stages:
            raise ValueError(f"train_cfg needs {self.num_stages} stage configs, got {len(train_cfg)}")
        self.train_cfg = list(train_cfg)
        self.test_cfg = test_cfg or RoITestConfig()
        self.smooth_l1_beta = smooth_l1_beta

    def _stage_forward(
        self, stage: int, feats: Sequence[torch.Tensor], rois: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and deltas of stage ``stage`` for rois (K, 5) hbox (stage 0) or (K, 6) rbox (stage 1)."""
        return self.bbox_head[stage](self.bbox_roi_extractor[stage](feats, rois))

    def _sample_stage(
        self, stage: int, boxes: torch.Tensor, gt_rboxes: torch.Tensor, gt_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image: sampled boxes (S, 4 hbox / 5 rbox), labels (S,) with background ``num_classes``, regression
        targets (P, 5) of the P positives (first in the sample), and which positives are ground truths (P,)."""
        cfg = self.train_cfg[stage]
        assigner = MaxIoUAssigner(
            pos_iou_thr=cfg.pos_iou_thr,
            neg_iou_thr=cfg.neg_iou_thr,
            min_pos_iou=cfg.pos_iou_thr,
            match_low_quality=False,
        )
        sampler = RandomSampler(num=cfg.num_samples, pos_fraction=cfg.pos_fraction)
        if stage == 0:
            gt_boxes = rbox_to_hbox(gt_rboxes) if gt_rboxes.numel() else gt_rboxes.new_zeros(0, 4)
            iou_fn = box_iou
        else:
            gt_boxes, iou_fn = gt_rboxes, rbox_iou
        cand, matches, pos, neg = assign_and_sample(boxes, gt_boxes, iou_fn, assigner, sampler, cfg.add_gt_as_proposals)
        num_gt = gt_boxes.shape[0] if cfg.add_gt_as_proposals else 0
        sampled = torch.cat([cand[pos], cand[neg]], dim=0)
        labels = torch.full((sampled.shape[0],), self.num_classes, dtype=torch.long, device=cand.device)
        targets = cand.new_zeros(pos.numel(), 5)
        if pos.numel():
            gt_idx = matches[pos]
            labels[: pos.numel()] = gt_labels[gt_idx]
            coder = self.hbox_coder if stage == 0 else self.rbox_coder
            targets = coder.encode(cand[pos], gt_rboxes[gt_idx].to(cand.dtype))
        return sampled, labels, targets, pos < num_gt

    def loss(
        self,
        feats: Sequence[torch.Tensor],
        proposals: Sequence[torch.Tensor],
        gt_rboxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Both stages' losses from horizontal proposals ((K, 5) = hbox + score per image): ``loss_cls_s{i}``,
        ``loss_bbox_s{i}`` (times the stage weight; official names ``s{i}.loss_cls``, ``s{i}.loss_bbox``) and
        ``acc_s{i}`` (percent, logged only)."""
        losses: dict[str, torch.Tensor] = {}
        boxes = [p[:, :4].detach() for p in proposals]
        for stage in range(self.num_stages):
            sampled, labels, targets, is_gt = [], [], [], []
            for b, gts, lbls in zip(boxes, gt_rboxes, gt_labels):
                s, lb, t, g = self._sample_stage(stage, b, gts, lbls)
                sampled.append(s)
                labels.append(lb)
                targets.append(t)
                is_gt.append(g)
            rois = rois_from_boxes(sampled)
            cls_logits, deltas = self._stage_forward(stage, feats, rois)
            out = bbox_head_loss(cls_logits, deltas, torch.cat(labels), torch.cat(targets), self.smooth_l1_beta)
            weight = self.stage_loss_weights[stage]
            losses[f"loss_cls_s{stage}"] = out["loss_cls"] * weight
            losses[f"loss_bbox_s{stage}"] = out["loss_bbox"] * weight
            losses[f"acc_s{stage}"] = out["acc"]
            if stage + 1 < self.num_stages:
                # refine: the sampled RoIs decoded with their (class-agnostic) deltas, ground-truth RoIs dropped
                with torch.no_grad():
                    refined = self.hbox_coder.decode(rois[:, 1:], deltas.detach().float())
                    boxes = []
                    for i, g in enumerate(is_gt):
                        r = refined[rois[:, 0] == i]
                        keep = torch.ones(r.shape[0], dtype=torch.bool, device=r.device)
                        keep[: g.numel()] = ~g
                        boxes.append(r[keep])
        return losses

    @torch.no_grad()
    def predict(
        self,
        feats: Sequence[torch.Tensor],
        proposals: Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
        cfg: RoITestConfig | None = None,
        scale_factors: Sequence[tuple[float, float]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Per image ``{"rboxes": (D, 5), "scores": (D,), "labels": (D,) int64}`` from horizontal proposals.

        ``image_sizes``: (H, W) before padding (final centres are clamped into it); ``scale_factors``: (w_scale,
        h_scale) of a test resize per image, undone before NMS (``cx, w`` / w_scale, ``cy, h`` / h_scale)."""
        cfg = cfg or self.test_cfg
        rois0 = rois_from_boxes([p[:, :4] for p in proposals])
        cls0, deltas0 = self._stage_forward(0, feats, rois0)
        rois1 = torch.cat([rois0[:, :1], self.hbox_coder.decode(rois0[:, 1:], deltas0.float())], dim=1)
        cls1, deltas1 = self._stage_forward(1, feats, rois1)
        probs = F.softmax((cls0.float() + cls1.float()) / 2.0, dim=1)  # logits averaged over the stages
        return detections_per_image(self.rbox_coder, rois1, deltas1, probs, image_sizes, cfg, scale_factors)
