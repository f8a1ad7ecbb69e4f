"""An inference-only copy of an LSKNet that computes the same function faster on CPU (and GPU).

What :func:`optimize_for_inference` does, each step exact up to float rounding:

- **Channels-last throughout.** Activations live as NHWC tensors; every 1x1 conv becomes a GEMM (``F.linear``
  on the channel axis), depthwise convs run on the channels-last view (oneDNN's fast path), LayerNorms act on the
  last axis, channel mean/max reduce the last axis. No layout conversions inside the network.
- **BatchNorm folding.** Each patch-embedding BN goes into its conv. The pre-norm BNs of a block (``norm1``,
  ``norm2``) are affine per channel and feed 1x1 convs (``attn.proj_1``, ``mlp.fc1``), so they fold into them
  exactly. The attention residual adds the *normalised* input ``a*x + c``; that term becomes a per-channel scale
  of the residual stream (``x * (1 + ls1*a)``) and a bias in ``proj_2``.
- **Layer-scale folding.** ``ls1`` scales ``proj_2``'s rows and ``ls2`` scales ``fc2``'s rows.
- **LSK channel mean without concatenation.** The channel-mean of ``cat(conv1(a), conv2(b))`` is linear in the
  inputs, so ``conv1``/``conv2`` get one extra output row each that produces it; the max is taken per branch.
- **Dilated depthwise conv by polyphase decomposition.** A 7x7 dilation-3 depthwise conv equals a dense 7x7
  depthwise conv on each of the 3x3 interleaved sub-grids (oneDNN's channels-last dilated depthwise path is very
  slow on CPU; the dense one is fast).
- optional ``torch.compile`` (``compile=True``) on top.

The result is in eval mode, has no gradients, and accepts the same NCHW input as the original. Outputs are NCHW
tensors (channels-last memory) with the original semantics: logits / pooled features for a classifier, the list of
stage maps for a timm ``features_only`` model.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsknet.models.backbone import LSKNet

__all__ = ["InferenceLSKNet", "optimize_for_inference"]

_log = logging.getLogger(__name__)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``a * x + c`` per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _pointwise(conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """A 1x1 conv as a (out, in) matrix and bias."""
    return conv.weight.flatten(1), conv.bias


def _dw(x: Tensor, weight: Tensor, bias: Tensor, padding: int) -> Tensor:
    """Depthwise conv of an NHWC tensor (runs on its channels-last NCHW view), NHWC out."""
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=padding, groups=weight.shape[0])
    return y.permute(0, 2, 3, 1)


def _dw_dilated3(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """7x7 depthwise conv with dilation 3 and padding 9 of an NHWC tensor, as dense 7x7 convs on the 9 sub-grids.

    Output pixel (3i+p, 3j+q) only sees input pixels (3(i+k-3)+p, 3(j+l-3)+q): a plain 7x7 conv (padding 3) on the
    sub-grid of phase (p, q). Zero-padding H, W up to multiples of 3 adds only pixels the original padding treats
    as zeros, so the result is exact.
    """
    b, h, w, c = x.shape
    hp, wp = -(-h // 3), -(-w // 3)
    if (hp * 3, wp * 3) != (h, w):
        x = F.pad(x, (0, 0, 0, wp * 3 - w, 0, hp * 3 - h))
    phases = x.reshape(b, hp, 3, wp, 3, c).permute(0, 2, 4, 1, 3, 5).reshape(b * 9, hp, wp, c)
    y = _dw(phases, weight, bias, padding=3)
    y = y.reshape(b, 3, 3, hp, wp, c).permute(0, 3, 1, 4, 2, 5).reshape(b, hp * 3, wp * 3, c)
    return y[:, :h, :w] if (hp * 3, wp * 3) != (h, w) else y


class _FusedBlock(nn.Module):
    """One LSKNet block with BN and layer scales folded (NHWC in, NHWC out)."""

    def __init__(self, blk: nn.Module) -> None:
        super().__init__()
        attn, sgu, mlp = blk.attn, blk.attn.spatial_gating_unit, blk.mlp
        a1, c1 = _bn_affine(blk.norm1)
        a2, c2 = _bn_affine(blk.norm2)
        ls1, ls2 = blk.layer_scale_1, blk.layer_scale_2
        dim = a1.numel()
        w, b = _pointwise(attn.proj_1)  # proj_1(a1*x + c1) = (w*a1) x + (b + w c1)
        self.register_buffer("p1_w", w * a1[None, :])
        self.register_buffer("p1_b", b + w @ c1)
        self.register_buffer("c0_w", sgu.conv0.weight.clone())
        self.register_buffer("c0_b", sgu.conv0.bias.clone())
        self.register_buffer("cs_w", sgu.conv_spatial.weight.clone())
        self.register_buffer("cs_b", sgu.conv_spatial.bias.clone())
        half = dim // 2
        for name, conv in (("k1", sgu.conv1), ("k2", sgu.conv2)):
            w, b = _pointwise(conv)  # extra last row = this branch's share of the channel mean over C channels
            self.register_buffer(f"{name}_w", torch.cat([w, w.sum(0, keepdim=True) / dim]))
            self.register_buffer(f"{name}_b", torch.cat([b, b.sum().reshape(1) / dim]))
        self.half = half
        self.register_buffer("sq_w", sgu.conv_squeeze.weight.clone())
        self.register_buffer("sq_b", sgu.conv_squeeze.bias.clone())
        w, b = _pointwise(sgu.conv)
        self.register_buffer("cv_w", w.clone())
        self.register_buffer("cv_b", b.clone())
        # x + ls1*(proj_2(u) + a1*x + c1) = (1 + ls1*a1)*x + (ls1*W2) u + ls1*(b2 + c1)
        w, b = _pointwise(attn.proj_2)
        self.register_buffer("p2_w", ls1[:, None] * w)
        self.register_buffer("p2_b", ls1 * (b + c1))
        self.register_buffer("res_scale", 1.0 + ls1 * a1)
        w, b = _pointwise(mlp.fc1)
        self.register_buffer("f1_w", w * a2[None, :])
        self.register_buffer("f1_b", b + w @ c2)
        self.register_buffer("dw_w", mlp.dwconv.dwconv.weight.clone())
        self.register_buffer("dw_b", mlp.dwconv.dwconv.bias.clone())
        w, b = _pointwise(mlp.fc2)
        self.register_buffer("f2_w", ls2[:, None] * w)
        self.register_buffer("f2_b", ls2 * b)

    def forward(self, x: Tensor) -> Tensor:
        u = F.gelu(F.linear(x, self.p1_w, self.p1_b))
        small = _dw(u, self.c0_w, self.c0_b, padding=2)
        large = _dw_dilated3(small, self.cs_w, self.cs_b)
        s_ext = F.linear(small, self.k1_w, self.k1_b)
        l_ext = F.linear(large, self.k2_w, self.k2_b)
        half = self.half
        s, ls = s_ext[..., :half], l_ext[..., :half]
        mean = s_ext[..., half:] + l_ext[..., half:]
        mx = torch.maximum(s.amax(-1, keepdim=True), ls.amax(-1, keepdim=True))
        gate = torch.sigmoid(_conv_nhwc(torch.cat([mean, mx], -1), self.sq_w, self.sq_b, padding=3))
        attn = F.linear(s * gate[..., 0:1] + ls * gate[..., 1:2], self.cv_w, self.cv_b)
        x = torch.addcmul(F.linear(u * attn, self.p2_w, self.p2_b), x, self.res_scale)
        h = F.gelu(_dw(F.linear(x, self.f1_w, self.f1_b), self.dw_w, self.dw_b, padding=1))
        return x + F.linear(h, self.f2_w, self.f2_b)


def _conv_nhwc(x: Tensor, weight: Tensor, bias: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride=stride, padding=padding)
    return y.permute(0, 2, 3, 1)


class _FusedStage(nn.Module):
    """Patch embedding (BN folded) + fused blocks + LayerNorm over channels (NHWC)."""

    def __init__(self, model: LSKNet, i: int) -> None:
        super().__init__()
        embed = getattr(model, f"patch_embed{i + 1}")
        a, c = _bn_affine(embed.norm)
        self.stride = embed.proj.stride[0]
        self.padding = embed.proj.padding[0]
        self.register_buffer("pe_w", embed.proj.weight * a[:, None, None, None])
        self.register_buffer("pe_b", embed.proj.bias * a + c)
        self.blocks = nn.ModuleList(_FusedBlock(b) for b in getattr(model, f"block{i + 1}"))
        norm = getattr(model, f"norm{i + 1}")
        self.register_buffer("ln_w", norm.weight.clone())
        self.register_buffer("ln_b", norm.bias.clone())
        self.eps = norm.eps

    def forward(self, x: Tensor) -> Tensor:
        x = _conv_nhwc(x, self.pe_w, self.pe_b, stride=self.stride, padding=self.padding)
        for blk in self.blocks:
            x = blk(x)
        return F.layer_norm(x, (x.shape[-1],), self.ln_w, self.ln_b, self.eps)


class InferenceLSKNet(nn.Module):
    """Folded, channels-last LSKNet (eval only). ``forward`` returns what the source model returned."""

    def __init__(self, model: LSKNet, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_FusedStage(model, i) for i in range(model.num_stages))
        self.out_indices = out_indices  # None: classifier semantics; tuple: list of stage maps
        self.global_pool = model.global_pool
        self.head = copy.deepcopy(model.head)
        self.num_classes = model.num_classes

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """All stage maps, NCHW (channels-last memory)."""
        x = x.permute(0, 2, 3, 1)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x.permute(0, 3, 1, 2))
        return feats

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        feats = self.forward_features(x.contiguous(memory_format=torch.channels_last))
        if self.out_indices is not None:
            return [feats[i] for i in self.out_indices]
        last = feats[-1]
        if self.global_pool == "avg":
            last = last.mean(dim=(2, 3))
        return self.head(last)


def optimize_for_inference(model: nn.Module, *, compile: bool = False) -> nn.Module:
    """Return an inference-optimized copy of an LSKNet classifier/backbone or timm ``features_only`` LSKNet.

    The copy is in eval mode, uses the current weights (BatchNorm running statistics), computes the same function
    up to float rounding (~1e-6 relative) and leaves ``model`` untouched. ``compile=True`` wraps it in
    ``torch.compile`` (falls back to the uncompiled module, with a warning, if compilation fails).
    """
    inner = getattr(model, "model", None)
    if isinstance(model, LSKNet):
        source, out_indices = model, None
    elif isinstance(inner, LSKNet):
        source, out_indices = inner, tuple(model.out_indices)
    else:
        raise TypeError(f"optimize_for_inference expects an LSKNet (or a timm features_only LSKNet), got {type(model)}")
    with torch.no_grad():
        fused = InferenceLSKNet(source, out_indices).eval()
    for p in fused.parameters():
        p.requires_grad_(False)
    param = next(source.parameters())
    fused = fused.to(param.device)
    if compile:
        try:
            compiled = torch.compile(fused, dynamic=False)
            return compiled
        except Exception as err:  # pragma: no cover - depends on the toolchain
            _log.warning("torch.compile failed (%s); using the uncompiled optimized model", err)
    return fused
