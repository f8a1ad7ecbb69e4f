"""Inference-optimized copies of the task models (detector, segmenter) built from :mod:`lsknet.inference.optimize`.

The eager model stays the single source of truth: the copy is the same module with some parts swapped, so every
step of its forward (pre-processing, proposal decoding, NMS, RoI post-processing, ...) is the eager code.

- **Backbone**: an LSKNet backbone becomes :class:`~lsknet.inference.optimize.InferenceLSKNet` (BN/layer-scale
  folding, channels-last, fused kernels), behind the ``forward_intermediates`` / ``features_only`` call the model
  makes; other backbones only move to channels-last memory.
- **FPN, RPN, RoI head**: all convolutions and their weights in channels-last memory (oneDNN's direct NHWC path,
  no NCHW<->blocked reorders per call); ``conv3x3 -> ReLU`` of the RPN and ``linear -> ReLU`` of the RoI head's
  shared FCs run as one fused oneDNN kernel each on CPU (plain ops elsewhere). The RoI extractor reads the
  channels-last pyramid as its feature table without a copy.

Outputs equal the eager model's up to float rounding (~1e-6 relative); detections are compared in
``tests/inference/test_optimize_models.py``.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsknet.inference.optimize import _linear, _use_fused, optimize_for_backbone
from lsknet.models.backbone import LSKNet
from lsknet.models.fpn import FPN
from lsknet.models.oriented_rcnn import OrientedRCNN
from lsknet.ops.roi_align_rotated import roi_align_rotated
from lsknet.ops.winograd import winograd_conv3x3, winograd_weight
from lsknet.ops.workspace import Workspace, persistent

__all__ = ["optimize_detector", "optimize_segmenter"]

_log = logging.getLogger(__name__)


def _conv_relu(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``relu(conv(x))``, one oneDNN kernel on CPU float32 (same result as the two plain ops)."""
    if _use_fused(x) and conv.groups == 1 and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple):
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), 1, "relu", [], ""
        )
    return F.relu(conv(x))


def _linear_relu(x: Tensor, fc: nn.Linear, weight: Tensor | None = None) -> Tensor:
    """``relu(fc(x))`` (with ``weight`` instead of ``fc.weight`` when given), one oneDNN kernel on CPU float32."""
    weight = fc.weight if weight is None else weight
    if _use_fused(x):
        return torch.ops.mkldnn._linear_pointwise(x, weight, fc.bias, "relu", [], "")
    return F.relu(F.linear(x, weight, fc.bias))


WINOGRAD_M = 4  # F(4x4, 3x3): 4x fewer multiply-adds than direct convolution, ~3e-6 relative rounding
WINOGRAD_MIN_PIXELS = 48 * 48  # smaller maps: direct convolution (transform overhead not repaid)


class _Conv3x3(nn.Module):
    """A stride-1 3x3 ``nn.Conv2d`` (+ optional ReLU) for inference: Winograd F(m x m, 3 x 3) on CPU float32 maps
    of at least ``WINOGRAD_MIN_PIXELS`` pixels (:func:`lsknet.ops.winograd.winograd_conv3x3`), else the conv itself
    (fused with the ReLU where oneDNN offers it). NCHW in, NCHW channels-last out.
    The Winograd output buffer is kept in the workspace for the whole pass (:mod:`lsknet.ops.workspace`)."""

    def __init__(self, conv: nn.Conv2d, relu: bool, m: int = WINOGRAD_M) -> None:
        super().__init__()
        self.conv = conv
        self.relu = relu
        self.m = m
        self.padding = int(conv.padding[0])
        self.register_buffer("weight_t", winograd_weight(conv.weight.detach(), m), persistent=False)

    def forward(self, x: Tensor, head: tuple[Tensor, Tensor | None] | None = None) -> Tensor:
        """The conv (+ ReLU); with ``head = (weight (C_head, C_out), bias)`` also a 1x1 conv on its output, which is
        then the result (on the Winograd path applied band by band: the conv's output is never stored)."""
        h, w = x.shape[-2:]
        cpu32 = x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling()
        if cpu32 and h * w >= WINOGRAD_MIN_PIXELS:
            allocate = functools.partial(persistent, ("conv3x3", id(self)))
            return winograd_conv3x3(
                x, self.weight_t, self.conv.bias, m=self.m, padding=self.padding, relu=self.relu, allocate=allocate,
                head=None if head is None else functools.partial(_linear, weight=head[0], bias=head[1]),
            )  # fmt: skip
        x = x.contiguous(memory_format=torch.channels_last)
        y = _conv_relu(x, self.conv) if self.relu else self.conv(x)
        if head is None:
            return y
        return _linear(y.permute(0, 2, 3, 1), head[0], head[1]).permute(0, 3, 1, 2)


def _winograd_ok(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.padding[0] == conv.padding[1]
    )


