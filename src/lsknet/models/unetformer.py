"""UNetFormer decoder (Wang et al., "UNetFormer: A UNet-like transformer for efficient semantic segmentation of
remote sensing urban scene imagery", ISPRS J. Photogramm. Remote Sens. 190, 2022), the same function as the
``Decoder`` of the authors' GeoSeg code (``geoseg/models/UNetFormer.py``) with its parameter names, so a GeoSeg
``Decoder`` state dict loads with ``strict=True`` and gives GeoSeg's logits.

Decoder path on four encoder maps ``res1..res4`` (strides 4/8/16/32), module names as in GeoSeg::

    x4 = b4(pre_conv(res4))                 # pre_conv: 1x1 conv + BN; b4: global-local Transformer block
    x3 = b3(p3(x4, res3)); x2 = b2(p2(x3, res2))
    logits = segmentation_head(p1(x2, res1))     # 3x3 conv+BN+ReLU6, Dropout2d, 1x1 conv (no bias), stride 4
    aux = aux_head(up4(x4) + up2(x3) + x2)       # training only: align_corners=True upsampling, stride 8

- ``p3``/``p2`` (weighted fusion): ``post_conv(w0 * pre_conv(res) + w1 * up2(x))``, ``pre_conv`` a bare 1x1 conv,
  ``w = relu(weights) / (sum + 1e-8)``.
- Block: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` (BatchNorm, MLP of 1x1 convs with ReLU6).
- attn (global-local attention): local ``local1`` (3x3 conv+BN) + ``local2`` (1x1 conv+BN); global window
  self-attention (relative position bias, window ``ws``; the map is reflect-padded to a multiple of ``ws``), then
  the cross-shaped context: average pooling of length ``ws`` along each axis after one reflected row/column,
  zero padding ``ws/2 - 1`` each side counted in the mean; then ``proj``, a ``ws x ws`` depthwise conv + BN + 1x1
  conv on the map with one reflected row and column and zero padding ``(ws-1)//2``.
- ``p1`` (feature refinement head): weighted fusion, then ``pa(x) * x + ca(x) * x`` (depthwise 3x3 conv with bias
  + sigmoid; pooled 1x1 convs without bias, ReLU6, sigmoid), ``proj`` (separable 3x3 conv + BN) + ``shortcut``
  (1x1 conv + BN), ReLU6.

Deviation (inputs GeoSeg cannot take): a map too small for reflect padding (side <= pad) is padded by replication
instead of raising.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNetFormerHead", "GlobalLocalAttention", "Block", "OLD_LAYOUT_PREFIXES"]

# Parameter prefixes of the head lsknet had before it followed GeoSeg (a different function: not convertible).
OLD_LAYOUT_PREFIXES = ("decode_head.pre4.", "decode_head.block4.", "decode_head.fuse3.", "decode_head.refine.")


def _conv(cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """Stride-1 conv with GeoSeg's padding ``(k - 1) // 2`` (one pixel short on the right for even ``k``)."""
    return nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, groups=groups, bias=bias)


