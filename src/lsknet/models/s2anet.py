"""S2A-Net detector (Han et al., Align Deep Features for Oriented Object Detection, TGRS 2021) with an LSKNet
backbone, as the official LSKNet configs ``lsk_{t,s}_s2anet_fpn_1x_dota.py`` on MMRotate 0.3.4.

    backbone -> FPN (strides 8..128, extra levels by stride-2 convolutions on the last backbone map)
             -> fam_head (RotatedRetinaHead, one square anchor per position): class scores + anchor refinement
             -> align_conv (deformable 3x3 conv sampling each refined anchor's grid)
             -> odm_head (ORConv + rotation-invariant pooling): class scores + second refinement of the refined anchors

Training: focal loss + smooth-L1 for both heads; the FAM assigns the square anchors, the ODM the refined anchors
(rotated-IoU max assignment, positive >= 0.5, negative < 0.4). Test: the ODM's scores and the boxes decoded from the
refined anchors, per-level top 2000, class-wise rotated NMS (IoU 0.1, score > 0.05, at most 2000 per image).

Angles are ``le135`` inside (the official config's coder, so decoding equals the official one); results come out
as le90 rboxes ``(cx, cy, w, h, theta)`` in input pixels. Parameter names equal the official checkpoints'
(``backbone.*``, ``neck.*``, ``fam_head.*``, ``align_conv.ac.*``, ``odm_head.*``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lsknet.errors import ConfigError
from lsknet.models.detector_base import (
    Detector,
    build_detector_backbone,
    load_detector_weights,
    options_dataclass,
)
from lsknet.models.fpn import FPN
from lsknet.models.retina_head import RetinaTestConfig, RotatedAnchorGenerator, RotatedRetinaHead
from lsknet.models.s2anet_parts import AlignConvModule, ODMRefineHead
from lsknet.ops import DeltaXYWHTCoder

__all__ = ["S2ANet", "build_s2anet", "s2anet_coder"]

STRIDES = (8, 16, 32, 64, 128)
Levels = list[torch.Tensor]


def s2anet_coder() -> DeltaXYWHTCoder:
    """The coder of both S2A-Net heads: le135, projected centre offsets, angle delta in units of pi, no edge swap,
    means 0, stds 1 (official ``DeltaXYWHAOBBoxCoder`` settings)."""
    return DeltaXYWHTCoder((0.0,) * 5, (1.0,) * 5, angle_version="le135", norm_factor=1, edge_swap=False, proj_xy=True)


class S2ANet(Detector):
    """S2A-Net: ``backbone`` -> ``neck`` -> ``fam_head`` -> ``align_conv`` -> ``odm_head`` (see the module docstring).

    Args:
        backbone, neck, backbone_indices, **detector_kwargs: as :class:`~lsknet.models.detector_base.Detector`.
        fam_head: :class:`~lsknet.models.retina_head.RotatedRetinaHead` with one anchor per location.
        align_conv: :class:`~lsknet.models.s2anet_parts.AlignConvModule` (one AlignConv per level).
        odm_head: :class:`~lsknet.models.s2anet_parts.ODMRefineHead`.
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        neck: FPN,
        fam_head: RotatedRetinaHead,
        align_conv: AlignConvModule,
        odm_head: ODMRefineHead,
        backbone_indices: list[int] | None = None,
        **detector_kwargs: Any,
    ) -> None:
        super().__init__(backbone, neck, backbone_indices, **detector_kwargs)
        if fam_head.num_anchors != 1:
            raise ValueError(f"S2A-Net's FAM needs one anchor per location, got {fam_head.num_anchors}")
        self.fam_head = fam_head
        self.align_conv = align_conv
        self.odm_head = odm_head

    @property
    def num_classes(self) -> int:
        """Number of object classes."""
        return self.odm_head.num_classes

    @staticmethod
    def checkpoint_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
        """Classes of an S2A-Net state dict (rows of ``odm_head.odm_cls``: sigmoid, no background)."""
        w = state_dict.get("odm_head.odm_cls.weight")
        return int(w.shape[0]) if w is not None else None

    def refine(self, feats: list[torch.Tensor]) -> tuple[tuple[Levels, Levels], list[Levels], tuple[Levels, Levels]]:
        """Both stages on pyramid features: FAM outputs, the refined anchors (per image and level (H * W, 5), le135,
        input pixels, no gradient) and ODM outputs."""
        fam_out = self.fam_head(feats)
        rois = self.fam_head.refine_bboxes(*fam_out)
        per_level = [torch.stack([img[lvl] for img in rois]) for lvl in range(len(feats))]  # (B, H * W, 5)
        odm_out = self.odm_head(self.align_conv(feats, per_level))
        return fam_out, rois, odm_out

    def loss_batch(
        self,
        batch: torch.Tensor,
        sizes: list[tuple[int, int]],
        gt_rboxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """``loss_fam_cls``, ``loss_fam_bbox`` (square anchors), ``loss_odm_cls``, ``loss_odm_bbox`` (refined
        anchors): official ``fam.loss_cls`` ... ``odm.loss_bbox``. Each image's own padded size bounds its anchors."""
        feats = self.extract_feats(batch)
        fam_out, rois, odm_out = self.refine(feats)
        pads = [self.padded_size(h, w) for h, w in sizes]
        fam = self.fam_head.loss(*fam_out, gt_rboxes, gt_labels, pad_sizes=pads)
        odm = self.odm_head.loss(*odm_out, gt_rboxes, gt_labels, anchors=rois, pad_sizes=pads)
        return {
            "loss_fam_cls": fam["loss_cls"],
            "loss_fam_bbox": fam["loss_bbox"],
            "loss_odm_cls": odm["loss_cls"],
            "loss_odm_bbox": odm["loss_bbox"],
        }

    @torch.no_grad()
    def predict_batch(
        self,
        batch: torch.Tensor,
        sizes: list[tuple[int, int]],
        scale_factors: list[tuple[float, float]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Official ``simple_test``: ODM scores and boxes decoded from the refined anchors, class-wise NMS; le90."""
        _, rois, odm_out = self.refine(self.extract_feats(batch))
        return self.odm_head.predict(*odm_out, sizes, anchors=rois, scale_factors=scale_factors)


def build_s2anet(
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
) -> S2ANet:
    """S2A-Net with an LSKNet (or any timm) backbone and the official ``lsk_{t,s}_s2anet_fpn_1x_dota`` settings.

    Args:
        variant: ``"lsknet_t"``/``"t"``, ``"lsknet_s"``/``"s"`` (a ``_s2anet`` suffix is accepted) or a timm model
            name with feature levels of strides 4..32 (e.g. ``"resnet18"`` for quick experiments).
        num_classes: object classes (15 for DOTA-v1.0).
        checkpoint: a detector checkpoint (official MMRotate S2A-Net layout or this project's).
        backbone_checkpoint: ImageNet backbone weights (ignored when ``checkpoint`` is given).
        drop_path_rate, proj_drop_rate: backbone stochastic depth and MLP dropout (official 0.1 / 0.1).
        fpn_channels: FPN and head channels (official 256; the ODM's oriented filters are ``fpn_channels / 8``).
        head: keyword overrides: ``test_cfg`` (mapping of :class:`~lsknet.models.retina_head.RetinaTestConfig` fields,
            used by the ODM's test path), ``fam`` / ``odm`` (keyword arguments of the two heads, e.g. assigner
            thresholds or ``smooth_l1_beta``), ``align_kernel_size`` (3).
    """
    name = str(variant).lower().removesuffix("_s2anet")
    backbone, indices, channels = build_detector_backbone(
        name, drop_path_rate=drop_path_rate, proj_drop_rate=proj_drop_rate, **backbone_kwargs
    )
    opts = dict(head or {})
    unknown = sorted(set(opts) - {"test_cfg", "fam", "odm", "align_kernel_size"})
    if unknown:
        raise ConfigError(f"unknown S2A-Net head option(s) {unknown}; known: test_cfg, fam, odm, align_kernel_size")
    test_cfg = options_dataclass(RetinaTestConfig, opts.get("test_cfg"), "head.test_cfg")
    fam_kw = {"assign_by_circumhbbox": None, "test_cfg": test_cfg, **dict(opts.get("fam") or {})}
    odm_kw = {"test_cfg": test_cfg, **dict(opts.get("odm") or {})}
    try:
        neck = FPN(channels, fpn_channels, 5, start_level=1, add_extra_convs="on_input")
        fam_head = RotatedRetinaHead(
            num_classes,
            fpn_channels,
            fpn_channels,
            stacked_convs=2,
            anchor_generator=RotatedAnchorGenerator(STRIDES, ratios=(1.0,), scales=(4.0,)),
            bbox_coder=s2anet_coder(),
            **fam_kw,
        )
        align_conv = AlignConvModule(fpn_channels, STRIDES, int(opts.get("align_kernel_size", 3)))
        odm_head = ODMRefineHead(
            num_classes, fpn_channels, fpn_channels, 2, STRIDES, bbox_coder=s2anet_coder(), **odm_kw
        )
    except TypeError as err:
        raise ConfigError(f"bad S2A-Net option: {err}") from None
    model = S2ANet(backbone, neck, fam_head, align_conv, odm_head, indices)
    return load_detector_weights(model, checkpoint, backbone_checkpoint)
