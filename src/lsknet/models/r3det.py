"""R3Det (Yang et al., "R3Det: Refined Single-Stage Detector with Feature Refinement for Rotating Object", AAAI 2021)
with an LSKNet backbone, as the official LSKNet configs ``lsk_{t,s}_r3det_fpn_1x_dota.py`` on MMRotate 0.3.4 set it.

Composition (official module names, so MMRotate checkpoints load strictly)::

    backbone -> neck (FPN, start_level 1, extra convs on the input: strides 8..128)
             -> bbox_head (RotatedRetinaHead, 9 anchors) --filter_bboxes--> best box per location
             -> for each of the 2 refinement stages:
                    feat_refine_module[i] (FRM: 1x5 -> 5x1 conv + 1x1 conv, re-sampled at the boxes, added back)
                    refine_head[i] (RotatedRetinaHead, the previous boxes as its one anchor per location)
                    refine_head[i].refine_bboxes -> the boxes of the next stage

Training sums the first stage's losses (``loss_s0_cls``, ``loss_s0_bbox``: assignment on the ground truth's horizontal
envelope, IoU 0.5 / 0.4) and each refinement stage's (``loss_sr{i}_cls``, ``loss_sr{i}_bbox``: rotated IoU 0.6 / 0.5,
then 0.7 / 0.6, weighted by ``stage_loss_weights``). Inference runs the last refinement head's test path on the
boxes of the previous stage. Boxes are ``oc`` inside (the official ``angle_version``), le90 outside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lsknet.errors import ConfigError
from lsknet.models.detector_base import (
    Detector,
    build_detector_backbone,
    load_detector_weights,
    options_dataclass,
)
from lsknet.models.fpn import FPN
from lsknet.models.retina_head import RetinaTestConfig, RotatedAnchorGenerator, RotatedRetinaHead
from lsknet.ops import DeltaXYWHTCoder, rotated_feature_align

__all__ = ["R3Det", "FeatureRefineModule", "build_r3det"]

STRIDES = (8, 16, 32, 64, 128)
#: (pos_iou_thr, neg_iou_thr) of the refinement stages in the official config
REFINE_IOU_THRS = ((0.6, 0.5), (0.7, 0.6))


class FeatureRefineModule(nn.Module):
    """R3Det's FRM (MMRotate ``FeatureRefineModule``): per level ``f = conv_5_1(conv_1_5(x)) + conv_1_1(x)``, then
    ``x + rotated_feature_align(f, boxes, 1 / stride, points)``.

    ``points=1`` (the official call: only the box centre) or 5 (centre and corners). ``xy_swapped``: see
    :func:`lsknet.ops.rotated_feature_align` (official True).
    """

    def __init__(
        self,
        in_channels: int = 256,
        featmap_strides: Sequence[int] = STRIDES,
        points: int = 1,
        xy_swapped: bool = True,
    ) -> None:
        super().__init__()
        self.featmap_strides = [int(s) for s in featmap_strides]
        self.points = points
        self.xy_swapped = xy_swapped
        self.conv_5_1 = nn.Conv2d(in_channels, in_channels, (5, 1), padding=(2, 0))
        self.conv_1_5 = nn.Conv2d(in_channels, in_channels, (1, 5), padding=(0, 2))
        self.conv_1_1 = nn.Conv2d(in_channels, in_channels, 1)
        for conv in (self.conv_5_1, self.conv_1_5, self.conv_1_1):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: Sequence[torch.Tensor], rois: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        """``feats``: per level (B, C, H, W); ``rois``: per image, per level (H * W, 5) boxes in pixels."""
        out = []
        for lvl, (x, stride) in enumerate(zip(feats, self.featmap_strides)):
            f = self.conv_5_1(self.conv_1_5(x)) + self.conv_1_1(x)
            boxes = torch.cat([r[lvl] for r in rois])
            out.append(x + rotated_feature_align(f, boxes, 1.0 / stride, self.points, xy_swapped=self.xy_swapped))
        return out


class R3Det(Detector):
    """R3Det detector (see the module docstring); ``model(images, targets)`` -> losses, ``model.eval()(images)`` ->
    per-image ``{"rboxes" le90, "scores", "labels"}``."""

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        bbox_head: RotatedRetinaHead,
        feat_refine_module: Sequence[FeatureRefineModule],
        refine_head: Sequence[RotatedRetinaHead],
        backbone_indices: Sequence[int] | None = None,
        stage_loss_weights: Sequence[float] | None = None,
        **detector_kwargs: Any,
    ) -> None:
        super().__init__(backbone, neck, backbone_indices, **detector_kwargs)
        if len(feat_refine_module) != len(refine_head) or not refine_head:
            raise ValueError("R3Det needs one feature refinement module per refinement head (at least one)")
        self.bbox_head = bbox_head
        self.feat_refine_module = nn.ModuleList(feat_refine_module)
        self.refine_head = nn.ModuleList(refine_head)
        self.num_refine_stages = len(refine_head)
        self.stage_loss_weights = list(stage_loss_weights or [1.0] * self.num_refine_stages)

    @property
    def num_classes(self) -> int:
        return self.bbox_head.num_classes

    @staticmethod
    def checkpoint_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
        w = state_dict.get("refine_head.0.retina_cls.weight")
        return int(w.shape[0]) if w is not None else None  # one anchor per location in the refinement heads

    def _stages(
        self,
        feats: list[torch.Tensor],
        gts: list[torch.Tensor] | None = None,
        labels: list[torch.Tensor] | None = None,
        pad_sizes: list[tuple[int, int]] | None = None,
    ) -> tuple[dict[str, torch.Tensor], tuple[list[torch.Tensor], list[torch.Tensor]], list[list[torch.Tensor]]]:
        """All stages: (losses when ``gts`` are given, the last head's outputs, the boxes it refines)."""
        losses: dict[str, torch.Tensor] = {}
        outs = self.bbox_head(feats)
        if gts is not None:
            for k, v in self.bbox_head.loss(*outs, gts, labels, pad_sizes=pad_sizes).items():
                losses[k.replace("loss_", "loss_s0_")] = v
        rois = self.bbox_head.filter_bboxes(*outs)
        for i in range(self.num_refine_stages):
            x = self.feat_refine_module[i](feats, rois)
            outs = self.refine_head[i](x)
            if gts is not None:
                lw = self.stage_loss_weights[i]
                stage = self.refine_head[i].loss(*outs, gts, labels, anchors=rois, pad_sizes=pad_sizes)
                for k, v in stage.items():
                    losses[k.replace("loss_", f"loss_sr{i}_")] = v * lw
            if i + 1 < self.num_refine_stages:
                rois = self.refine_head[i].refine_bboxes(*outs, rois=rois)
        return losses, outs, rois

    def loss_batch(
        self,
        batch: torch.Tensor,
        sizes: list[tuple[int, int]],
        gt_rboxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        feats = self.extract_feats(batch)
        pad_sizes = [self.padded_size(h, w) for h, w in sizes]
        return self._stages(feats, gt_rboxes, gt_labels, pad_sizes)[0]

    @torch.no_grad()
    def predict_batch(
        self,
        batch: torch.Tensor,
        sizes: list[tuple[int, int]],
        scale_factors: list[tuple[float, float]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        feats = self.extract_feats(batch)
        _, outs, rois = self._stages(feats)
        return self.refine_head[-1].predict(*outs, sizes, anchors=rois, scale_factors=scale_factors)


def _coder() -> DeltaXYWHTCoder:
    """The official R3Det coder: ``oc``, means 0, stds 1, no angle normalisation, no edge swap, no projection."""
    return DeltaXYWHTCoder((0.0,) * 5, (1.0,) * 5, angle_version="oc", norm_factor=None, edge_swap=False, proj_xy=False)


def build_r3det(
    variant: str = "lsknet_t",
    num_classes: int = 15,
    checkpoint: str | Path | None = None,
    *,
    backbone_checkpoint: str | Path | None = None,
    drop_path_rate: float = 0.1,
    proj_drop_rate: float = 0.1,
    fpn_channels: int = 256,
    head: Mapping[str, Any] | None = None,
    **backbone_kwargs: Any,
) -> R3Det:
    """R3Det with an LSKNet (or timm) backbone and the official ``lsk_{t,s}_r3det_fpn_1x_dota`` settings.

    ``head`` keyword overrides: ``test_cfg`` (mapping of :class:`RetinaTestConfig` fields), ``num_refine_stages``
    (official 2), ``stage_loss_weights``, ``stacked_convs`` (4), ``frm_points`` (1), ``frm_xy_swapped`` (True),
    ``refine_iou_thrs`` (per stage ``(pos, neg)``), and ``size_divisor`` / ``test_resize`` / ``batch_same_size`` of
    the detector. Unknown keys raise :class:`ConfigError`.
    """
    opts = dict(head or {})
    test_cfg = options_dataclass(RetinaTestConfig, opts.pop("test_cfg", None), "head.test_cfg") or RetinaTestConfig()
    stages = int(opts.pop("num_refine_stages", 2))
    iou_thrs = [tuple(t) for t in opts.pop("refine_iou_thrs", REFINE_IOU_THRS)]
    if len(iou_thrs) < stages:
        raise ConfigError(f"head.refine_iou_thrs: {len(iou_thrs)} entries for {stages} refinement stages")
    weights = opts.pop("stage_loss_weights", None)
    stacked = int(opts.pop("stacked_convs", 4))
    points = int(opts.pop("frm_points", 1))
    swapped = bool(opts.pop("frm_xy_swapped", True))
    detector_kw = {k: opts.pop(k) for k in ("size_divisor", "test_resize", "batch_same_size") if k in opts}
    if opts:
        raise ConfigError(f"unknown R3Det head option(s): {sorted(opts)}")

    backbone, indices, channels = build_detector_backbone(
        variant, drop_path_rate=drop_path_rate, proj_drop_rate=proj_drop_rate, **backbone_kwargs
    )
    neck = FPN(channels, fpn_channels, num_outs=5, start_level=1, add_extra_convs="on_input")
    c = fpn_channels
    bbox_head = RotatedRetinaHead(
        num_classes, c, c, stacked, RotatedAnchorGenerator(STRIDES), _coder(), test_cfg=test_cfg
    )
    frms, refine = [], []
    for i in range(stages):
        pos, neg = iou_thrs[i]
        frms.append(FeatureRefineModule(c, STRIDES, points=points, xy_swapped=swapped))
        refine.append(
            RotatedRetinaHead(
                num_classes, c, c, stacked,
                RotatedAnchorGenerator(STRIDES, ratios=[1.0], scales=[1.0]),  # only strides and 1 anchor/location
                _coder(), pos_iou_thr=pos, neg_iou_thr=neg, assign_by_circumhbbox=None, test_cfg=test_cfg,
            )  # fmt: skip
        )
    model = R3Det(backbone, neck, bbox_head, frms, refine, indices, weights, **detector_kw)
    return load_detector_weights(model, checkpoint, backbone_checkpoint)