def _conv_bn(cin: int, cout: int, k: int, relu: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(cin, cout, k), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


def _separable_conv_bn(channels: int, k: int) -> nn.Sequential:
    """Depthwise ``k x k`` conv + BN + pointwise 1x1 conv, no biases."""
    depthwise = _conv(channels, channels, k, groups=channels)
    return nn.Sequential(depthwise, nn.BatchNorm2d(channels), _conv(channels, channels, 1))


def _pad(x: Tensor, right: int, bottom: int) -> Tensor:
    """Reflect-pad on the right/bottom; replicate where the side is too short for reflection."""
    if not torch.jit.is_tracing() and not (right or bottom):  # an ONNX trace keeps the pad (size-dependent)
        return x
    h, w = x.shape[-2:]
    mode = "reflect" if right < w and bottom < h else "replicate"
    return F.pad(x, (0, right, 0, bottom), mode=mode)


class GlobalLocalAttention(nn.Module):
    """Global-local attention of UNetFormer (see module doc); ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, dim: int = 64, num_heads: int = 8, window_size: int = 8, qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        if window_size % 2 or window_size < 2:
            raise ValueError(f"window_size must be even (GeoSeg's pooling/projection sizes), got {window_size}")
        self.num_heads = num_heads
        self.ws = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Sequential(_conv(dim, 3 * dim, 1, bias=qkv_bias))
        self.local1 = _conv_bn(dim, dim, 3)
        self.local2 = _conv_bn(dim, dim, 1)
        self.proj = _separable_conv_bn(dim, window_size)
        # one bias per head and relative offset (dy, dx) in [-(ws-1), ws-1]^2, row-major over (dy, dx)
        n = 2 * window_size - 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros(n * n, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        yy, xx = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        yy, xx = yy.flatten(), xx.flatten()
        index = (yy[:, None] - yy[None, :] + window_size - 1) * n + (xx[:, None] - xx[None, :] + window_size - 1)
        self.register_buffer("relative_position_index", index)  # persistent: GeoSeg state dicts carry it

    def window_attention(self, x: Tensor) -> Tensor:
        """Multi-head self-attention inside non-overlapping ``ws x ws`` windows (H, W multiples of ``ws``)."""
        b, c, hp, wp = x.shape
        ws = self.ws
        nh, nw = hp // ws, wp // ws
        heads, hd = self.num_heads, c // self.num_heads
        # (3, B*nWin, heads, ws*ws, hd); channels are ordered (qkv, head, dim) as in GeoSeg
        qkv = self.qkv(x).reshape(b, 3, heads, hd, nh, ws, nw, ws)
        qkv = qkv.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, b * nh * nw, heads, ws * ws, hd)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = (attn + bias.reshape(ws * ws, ws * ws, heads).permute(2, 0, 1).unsqueeze(0)).softmax(-1)
        out = (attn @ v).reshape(b, nh, nw, heads, ws, ws, hd)
        return out.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ws = self.ws
        local = self.local2(x) + self.local1(x)
        out = self.window_attention(_pad(x, (-w) % ws, (-h) % ws))[:, :, :h, :w]
        p = ws // 2 - 1  # zero padding of the pooling, counted in the mean (count_include_pad)
        along_h = F.avg_pool2d(_pad(out, 0, 1), (ws, 1), stride=1, padding=(p, 0), count_include_pad=True)
        along_w = F.avg_pool2d(_pad(out, 1, 0), (1, ws), stride=1, padding=(0, p), count_include_pad=True)
        out = along_h + along_w + local
        return self.proj(_pad(out, 1, 1))[:, :, :h, :w]


class Mlp(nn.Module):
    """1x1 conv -> ReLU6 -> 1x1 conv (with biases)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.ReLU6()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Global-local Transformer block: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int = 64, num_heads: int = 8, window_size: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = GlobalLocalAttention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class WF(nn.Module):
    """Weighted fusion ``post_conv(w0 * pre_conv(res) + w1 * up2(x))``, ``w = relu(weights) / (sum + eps)``."""

    def __init__(self, in_channels: int, decode_channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.pre_conv = nn.Sequential(_conv(in_channels, decode_channels, 1))
        self.weights = nn.Parameter(torch.ones(2))
        self.eps = eps
        self.post_conv = _conv_bn(decode_channels, decode_channels, 3, relu=True)

    def fuse(self, x: Tensor, res: Tensor) -> Tensor:
        x = F.interpolate(x, size=res.shape[-2:], mode="bilinear", align_corners=False)  # == scale 2 on even maps
        w = F.relu(self.weights)
        w = w / (w.sum() + self.eps)
        return self.post_conv(w[0] * self.pre_conv(res) + w[1] * x)

    def forward(self, x: Tensor, res: Tensor) -> Tensor:
        return self.fuse(x, res)


class FeatureRefinementHead(WF):
    """Weighted fusion with the stride-4 map, then spatial (``pa``) and channel (``ca``) re-weighting."""

    def __init__(self, in_channels: int, decode_channels: int) -> None:
        super().__init__(in_channels, decode_channels)
        d = decode_channels
        self.pa = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, groups=d), nn.Sigmoid())
        self.ca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Sequential(_conv(d, d // 16, 1)),
            nn.ReLU6(),
            nn.Sequential(_conv(d // 16, d, 1)),
            nn.Sigmoid(),
        )
        self.shortcut = _conv_bn(d, d, 1)
        self.proj = _separable_conv_bn(d, 3)
        self.act = nn.ReLU6()

    def forward(self, x: Tensor, res: Tensor) -> Tensor:
        x = self.fuse(x, res)
        shortcut = self.shortcut(x)
        x = self.pa(x) * x + self.ca(x) * x
        return self.act(self.proj(x) + shortcut)


class AuxHead(nn.Module):
    """3x3 conv+BN+ReLU6, Dropout(0.1), 1x1 conv (no bias)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = _conv_bn(channels, channels, 3, relu=True)
        self.drop = nn.Dropout(0.1)
        self.conv_out = nn.Sequential(_conv(channels, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.drop(self.conv(x)))


class UNetFormerHead(nn.Module):
    """GeoSeg's UNetFormer ``Decoder`` over four encoder maps (channels ``encoder_channels``, strides 4/8/16/32).

    ``forward(feats)`` returns stride-4 logits ``(B, num_classes, H/4, W/4)`` (the caller upsamples them to the
    input size, as GeoSeg's decoder does itself); ``forward(feats, return_aux=True)`` returns ``(logits, aux)``
    with the stride-8 auxiliary logits (``None`` when built with ``aux_head=False``). ``decode_channels`` must be
    a multiple of 16 (channel attention) and of ``num_heads``.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int,
        decode_channels: int = 64,
        dropout: float = 0.1,
        window_size: int = 8,
        *,
        num_heads: int = 8,
        aux_head: bool = True,
    ) -> None:
        super().__init__()
        if len(encoder_channels) != 4:
            raise ValueError(f"UNetFormer needs 4 encoder maps (strides 4/8/16/32), got {len(encoder_channels)}")
        if decode_channels < 16:
            raise ValueError(f"decode_channels must be >= 16 (channel attention uses d // 16), got {decode_channels}")
        c1, c2, c3, c4 = encoder_channels
        d = decode_channels
        self.pre_conv = _conv_bn(c4, d, 1)
        self.b4 = Block(d, num_heads, window_size)
        self.b3 = Block(d, num_heads, window_size)
        self.p3 = WF(c3, d)
        self.b2 = Block(d, num_heads, window_size)
        self.p2 = WF(c2, d)
        self.aux_head = AuxHead(d, num_classes) if aux_head else None
        self.p1 = FeatureRefinementHead(c1, d)
        self.segmentation_head = nn.Sequential(
            _conv_bn(d, d, 3, relu=True), nn.Dropout2d(dropout), nn.Sequential(_conv(d, num_classes, 1))
        )
        self.channels = d
        self.num_classes = num_classes

    def forward(self, feats: Sequence[Tensor], return_aux: bool = False):
        res1, res2, res3, res4 = feats[-4:]
        x4 = self.b4(self.pre_conv(res4))
        x3 = self.b3(self.p3(x4, res3))
        x2 = self.b2(self.p2(x3, res2))
        logits = self.segmentation_head(self.p1(x2, res1))
        if not return_aux:
            return logits
        if self.aux_head is None:
            return logits, None
        size = x2.shape[-2:]
        up = [F.interpolate(t, size=size, mode="bilinear", align_corners=True) for t in (x4, x3)]
        return logits, self.aux_head(up[0] + up[1] + x2)
