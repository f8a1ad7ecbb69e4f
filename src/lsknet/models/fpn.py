"""Feature Pyramid Network neck (Lin et al., 2017) as configured for the official LSKNet Oriented R-CNN.

Lateral 1x1 convolutions bring the backbone stages to ``out_channels``, a top-down pathway adds the
nearest-upsampled coarser map, 3x3 convolutions smooth every level, and extra levels come from a
stride-2 max-pool of the top output (``add_extra_convs=False`` in MMDetection terms).
With the four LSKNet stages (strides 4, 8, 16, 32) and ``num_outs=5`` the outputs have strides 4..64.

Parameter names match MMDetection's ``FPN`` (``lateral_convs.{i}.conv.*``, ``fpn_convs.{i}.conv.*``) so
official detector checkpoints load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvUnit(nn.Module):
    """A single convolution wrapped so that its parameters are named ``conv.weight`` / ``conv.bias``
    (MMCV's ``ConvModule`` without norm and activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """Feature pyramid over backbone feature maps.

    Args:
        in_channels: channels of each backbone level, finest first (LSKNet-T: 32, 64, 160, 256).
        out_channels: channels of every pyramid level (official: 256).
        num_outs: number of output levels; levels beyond ``len(in_channels)`` are max-pooled (official: 5).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs ({num_outs}) must be >= the number of input levels ({len(in_channels)})")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(ConvUnit(c, out_channels, 1) for c in self.in_channels)
        self.fpn_convs = nn.ModuleList(ConvUnit(out_channels, out_channels, 3, padding=1) for _ in self.in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases (the MMDetection default for FPN)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``feats``: backbone maps finest first, each (B, C_i, H_i, W_i). Returns ``num_outs`` maps (B, C, ., .)."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
