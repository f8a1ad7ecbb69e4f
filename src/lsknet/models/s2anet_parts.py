"""Layers of S2A-Net (Han et al., Align Deep Features for Oriented Object Detection, TGRS 2021) with MMRotate 0.3.4
parameter names: the oriented convolution (``ORConv2d``), the alignment convolution (``AlignConv`` /
``AlignConvModule``) and the layers of the oriented detection module's head (``ODMRefineHead``).

The tensor ops live in :mod:`lsknet.ops.orconv`; these modules only hold the parameters. Boxes are ``(cx, cy, w, h,
theta)`` in input pixels and radians.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d

from lsknet.models.fpn import ConvUnit
from lsknet.models.retina_head import RotatedAnchorGenerator, RotatedRetinaHead
from lsknet.ops.orconv import active_rotated_filter, align_conv_offsets, arf_indices, rotation_invariant_pool

__all__ = ["AlignConv", "AlignConvModule", "ODMRefineHead", "ORConv2d"]


class ORConv2d(nn.Module):
    """Oriented convolution: a convolution with the rotated copies of an active rotating filter.

    ``weight`` ``(out_channels, in_channels, n_orientation, k, k)``, ``bias`` ``(out_channels * n_rotation,)`` and the
    persistent index buffer ``indices`` ``(n_orientation, k, k, n_rotation)`` (MMRotate ``ORConv2d``; official S2A-Net:
    ``arf_config=(1, 8)``, 3x3, padding 1). Input channels ``in_channels * n_orientation``; output channel
    ``o * n_rotation + r`` is filter ``o`` turned by ``r * 360 / n_rotation`` degrees.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        arf_config: tuple[int, int] = (1, 8),
        padding: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.n_orientation, self.n_rotation = (int(v) for v in arf_config)
        self.padding = padding
        self.register_buffer("indices", arf_indices(self.n_orientation, self.n_rotation, kernel_size))
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.n_orientation, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels * self.n_rotation)) if bias else None
        fan_in = in_channels * self.n_orientation * kernel_size * kernel_size
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / fan_in))

    def rotated_weight(self) -> torch.Tensor:
        """The ``(out * n_rotation, in * n_orientation, k, k)`` kernel the convolution applies."""
        return active_rotated_filter(self.weight, self.indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.rotated_weight(), self.bias, padding=self.padding)


class AlignConv(nn.Module):
    """A ``k x k`` deformable convolution (no bias) + ReLU that samples, at every position, the ``k x k`` grid of that
    position's refined anchor (offsets from :func:`~lsknet.ops.orconv.align_conv_offsets`, not back-propagated, as
    the official module)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: float = 8.0) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.deform_conv = DeformConv2d(
            in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False
        )
        nn.init.normal_(self.deform_conv.weight, std=0.01)

    def offsets(self, rboxes: torch.Tensor, featmap_size: tuple[int, int]) -> torch.Tensor:
        """``(B, H * W, 5)`` boxes -> ``(B, 2 * k * k, H, W)`` offsets."""
        return align_conv_offsets(rboxes, featmap_size, self.stride, self.kernel_size)

    def forward(self, x: torch.Tensor, rboxes: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``rboxes`` ``(B, H * W, 5)`` (row-major positions) -> ``(B, C_out, H, W)``."""
        offset = self.offsets(rboxes.detach().to(x.dtype), (x.shape[2], x.shape[3]))
        return F.relu(self.deform_conv(x, offset))


class AlignConvModule(nn.Module):
    """One :class:`AlignConv` per pyramid level (``ac.{i}``; official: 3x3, 256 channels, strides 8..128)."""

    def __init__(
        self, channels: int = 256, featmap_strides: Sequence[float] = (8, 16, 32, 64, 128), kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.featmap_strides = [float(s) for s in featmap_strides]
        self.ac = nn.ModuleList(AlignConv(channels, channels, kernel_size, s) for s in self.featmap_strides)

    def forward(self, feats: Sequence[torch.Tensor], rboxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``feats``: pyramid maps; ``rboxes``: per level ``(B, H * W, 5)`` refined anchors."""
        if len(feats) != len(self.ac) or len(rboxes) != len(self.ac):
            raise ValueError(f"expected {len(self.ac)} levels, got {len(feats)} maps and {len(rboxes)} box sets")
        return [ac(x, r) for ac, x, r in zip(self.ac, feats, rboxes)]


class ODMRefineHead(RotatedRetinaHead):
    """Head of the oriented detection module (MMRotate ``ODMRefineHead``): the training targets, losses and test
    path of :class:`~lsknet.models.retina_head.RotatedRetinaHead` on anchors passed in (the FAM's refined boxes, one
    per location), with its own layers: an oriented convolution ``or_conv`` (``in_channels`` -> ``feat_channels / 8``
    filters x 8 rotations), rotation-invariant pooling (max over the 8 rotations) feeding the classification tower,
    the orientation-sensitive map feeding the regression tower, ``stacked_convs`` 3x3 conv + ReLU per tower,
    ``odm_cls`` (sigmoid class logits) and ``odm_reg`` (5 deltas), both 3x3. Keyword arguments go to
    :class:`~lsknet.models.retina_head.RotatedRetinaHead` (coder, assigner thresholds, losses, ``test_cfg``).
    """

    def __init__(
        self,
        num_classes: int = 15,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 2,
        featmap_strides: Sequence[int] = (8, 16, 32, 64, 128),
        **kwargs: Any,
    ) -> None:
        generator = RotatedAnchorGenerator(featmap_strides, ratios=(1.0,), scales=(1.0,))  # strides / valid flags
        kwargs.setdefault("assign_by_circumhbbox", None)
        super().__init__(num_classes, in_channels, feat_channels, 0, anchor_generator=generator, **kwargs)
        del self.cls_convs, self.reg_convs, self.retina_cls, self.retina_reg  # the RetinaNet layers: replaced
        self.n_rotation = 8
        or_channels = feat_channels // self.n_rotation
        self.or_conv = ORConv2d(in_channels, or_channels, 3, arf_config=(1, self.n_rotation), padding=1)
        self.cls_convs = nn.ModuleList(
            ConvUnit(or_channels if i == 0 else feat_channels, feat_channels, 3, padding=1)
            for i in range(stacked_convs)
        )
        self.reg_convs = nn.ModuleList(
            ConvUnit(or_channels * self.n_rotation if i == 0 else feat_channels, feat_channels, 3, padding=1)
            for i in range(stacked_convs)
        )
        self.odm_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.odm_reg = nn.Conv2d(feat_channels, 5, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.01) weights and zero biases everywhere (the ORConv too: it is a ``Conv2d`` for MMCV's
        initialiser); the classifier bias starts at ``-log(99)`` (prior probability 0.01)."""
        if not hasattr(self, "odm_cls"):  # called by the parent before the ODM layers exist
            return
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, ORConv2d)):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.odm_cls.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level ``(B, C, H, W)`` -> class logits ``(B, num_classes, H, W)`` and deltas ``(B, 5, H, W)``."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            or_feat = self.or_conv(x)
            cls_feat = rotation_invariant_pool(or_feat, self.n_rotation)
            reg_feat = or_feat
            for conv in self.cls_convs:
                cls_feat = F.relu(conv(cls_feat))
            for conv in self.reg_convs:
                reg_feat = F.relu(conv(reg_feat))
            cls_scores.append(self.odm_cls(cls_feat))
            bbox_preds.append(self.odm_reg(reg_feat))
        return cls_scores, bbox_preds
