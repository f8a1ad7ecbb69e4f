"""Oriented R-CNN detector = backbone + FPN + oriented RPN + rotated RoI head (the official LSKNet detector).

Usage::

    model = build_oriented_rcnn("lsknet_t", num_classes=15)            # or lsknet.create_model("lsknet_t_orcnn")
    losses = model(images, targets)                                  # train mode: dict of scalar losses
    model.eval(); results = model(images)                            # list of {"rboxes", "scores", "labels"}

``images``: a list of (3, H, W) RGB tensors with values in 0..255 (uint8 or float), any sizes; they are
normalised with the ImageNet mean/std in 0..255 units and padded (bottom/right) to a common size that is a
multiple of 32. ``targets``: per image ``{"rboxes": (N, 5) float, "labels": (N,) int64 in [0, num_classes)}``.
Boxes are ``(cx, cy, w, h, theta)`` in input pixels and radians, le90 (``lsknet.ops``).

Parameter names equal the MMRotate 0.x checkpoints (``backbone.*``, ``neck.*``, ``rpn_head.*``, ``roi_head.*``),
so ``load_detector_checkpoint`` reads official detector files without renaming.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lsknet.errors import ConfigError
from lsknet.models.detector_base import (
    PIXEL_MEAN,
    PIXEL_STD,
    build_detector_backbone,
    load_detector_checkpoint,
    load_detector_weights,
    options_dataclass,
)
from lsknet.models.fpn import FPN
from lsknet.models.roi_head import OrientedRoIHead, RoITestConfig
from lsknet.models.rpn import AnchorGenerator, OrientedRPNHead, ProposalConfig
from lsknet.models.two_stage import TwoStageDetector

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "OrientedRCNN",
    "build_oriented_rcnn",
    "load_detector_checkpoint",
]

_log = logging.getLogger(__name__)


class OrientedRCNN(TwoStageDetector):
    """Two-stage oriented detector composed of readable parts.

    Args:
        backbone: module producing the 4 feature maps of strides 4, 8, 16, 32 (finest first).
        neck: :class:`~lsknet.models.fpn.FPN` (5 levels, strides 4..64).
        rpn_head: :class:`~lsknet.models.rpn.OrientedRPNHead`.
        roi_head: :class:`~lsknet.models.roi_head.OrientedRoIHead`.
        backbone_indices, pixel_mean, pixel_std, size_divisor, batch_same_size, test_resize: see
            :class:`~lsknet.models.detector_base.Detector`.
    """

    classifier_key = "roi_head.bbox_head.fc_cls.weight"

    def __init__(
        self,
        backbone: nn.Module,
        neck: FPN,
        rpn_head: OrientedRPNHead,
        roi_head: OrientedRoIHead,
        backbone_indices: Sequence[int] | None = None,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        size_divisor: int = 32,
        batch_same_size: bool = False,
        test_resize: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            backbone,
            neck,
            rpn_head,
            roi_head,
            backbone_indices,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            size_divisor=size_divisor,
            batch_same_size=batch_same_size,
            test_resize=test_resize,
        )


def build_oriented_rcnn(
    variant: str = "lsknet_t",
    num_classes: int = 15,
    checkpoint: str | Path | None = None,
    *,
    backbone_checkpoint: str | Path | None = None,
    drop_path_rate: float = 0.1,
    proj_drop_rate: float = 0.1,
    fpn_channels: int = 256,
    rpn: Mapping[str, Any] | None = None,
    roi: Mapping[str, Any] | None = None,
    **backbone_kwargs: Any,
) -> OrientedRCNN:
    """Oriented R-CNN with an LSKNet (or any timm ``features_only``) backbone, official defaults.

    Args:
        variant: ``"lsknet_t"``/``"t"`` or ``"lsknet_s"``/``"s"``, or any timm model name with 4 feature levels of
            strides 4..32 (e.g. ``"resnet18"`` for quick experiments).
        num_classes: object classes (15 for DOTA-v1.0).
        checkpoint: a detector checkpoint (MMRotate ``{"meta", "state_dict"}`` or this project's), loaded with
            :func:`load_detector_checkpoint`.
        backbone_checkpoint: ImageNet backbone weights (ignored when ``checkpoint`` is given).
        drop_path_rate, proj_drop_rate: backbone stochastic depth and MLP dropout (official detector: 0.1 / 0.1).
        fpn_channels: FPN / RPN / RoI channels (official 256; changing it changes the parameter count).
        rpn: keyword overrides for :class:`~lsknet.models.rpn.OrientedRPNHead` (``train_proposals`` /
            ``test_proposals`` may be mappings of :class:`ProposalConfig` fields, ``anchor_*`` keys set anchors).
        roi: keyword overrides for :class:`~lsknet.models.roi_head.OrientedRoIHead` (``test_cfg`` may be a mapping
            of :class:`RoITestConfig` fields).
    """
    backbone, backbone_indices, channels = build_detector_backbone(
        str(variant).removesuffix("_orcnn"),
        drop_path_rate=drop_path_rate,
        proj_drop_rate=proj_drop_rate,
        **backbone_kwargs,
    )
    rpn_kw = dict(rpn or {})
    anchor_kw = {k.removeprefix("anchor_"): rpn_kw.pop(k) for k in list(rpn_kw) if k.startswith("anchor_")}
    for key in ("train_proposals", "test_proposals"):
        rpn_kw[key] = options_dataclass(ProposalConfig, rpn_kw.get(key), f"rpn.{key}")
    roi_kw = dict(roi or {})
    roi_kw["test_cfg"] = options_dataclass(RoITestConfig, roi_kw.get("test_cfg"), "roi.test_cfg")
    try:
        rpn_head = OrientedRPNHead(fpn_channels, fpn_channels, AnchorGenerator(**anchor_kw), **rpn_kw)
        roi_head = OrientedRoIHead(num_classes, fpn_channels, **roi_kw)
    except TypeError as err:
        raise ConfigError(f"bad detector option: {err}") from None
    model = OrientedRCNN(backbone, FPN(channels, fpn_channels, 5), rpn_head, roi_head, backbone_indices)
    return load_detector_weights(model, checkpoint, backbone_checkpoint)
