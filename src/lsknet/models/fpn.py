"""Feature Pyramid Network neck (Lin et al., 2017) as configured for the official LSKNet Oriented R-CNN.

Lateral 1x1 convolutions bring the backbone stages to ``out_channels``, a top-down pathway adds the
nearest-upsampled coarser map, 3x3 convolutions smooth every level, and extra levels come from a
stride-2 max-pool of the top output (``add_extra_convs=False`` in MMDetection terms).
With the four LSKNet stages (strides 4, 8, 16, 32) and ``num_outs=5`` the outputs have strides 4..64.

The MMDetection 2.x options that the official S2A-Net and R3Det configs use are supported with the same names
and meaning: ``start_level`` (first backbone level used; ``start_level=1`` gives strides 8..128 with
``num_outs=5``), ``end_level``, ``add_extra_convs`` (``'on_input'``: the first extra level is a stride-2 3x3
convolution of the last *used backbone map*; ``'on_lateral'``: of the last lateral; ``'on_output'``: of the last
output; ``True`` means ``'on_input'``; further extra levels convolve the previous output) and
``relu_before_extra_convs`` (ReLU before every extra convolution after the first).

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

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, stride: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


_EXTRA_SOURCES = ("on_input", "on_lateral", "on_output")


class FPN(nn.Module):
    """Feature pyramid over backbone feature maps.

    Args:
        in_channels: channels of each backbone level, finest first (LSKNet-T: 32, 64, 160, 256).
        out_channels: channels of every pyramid level (official: 256).
        num_outs: number of output levels; levels beyond the used backbone levels are max-pooled, or made by
            extra convolutions with ``add_extra_convs`` (official Oriented R-CNN: 5, max-pooled).
        start_level: index of the first backbone level used (S2A-Net / R3Det: 1).
        end_level: index of the last backbone level used, ``-1`` = the last one.
        add_extra_convs: ``False`` (max-pool), ``True`` / ``'on_input'``, ``'on_lateral'`` or ``'on_output'``:
            the source of the first extra stride-2 3x3 convolution (see the module docstring).
        relu_before_extra_convs: apply ReLU to the previous output before each later extra convolution.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_outs: int = 5,
        start_level: int = 0,
        end_level: int = -1,
        add_extra_convs: bool | str = False,
        relu_before_extra_convs: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        num_ins = len(self.in_channels)
        if not 0 <= start_level < num_ins:
            raise ValueError(f"start_level must be in [0, {num_ins}), got {start_level}")
        if end_level == -1 or end_level == num_ins - 1:
            backbone_end = num_ins
        elif start_level <= end_level < num_ins:
            backbone_end = end_level + 1
        else:
            raise ValueError(f"end_level must be -1 or in [{start_level}, {num_ins}), got {end_level}")
        num_used = backbone_end - start_level
        if end_level == -1 and num_outs < num_used:
            raise ValueError(f"num_outs ({num_outs}) must be >= the number of used input levels ({num_used})")
        if end_level != -1 and num_outs != num_used:
            raise ValueError(f"with end_level, num_outs ({num_outs}) must equal the used levels ({num_used})")
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs is not False and add_extra_convs not in _EXTRA_SOURCES:
            raise ValueError(f"add_extra_convs must be a bool or one of {_EXTRA_SOURCES}, got {add_extra_convs!r}")
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.end_level = end_level
        self.backbone_end_level = backbone_end
        self.add_extra_convs: bool | str = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs
        used = self.in_channels[start_level:backbone_end]
        self.lateral_convs = nn.ModuleList(ConvUnit(c, out_channels, 1) for c in used)
        self.fpn_convs = nn.ModuleList(ConvUnit(out_channels, out_channels, 3, padding=1) for _ in used)
        if add_extra_convs:
            for i in range(num_outs - len(used)):
                c_in = self.in_channels[backbone_end - 1] if i == 0 and add_extra_convs == "on_input" else out_channels
                self.fpn_convs.append(ConvUnit(c_in, out_channels, 3, padding=1, stride=2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases (the MMDetection default for FPN)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def top_down(self, laterals: list[torch.Tensor]) -> list[torch.Tensor]:
        """The top-down pathway: each lateral map plus the nearest-upsampled coarser (already summed) one."""
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return laterals

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``feats``: backbone maps finest first, each (B, C_i, H_i, W_i). Returns ``num_outs`` maps (B, C, ., .)."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(feats)}")
        used = feats[self.start_level : self.backbone_end_level]
        laterals = self.top_down([conv(f) for conv, f in zip(self.lateral_convs, used)])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        if not self.add_extra_convs:
            while len(outs) < self.num_outs:
                outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
            return outs
        if len(outs) < self.num_outs:
            source = {"on_input": used[-1], "on_lateral": laterals[-1], "on_output": outs[-1]}[self.add_extra_convs]
            outs.append(self.fpn_convs[len(laterals)](source))
            for conv in self.fpn_convs[len(laterals) + 1 :]:
                outs.append(conv(F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]))
        return outs
