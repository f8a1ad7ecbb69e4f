"""UNetFormer decoder (Wang et al., "UNetFormer: A UNet-like transformer for efficient semantic segmentation of
remote sensing urban scene imagery", ISPRS J. Photogramm. Remote Sens. 190, 2022), written from the paper.

Decoder path on four encoder maps ``res1..res4`` (strides 4/8/16/32)::

    x = GLTB(pre(res4))                     # global-local Transformer block at stride 32
    x = GLTB(WF(x, res3)); x = GLTB(WF(x, res2))
    x = FRH(x, res1)                        # feature refinement head at stride 4
    logits = conv1x1(dropout(convbnrelu(x))), upsampled x4 to the input size

- WF (weighted fusion): ``post(w0 * pre(res) + w1 * up2(x))`` with ``w = relu(p) / (sum(relu(p)) + eps)``.
- GLTB: ``x + GLA(BN(x))`` then ``x + MLP(BN(x))``. GLA = local branch (3x3 conv+BN + 1x1 conv+BN) + global
  branch (window self-attention, relative position bias, window ``ws = 8``; inputs whose size is not a multiple of
  ``ws`` are padded) with cross-shaped window context interaction (horizontal + vertical average pooling of
  length ``ws``), then a ``ws x ws`` depthwise-separable projection.
- FRH: WF with ``res1``, then spatial path (depthwise 3x3 conv + sigmoid) and channel path (pool, 1x1 convs,
  sigmoid) re-weight the map, a separable 3x3 projection plus a 1x1 shortcut, ReLU6.
- Auxiliary head (training only): ``up4(x4) + up2(x3) + x2`` -> 3x3 conv+BN+ReLU, dropout, 1x1 conv.
Defaults follow the paper: decode channels 64, window 8, 8 heads, dropout 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNetFormerHead", "UNetFormerAuxHead", "GlobalLocalAttention", "GLTB"]


def conv_bn(cin: int, cout: int, k: int = 1, groups: int = 1, act: bool = False) -> nn.Sequential:
    """k x k conv (padding k // 2, no bias) + BatchNorm (+ ReLU6)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


def separable_conv_bn(channels: int, cout: int, k: int) -> nn.Sequential:
    """Depthwise k x k conv + BN + pointwise 1x1 conv (k may be even: see :func:`same_pad`)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, k, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.Conv2d(channels, cout, 1, bias=False),
    )


def same_pad(x: Tensor, kh: int, kw: int, mode: str = "reflect") -> Tensor:
    """Pad so that a stride-1 ``kh x kw`` conv/pool keeps the size (even kernels: one more pixel bottom/right)."""
    pads = ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)
    return _pad(x, pads, mode)


def _pad(x: Tensor, pads: tuple[int, int, int, int], mode: str = "reflect") -> Tensor:
    if not any(pads):
        return x
    h, w = x.shape[-2:]
    if mode == "reflect" and (max(pads[0], pads[1]) >= w or max(pads[2], pads[3]) >= h):
        mode = "replicate"  # reflect needs the pad to be smaller than the size
    return F.pad(x, pads, mode=mode)


class GlobalLocalAttention(nn.Module):
    """Global-local attention: local convs + windowed MHSA with cross-shaped window context interaction."""

    def __init__(self, dim: int = 64, num_heads: int = 8, window_size: int = 8, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.ws = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias)
        self.local3 = conv_bn(dim, dim, 3)
        self.local1 = conv_bn(dim, dim, 1)
        self.proj = separable_conv_bn(dim, dim, window_size)
        # relative position bias, one value per head and relative offset (dy, dx) in [-(ws-1), ws-1]^2
        self.rel_bias = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
        coords = coords.flatten(1)  # (2, ws*ws)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * window_size - 1) + rel[..., 1], persistent=False)

    def window_attention(self, x: Tensor) -> Tensor:
        """Multi-head self-attention inside non-overlapping ``ws x ws`` windows (H, W multiples of ``ws``)."""
        b, c, hp, wp = x.shape
        ws = self.ws
        nh, nw = hp // ws, wp // ws
        heads, hd = self.num_heads, c // self.num_heads
        # (3, B*nWin, heads, ws*ws, hd)
        qkv = self.qkv(x).reshape(b, 3, heads, hd, nh, ws, nw, ws)
        qkv = qkv.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, b * nh * nw, heads, ws * ws, hd)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.rel_bias[self.rel_index.reshape(-1)].reshape(ws * ws, ws * ws, heads).permute(2, 0, 1)
        attn = (attn + bias.unsqueeze(0)).softmax(-1)
        out = (attn @ v).reshape(b, nh, nw, heads, ws, ws, hd)
        return out.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        ws = self.ws
        local = self.local3(x) + self.local1(x)
        ph, pw = (-h) % ws, (-w) % ws
        xp = _pad(x, (0, pw, 0, ph))
        out = self.window_attention(xp)
        # cross-shaped window context interaction: average pooling of length ws along each axis
        horizontal = F.avg_pool2d(same_pad(out, ws, 1), (ws, 1), stride=1)
        vertical = F.avg_pool2d(same_pad(out, 1, ws), (1, ws), stride=1)
        out = (horizontal + vertical)[:, :, :h, :w] + local
        return self.proj(same_pad(out, ws, ws))


class GLTB(nn.Module):
    """Global-local Transformer block: ``x + GLA(BN(x))``, ``x + MLP(BN(x))`` (MLP = 1x1 convs with ReLU6)."""

    def __init__(self, dim: int = 64, num_heads: int = 8, window_size: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = GlobalLocalAttention(dim, num_heads, window_size)
        self.norm2 = nn.BatchNorm2d(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.ReLU6(inplace=True), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class WeightedFusion(nn.Module):
    """``post(w0 * pre(skip) + w1 * up2(x))`` with learned non-negative weights normalised to sum 1."""

    def __init__(self, skip_channels: int, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.pre = conv_bn(skip_channels, channels, 1)
        self.weights = nn.Parameter(torch.ones(2))
        self.eps = eps
        self.post = conv_bn(channels, channels, 3, act=True)

    def fuse(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        w = F.relu(self.weights)
        w = w / (w.sum() + self.eps)
        return w[0] * self.pre(skip) + w[1] * x

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.post(self.fuse(x, skip))


class FeatureRefinementHead(WeightedFusion):
    """Weighted fusion with the stride-4 map, then spatial + channel re-weighting (see module doc)."""

    def __init__(self, skip_channels: int, channels: int) -> None:
        super().__init__(skip_channels, channels)
        self.spatial = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.Sigmoid())
        reduced = max(channels // 16, 1)
        self.channel = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, reduced, 1),
            nn.ReLU6(inplace=True),
            nn.Conv2d(reduced, channels, 1),
            nn.Sigmoid(),
        )
        self.shortcut = conv_bn(channels, channels, 1)
        self.project = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
            nn.Conv2d(channels, channels, 1, bias=False),
        )
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.post(self.fuse(x, skip))
        shortcut = self.shortcut(x)
        x = self.spatial(x) * x + self.channel(x) * x
        return self.act(self.project(x) + shortcut)


class UNetFormerAuxHead(nn.Module):
    """Auxiliary head on ``up4(x4) + up2(x3) + x2`` (stride 8); 3x3 conv+BN+ReLU6, dropout, 1x1 conv."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = conv_bn(channels, channels, 3, act=True)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        size = feats[-1].shape[-2:]
        x = sum(F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats)
        return self.cls(self.drop(self.conv(x)))


class UNetFormerHead(nn.Module):
    """UNetFormer decoder over four encoder maps (channels ``in_channels``, strides 4/8/16/32).

    ``forward(feats)`` returns stride-4 logits ``(B, num_classes, H/4, W/4)``; with ``return_aux=True`` it also
    returns the stage outputs ``[x4, x3, x2]`` the auxiliary head consumes.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        decode_channels: int = 64,
        window_size: int = 8,
        num_heads: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"UNetFormer needs 4 encoder maps (strides 4/8/16/32), got {len(in_channels)}")
        c1, c2, c3, c4 = in_channels
        d = decode_channels
        self.pre4 = conv_bn(c4, d, 1)
        self.block4 = GLTB(d, num_heads, window_size)
        self.fuse3 = WeightedFusion(c3, d)
        self.block3 = GLTB(d, num_heads, window_size)
        self.fuse2 = WeightedFusion(c2, d)
        self.block2 = GLTB(d, num_heads, window_size)
        self.refine = FeatureRefinementHead(c1, d)
        self.seg = nn.Sequential(conv_bn(d, d, 3, act=True), nn.Dropout2d(dropout), nn.Conv2d(d, num_classes, 1))
        self.channels = d

    def forward(self, feats: Sequence[Tensor], return_aux: bool = False):
        res1, res2, res3, res4 = feats[-4:]
        x4 = self.block4(self.pre4(res4))
        x3 = self.block3(self.fuse3(x4, res3))
        x2 = self.block2(self.fuse2(x3, res2))
        logits = self.seg(self.refine(x2, res1))
        return (logits, [x4, x3, x2]) if return_aux else logits
