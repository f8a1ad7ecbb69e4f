"""RoI Transformer = backbone + FPN + horizontal RPN + two-stage RoI head (RRoI learner, rotated RoI head), with
the official LSKNet settings (``configs/lsknet/lsk_{t,s}_roitrans_fpn_1x_dota.py`` on MMRotate 0.3.4).

Usage::

    model = build_roi_transformer("lsknet_t", num_classes=15)     # or lsknet.create_model("lsknet_t_roitrans")
    losses = model(images, targets)                               # train mode: dict of losses
    model.eval(); results = model(images)                         # list of {"rboxes", "scores", "labels"}

Inputs, outputs and box conventions are those of every :class:`~lsknet.models.detector_base.Detector` (le90 rboxes
in input pixels). Parameter names equal the MMRotate checkpoints of that config (``backbone.*``, ``neck.*``,
``rpn_head.rpn_{conv,cls,reg}``, ``roi_head.bbox_head.{0,1}.*``) so official files load strictly.

Losses: ``loss_rpn_cls``, ``loss_rpn_bbox`` and per stage ``loss_cls_s{i}``, ``loss_bbox_s{i}`` (official names
``s{i}.loss_cls`` / ``s{i}.loss_bbox``), plus ``acc_s{i}`` (logged only).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lsknet.errors import ConfigError
from lsknet.models.detector_base import (
    build_detector_backbone,
    load_detector_weights,
    options_dataclass,
)
from lsknet.models.fpn import FPN
from lsknet.models.roi_head import RoITestConfig
from lsknet.models.roi_trans_head import RoITransRoIHead, StageTrainConfig
from lsknet.models.rpn import AnchorGenerator, HorizontalRPNHead, ProposalConfig
from lsknet.models.two_stage import TwoStageDetector

__all__ = ["RoITransformer", "build_roi_transformer"]


class RoITransformer(TwoStageDetector):
    """RoI Transformer composed of readable parts: ``backbone``, ``neck`` (see
    :class:`~lsknet.models.detector_base.Detector` for the input handling and its options), ``rpn_head`` (a
    :class:`~lsknet.models.rpn.HorizontalRPNHead`) and ``roi_head`` (a
    :class:`~lsknet.models.roi_trans_head.RoITransRoIHead`); training and inference run the two-stage flow of
    :class:`~lsknet.models.two_stage.TwoStageDetector` (losses: see the module docstring)."""

    classifier_key = "roi_head.bbox_head.1.fc_cls.weight"


def _proposal_cfg(value: Any, what: str) -> ProposalConfig | None:
    """A :class:`ProposalConfig` from a mapping, with the RoI Transformer default NMS IoU 0.7 (not 0.8)."""
    if isinstance(value, Mapping):
        value = {"nms_iou": 0.7, **value}
    return options_dataclass(ProposalConfig, value, what)


def _stage_cfgs(value: Any) -> list[StageTrainConfig] | None:
    if value is None or isinstance(value, StageTrainConfig):
        return value
    if isinstance(value, Mapping):
        value = [value, value]
    return [options_dataclass(StageTrainConfig, v, f"head.train_cfg[{i}]") for i, v in enumerate(value)]


_RPN_KEYS = {
    "pos_iou_thr",
    "neg_iou_thr",
    "min_pos_iou",
    "match_low_quality",
    "num_samples",
    "pos_fraction",
    "allowed_border",
    "train_proposals",
    "test_proposals",
    "smooth_l1_beta",
}


def build_roi_transformer(
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
) -> RoITransformer:
    """RoI Transformer with an LSKNet (or any timm ``features_only``) backbone, official defaults.

    Args:
        variant: ``"lsknet_t"``/``"t"``, ``"lsknet_s"``/``"s"`` or a timm model with feature strides 4..32.
        num_classes: object classes (15 for DOTA-v1.0).
        checkpoint: a detector checkpoint (MMRotate ``{"meta", "state_dict"}`` of the official config, or this
            project's), loaded strictly.
        backbone_checkpoint: ImageNet backbone weights (ignored when ``checkpoint`` is given).
        drop_path_rate, proj_drop_rate: backbone stochastic depth and MLP dropout (official 0.1 / 0.1).
        fpn_channels: FPN / RPN / RoI channels (official 256).
        head: keyword overrides. ``rpn_*`` keys go to :class:`~lsknet.models.rpn.HorizontalRPNHead` without the
            prefix (``rpn_train_proposals`` / ``rpn_test_proposals`` may be mappings of :class:`ProposalConfig`
            fields, NMS IoU 0.7 unless given; ``anchor_*`` keys set the anchors); the other keys go to
            :class:`~lsknet.models.roi_trans_head.RoITransRoIHead` (``test_cfg``: a mapping of
            :class:`RoITestConfig` fields; ``train_cfg``: one mapping of :class:`StageTrainConfig` fields for both
            stages or a list of two; ``stage_loss_weights``, ``fc_channels``, ``smooth_l1_beta``).
    """
    backbone, backbone_indices, channels = build_detector_backbone(
        str(variant).removesuffix("_roitrans"),
        drop_path_rate=drop_path_rate,
        proj_drop_rate=proj_drop_rate,
        **backbone_kwargs,
    )
    head_kw = dict(head or {})
    rpn_kw = {k.removeprefix("rpn_"): head_kw.pop(k) for k in list(head_kw) if k.startswith("rpn_")}
    anchor_kw = {k.removeprefix("anchor_"): head_kw.pop(k) for k in list(head_kw) if k.startswith("anchor_")}
    unknown = sorted(set(rpn_kw) - _RPN_KEYS)
    if unknown:
        known = ", ".join("rpn_" + k for k in sorted(_RPN_KEYS))
        raise ConfigError(f"unknown RPN option(s) {['rpn_' + k for k in unknown]}; known: {known}")
    for key in ("train_proposals", "test_proposals"):
        rpn_kw[key] = _proposal_cfg(rpn_kw.get(key), f"head.rpn_{key}")
    head_kw["test_cfg"] = options_dataclass(RoITestConfig, head_kw.get("test_cfg"), "head.test_cfg")
    head_kw["train_cfg"] = _stage_cfgs(head_kw.get("train_cfg"))
    allowed = {"roi_size", "fc_channels", "stage_loss_weights", "train_cfg", "test_cfg", "smooth_l1_beta"}
    unknown = sorted(set(head_kw) - allowed)
    if unknown:
        raise ConfigError(f"unknown head option(s) {unknown}; known: {sorted(allowed)} and rpn_* / anchor_* keys")
    try:
        rpn_head = HorizontalRPNHead(fpn_channels, fpn_channels, AnchorGenerator(**anchor_kw), **rpn_kw)
        roi_head = RoITransRoIHead(num_classes, fpn_channels, **head_kw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bad RoI Transformer option: {err}") from None
    model = RoITransformer(backbone, FPN(channels, fpn_channels, 5), rpn_head, roi_head, backbone_indices)
    return load_detector_weights(model, checkpoint, backbone_checkpoint)

