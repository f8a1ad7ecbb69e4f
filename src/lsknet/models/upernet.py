"""UPerNet decoder (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018), as commonly used
for semantic segmentation on top of a 4-stage backbone.

- Pyramid pooling module on the last map: adaptive average pooling to 1x1, 2x2, 3x3, 6x6, a 1x1 conv+BN+ReLU
  each, upsampled and concatenated with the map, fused by a 3x3 conv+BN+ReLU to ``channels`` (512).
- FPN: 1x1 laterals on the other maps, top-down addition, 3x3 conv per level, every level upsampled to stride 4,
  concatenated and fused by a 3x3 conv; dropout 0.1 and a 1x1 classifier -> stride-4 logits.
- Optional auxiliary FCN head on stage 3 (stride 16): 3x3 conv+BN+ReLU (256), dropout 0.1, 1x1 classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UPerNetHead", "FCNAuxHead"]


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    """k x k conv (same padding, no bias) + BatchNorm + ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


def _up(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PPM: pooled branches at ``scales`` + the input map, fused to ``channels`` by a 3x3 conv."""

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(in_channels, channels, 1)) for s in scales
        )
        self.bottleneck = conv_bn_relu(in_channels + len(scales) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return self.bottleneck(torch.cat([x] + [_up(b(x), size) for b in self.branches], dim=1))


class UPerNetHead(nn.Module):
    """UPerNet decoder over ``len(in_channels)`` maps (finest first); returns logits at the finest stride."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"UPerNet needs at least 2 encoder maps, got {len(in_channels)}")
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.laterals = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(channels, num_classes, 1)
        self.num_inputs = len(in_channels)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        feats = list(feats[-self.num_inputs :])
        levels = [lat(f) for lat, f in zip(self.laterals, feats[:-1])] + [self.ppm(feats[-1])]
        for i in range(len(levels) - 1, 0, -1):  # top-down pathway
            levels[i - 1] = levels[i - 1] + _up(levels[i], levels[i - 1].shape[-2:])
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels[:-1])] + [levels[-1]]
        size = outs[0].shape[-2:]
        x = self.fuse(torch.cat([outs[0]] + [_up(o, size) for o in outs[1:]], dim=1))
        return self.cls(self.drop(x))


class FCNAuxHead(nn.Module):
    """Auxiliary FCN head: 3x3 conv+BN+ReLU, dropout, 1x1 classifier (on one encoder map, usually stage 3)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.cls(self.drop(self.conv(x)))