class _FusedRPNForward:
    """Mixin over ``OrientedRPNHead``: the same outputs; ``conv3x3 + ReLU`` by :class:`_Conv3x3` with ``rpn_cls``
    and ``rpn_reg`` as one GEMM over the channels applied to each band of its output (their outputs are
    channels-last views of that GEMM's)."""

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        na = self.rpn_cls.out_channels
        for x in feats:
            out = self.fast_conv(x, head=(self.head_w, self.head_b))
            logits.append(out[:, :na])
            deltas.append(out[:, na:])
        return logits, deltas


class _FusedRPNConvForward:
    """Mixin over ``OrientedRPNHead`` with a conv Winograd does not cover: ``conv3x3 + ReLU`` fused by oneDNN."""

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for x in feats:
            x = _conv_relu(x.contiguous(memory_format=torch.channels_last), self.rpn_conv)
            logits.append(self.rpn_cls(x))
            deltas.append(self.rpn_reg(x))
        return logits, deltas


class _Conv1x1(nn.Module):
    """A 1x1 ``nn.Conv2d`` as one GEMM over the channels of the NHWC view (NCHW channels-last in and out)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("weight2d", conv.weight.detach().flatten(1).contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        out = persistent(("conv1x1", id(self)), (*x.shape[:3], self.weight2d.shape[0]), x)
        rows, out_rows = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
        if self.conv.bias is None:
            torch.mm(rows, self.weight2d.t(), out=out_rows)
        else:
            torch.addmm(self.conv.bias, rows, self.weight2d.t(), out=out_rows)
        return out.permute(0, 3, 1, 2)


def _pointwise_ok(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and conv.padding in ((0, 0), 0)


class _InPlaceTopDown:
    """Mixin over ``FPN``: the same top-down sums, added in place; an exact 2x nearest upsampling is a broadcast
    add on the NHWC views (no upsampled temporary), other sizes use the eager step."""

    def top_down(self, laterals: list[Tensor]) -> list[Tensor]:
        for i in range(len(laterals) - 1, 0, -1):
            fine, coarse = laterals[i - 1], laterals[i]
            (h, w), (hc, wc) = fine.shape[-2:], coarse.shape[-2:]
            if (h, w) == (2 * hc, 2 * wc) and fine.is_contiguous(memory_format=torch.channels_last):
                b, c = fine.shape[:2]  # fine[2i + p, 2j + q] += coarse[i, j]
                fine.permute(0, 2, 3, 1).view(b, hc, 2, wc, 2, c).add_(coarse.permute(0, 2, 3, 1)[:, :, None, :, None])
            else:
                laterals[i - 1] = fine + F.interpolate(coarse, size=(h, w), mode="nearest")
        return laterals


ROI_CHUNK = 256  # RoIs pooled per call: a few MB of samples and output, reused by the allocator between calls


class _NHWCRoIExtractorForward:
    """Mixin over ``RotatedRoIExtractor``: the same (K, C, S, S) features, in channels-last memory (RoIAlignRotated
    computes them so: no NCHW copy), pooled ``ROI_CHUNK`` RoIs at a time straight into one buffer (every RoI maps
    to a level; no full-size temporary per level)."""

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        k, c, s = rois.shape[0], feats[0].shape[1], self.output_size
        out = persistent(("roi_feats", id(self)), (k, s, s, c), feats[0])  # NHWC rows, one per RoI
        if k == 0:
            return out.permute(0, 3, 1, 2)
        levels = self.map_levels(rois)
        done = 0
        for lvl, layer in enumerate(self.roi_layers):
            idx = torch.nonzero(levels == lvl).flatten()
            for start in range(0, idx.numel(), ROI_CHUNK):
                part = idx[start : start + ROI_CHUNK]
                pooled = roi_align_rotated(
                    feats[lvl], rois[part], layer.output_size, layer.spatial_scale, layer.sampling_ratio,
                    layer.aligned, layer.clockwise, channels_last=True,
                )  # fmt: skip
                out.index_copy_(0, part, pooled.permute(0, 2, 3, 1).to(out.dtype))
            done += idx.numel()
        if done != k:  # RoIs without a level (non-finite sizes) stay zero, as in the eager extractor
            return super().forward(feats, rois)
        return out.permute(0, 3, 1, 2)


class _FusedBBoxHeadForward:
    """Mixin over ``RotatedBBoxHead``: shared FCs with fused ReLU; the first FC reads the RoI features in their
    channels-last order (its weight columns reordered once, ``fc1_w_nhwc``), so no NCHW flatten copy."""

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        first, *rest = self.shared_fcs
        x = _linear_relu(roi_feats.permute(0, 2, 3, 1).reshape(roi_feats.shape[0], -1), first, self.fc1_w_nhwc)
        for fc in rest:
            x = _linear_relu(x, fc)
        return self.fc_cls(x), self.fc_reg(x)


class _WorkspaceForward:
    """Mixin over a detector: every test pass draws its large temporaries from one :class:`Workspace` (kept
    between calls: no page faults for fresh buffers); the detections returned never alias it."""

    def predict_batch(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 (the detector's own signature)
        with self.inference_workspace.active():
            return super().predict_batch(*args, **kwargs)


def _with_mixin(module: nn.Module, mixin: type) -> nn.Module:
    """Give ``module`` the forward of ``mixin`` (a subclass of its own class, so every other method is kept)."""
    cls = type(module)
    module.__class__ = type(f"Optimized{cls.__name__}", (mixin, cls), {"__module__": __name__})
    return module


class _BackboneAdapter(nn.Module):
    """An :class:`InferenceLSKNet` behind the calls a task model makes on a timm LSKNet (``forward`` /
    ``forward_intermediates(x, indices, intermediates_only=True)``)."""

    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        self.fused = fused

    def forward_intermediates(
        self, x: Tensor, indices: int | Sequence[int] | None = None, intermediates_only: bool = True, **_: object
    ) -> list[Tensor]:
        if not intermediates_only:
            raise ValueError("the optimized backbone only returns intermediates")
        feats = self.fused.forward_features(x.contiguous(memory_format=torch.channels_last))
        if indices is None:
            return feats
        if isinstance(indices, int):
            return feats[len(feats) - indices :]
        return [feats[i] for i in indices]

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        return self.fused(x)


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _optimized_backbone(backbone: nn.Module) -> nn.Module:
    """The fused LSKNet for an LSKNet backbone (bare or timm ``features_only``), else ``backbone`` channels-last."""
    inner = getattr(backbone, "model", None)
    if isinstance(backbone, LSKNet) or isinstance(inner, LSKNet):
        source = backbone if isinstance(backbone, LSKNet) else inner
        if getattr(source, "lsk_is_official", True):
            fused = optimize_for_backbone(backbone)
            return _BackboneAdapter(fused) if isinstance(backbone, LSKNet) else fused
    return backbone.to(memory_format=torch.channels_last)


def optimize_detector(model: nn.Module) -> nn.Module:
    """Inference copy of a detector (any :class:`~lsknet.models.detector_base.Detector`; same call, same detections
    up to float rounding): the fused LSKNet backbone, channels-last neck and heads, and for Oriented R-CNN the fused
    RPN / bbox-head forwards; ``model`` is left untouched."""
    with torch.no_grad():
        fast = _frozen(copy.deepcopy(model))
        fast.backbone = _frozen(_optimized_backbone(fast.backbone))
        for name, part in fast.named_children():
            if name != "backbone":  # 4-D conv weights only (S2A-Net's ORConv keeps a 5-D one)
                for module in part.modules():
                    if isinstance(module, nn.Conv2d):
                        module.to(memory_format=torch.channels_last)
        # the FPN's convs (its forward is kept): 3x3 output convs by Winograd, 1x1 lateral convs as GEMMs
        neck = getattr(fast, "neck", None)
        for unit in getattr(neck, "fpn_convs", ()):
            if isinstance(getattr(unit, "conv", None), nn.Conv2d) and _winograd_ok(unit.conv):
                unit.conv = _Conv3x3(unit.conv, relu=False)
        for unit in getattr(neck, "lateral_convs", ()):
            if isinstance(getattr(unit, "conv", None), nn.Conv2d) and _pointwise_ok(unit.conv):
                unit.conv = _Conv1x1(unit.conv)
        if isinstance(neck, FPN):  # the lateral maps are fresh conv outputs: summing in place is safe
            _with_mixin(neck, _InPlaceTopDown)
        if isinstance(fast, OrientedRCNN):
            rpn = fast.rpn_head
            if _winograd_ok(rpn.rpn_conv):
                rpn.fast_conv = _Conv3x3(rpn.rpn_conv, relu=True)
                head_w = torch.cat([rpn.rpn_cls.weight.flatten(1), rpn.rpn_reg.weight.flatten(1)])
                rpn.register_buffer("head_w", head_w, persistent=False)
                rpn.register_buffer("head_b", torch.cat([rpn.rpn_cls.bias, rpn.rpn_reg.bias]), persistent=False)
                _with_mixin(rpn, _FusedRPNForward)
            else:
                _with_mixin(rpn, _FusedRPNConvForward)
            head = fast.roi_head.bbox_head
            extractor = fast.roi_head.bbox_roi_extractor
            s = extractor.output_size
            w = head.shared_fcs[0].weight
            if w.shape[1] % (s * s) == 0:
                w = w.view(w.shape[0], -1, s, s).permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()
                head.register_buffer("fc1_w_nhwc", w, persistent=False)
                _with_mixin(head, _FusedBBoxHeadForward)
                _with_mixin(extractor, _NHWCRoIExtractorForward)
        fast.inference_workspace = Workspace()
        _with_mixin(fast, _WorkspaceForward)
    return _frozen(fast)


def optimize_segmenter(model: nn.Module) -> nn.Module:
    """Inference copy of a :class:`~lsknet.models.segmentation.Segmenter`: fused LSKNet backbone, channels-last
    decode head; same call and outputs up to float rounding."""
    with torch.no_grad():
        fast = _frozen(copy.deepcopy(model))
        fast.backbone = _frozen(_optimized_backbone(fast.backbone))
        for part in (fast.decode_head, fast.aux_head):
            if part is not None:
                part.to(memory_format=torch.channels_last)
    return _frozen(fast)
