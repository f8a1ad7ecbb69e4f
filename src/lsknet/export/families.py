"""The test paths of the other detector families as traceable modules (image tensor in, rboxes / scores / labels
out), like :class:`~lsknet.export.detector.DetectorGraph` for Oriented R-CNN.

Each graph runs the eager detector's own parts (normalisation, backbone, FPN, heads, anchor generators, box coders,
R3Det's feature refinement modules and ``filter_bboxes`` / ``refine_bboxes``, the RoI extractors' level mapping) and
replaces only the data-dependent steps with :mod:`lsknet.export.graph_ops` (top-k with a graph-decided ``k``, the
proposal NMS, RoIAlignRotated as gathers, the greedy class-wise rotated NMS as an ONNX ``Loop``, and S2A-Net's
AlignConv deformable convolution, which has no ONNX symbolic, as bilinear gathers + a matrix product; the ORConv
is a plain convolution whose rotated weight the export's constant folding computes once). Input and outputs
as :class:`DetectorGraph`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsknet.export.detector import DetectorGraph
from lsknet.export.graph_ops import deform_conv2d_graph, multiclass_nms_rotated_graph, topk_min
from lsknet.models.r3det import R3Det
from lsknet.models.retina_head import RotatedRetinaHead
from lsknet.models.roi_transformer import RoITransformer
from lsknet.models.s2anet import S2ANet
from lsknet.ops import regularize_rbox

__all__ = ["R3DetGraph", "RoITransformerGraph", "S2ANetGraph", "dense_detections", "graph_for"]


def dense_detections(
    head: RotatedRetinaHead,
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_size: tuple,
) -> tuple[Tensor, Tensor, Tensor]:
    """:meth:`RotatedRetinaHead.predict` for image 0 (no test resize): per level the ``nms_pre`` best locations by
    their best class score, decoded from ``anchors`` (per level (H * W * A, 5)), class-wise rotated NMS, le90."""
    cfg = head.test_cfg
    boxes, scores = [], []
    for cls, reg, anc in zip(cls_scores, bbox_preds, anchors):
        s = cls[0].permute(1, 2, 0).reshape(-1, head.num_classes).float().sigmoid()
        d = reg[0].permute(1, 2, 0).reshape(-1, 5).float()
        if cfg.nms_pre > 0:
            _, idx = topk_min(s.amax(1), cfg.nms_pre)
            s, d, anc = s[idx], d[idx], anc[idx]
        boxes.append(head.bbox_coder.decode(anc.float(), d, max_shape=image_size))
        scores.append(s)
    rb, sc, lab = multiclass_nms_rotated_graph(
        torch.cat(boxes), torch.cat(scores), cfg.score_thr, cfg.nms_iou, cfg.max_per_img
    )
    return regularize_rbox(rb, "le90"), sc, lab


class R3DetGraph(DetectorGraph):
    """Export wrapper of an eval-mode :class:`~lsknet.models.r3det.R3Det`: the first head, ``filter_bboxes``, each
    refinement stage (FRM + refinement head + ``refine_bboxes``) eagerly, then :func:`dense_detections`."""

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats, size = self._features(image)
        _, outs, rois = self.model._stages(feats)
        return dense_detections(self.model.refine_head[-1], outs[0], outs[1], rois[0], size)


class RoITransformerGraph(DetectorGraph):
    """Export wrapper of an eval-mode :class:`~lsknet.models.roi_transformer.RoITransformer`: the horizontal RPN's
    proposals as :class:`DetectorGraph`'s, then :meth:`RoITransRoIHead.predict` for image 0 (stage 0 on
    torchvision's RoIAlign, which exports as ONNX ``RoiAlign``; stage 1 on the RoIAlignRotated gathers)."""

    def _detect(self, feats: list[Tensor], proposals: Tensor, image_size: tuple) -> tuple[Tensor, Tensor, Tensor]:
        head = self.model.roi_head
        cfg = head.test_cfg
        rois0 = torch.cat([torch.zeros_like(proposals[:, :1]), proposals[:, :4]], dim=1)
        cls0, deltas0 = head.bbox_head[0](self._roi_feats(feats, rois0, head.bbox_roi_extractor[0]))
        rois1 = torch.cat([rois0[:, :1], head.hbox_coder.decode(rois0[:, 1:], deltas0.float())], dim=1)
        cls1, deltas1 = head.bbox_head[1](self._roi_feats(feats, rois1, head.bbox_roi_extractor[1]))
        probs = F.softmax((cls0.float() + cls1.float()) / 2.0, dim=1)
        boxes = head.rbox_coder.decode(rois1[:, 1:], deltas1.float(), max_shape=image_size)
        scores = probs[:, : probs.shape[1] - 1]
        return multiclass_nms_rotated_graph(boxes, scores, cfg.score_thr, cfg.nms_iou, cfg.max_per_img)


class S2ANetGraph(DetectorGraph):
    """Export wrapper of an eval-mode :class:`~lsknet.models.s2anet.S2ANet`: FAM head and ``refine_bboxes``, each
    level's AlignConv (its own offsets, :func:`deform_conv2d_graph` in place of ``deform_conv2d``, ReLU), the ODM
    head, then :func:`dense_detections` on the refined anchors."""

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats, size = self._features(image)
        m = self.model
        fam_out = m.fam_head(feats)
        (rois,) = m.fam_head.refine_bboxes(*fam_out)
        aligned = []
        for ac, x, r in zip(m.align_conv.ac, feats, rois):
            offset = ac.offsets(r[None].to(x.dtype), (x.shape[2], x.shape[3]))
            dc = ac.deform_conv
            aligned.append(F.relu(deform_conv2d_graph(x, offset, dc.weight, dc.padding[0])))
        cls_scores, bbox_preds = m.odm_head(aligned)
        return dense_detections(m.odm_head, cls_scores, bbox_preds, rois, size)


def graph_for(model: nn.Module) -> nn.Module | None:
    """The export wrapper of a detector family other than Oriented R-CNN, ``None`` when it has none."""
    if isinstance(model, R3Det):
        return R3DetGraph(model)
    if isinstance(model, RoITransformer):
        return RoITransformerGraph(model)
    if isinstance(model, S2ANet):
        return S2ANetGraph(model)
    return None
