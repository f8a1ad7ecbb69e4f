"""The Oriented R-CNN test path as one traceable module: image tensor in, rboxes / scores / labels out.

:class:`DetectorGraph` runs the eager detector's own parts (normalisation constants, backbone, FPN, RPN head,
anchor generator, box coders, RoI extractor levels, bbox head, test configs) and replaces only the data-dependent
steps with the export-friendly formulations of :mod:`lsknet.export.graph_ops`. The eager
:class:`~lsknet.models.oriented_rcnn.OrientedRCNN` stays the definition; the tests check that both give the same
detections.

Input: ``image`` (1, 3, H, W) float RGB in 0..255, any H, W (padded to the size divisor inside the graph).
Outputs: ``rboxes`` (D, 5) ``(cx, cy, w, h, theta)`` pixels / radians le90, ``scores`` (D,), ``labels`` (D,) int64,
by descending score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import RoIAlign

from lsknet.export.graph_ops import (
    multiclass_nms,
    multiclass_nms_rotated_graph,
    roi_align_rotated_graph,
    topk_min,
)
from lsknet.models.oriented_rcnn import OrientedRCNN

__all__ = ["DetectorGraph"]


class DetectorGraph(nn.Module):
    """Export wrapper of an eval-mode :class:`OrientedRCNN` (batch of one image; see the module doc)."""

    def __init__(self, model: OrientedRCNN) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats, size = self._features(image)
        m = self.model
        logits, deltas = m.rpn_head(feats)
        anchors = m.rpn_head.anchor_generator.grid_anchors([f.shape[-2:] for f in feats], image.device)
        proposals = self._proposals(logits, deltas, anchors, size)
        return self._detect(feats, proposals, size)

    def _features(self, image: Tensor) -> tuple[list[Tensor], tuple]:
        """:meth:`Detector.preprocess` + ``extract_feats`` of image 0: the pyramid and the (H, W) before padding."""
        m = self.model
        h, w = image.shape[2], image.shape[3]
        d = m.size_divisor
        x = (image[0].to(m.pixel_mean.dtype) - m.pixel_mean) / m.pixel_std
        x = F.pad(x.unsqueeze(0), (0, (d - w % d) % d, 0, (d - h % d) % d))
        return m.extract_feats(x), (h, w)

    def _proposals(
        self, logits: list[Tensor], deltas: list[Tensor], anchors: list[Tensor], image_size: tuple
    ) -> Tensor:
        """:meth:`OrientedRPNHead.proposals` for image 0: (K, 6) rbox + objectness, by score (a
        :class:`~lsknet.models.rpn.HorizontalRPNHead`: (K, 5) hbox + objectness)."""
        head = self.model.rpn_head
        cfg = head.test_proposals
        scores, level_deltas, level_anchors, level_ids = [], [], [], []
        for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
            s = lg[0].permute(1, 2, 0).reshape(-1).sigmoid()
            dd = dl[0].permute(1, 2, 0).reshape(-1, head.reg_dim)
            if cfg.nms_pre > 0:
                s, idx = topk_min(s, cfg.nms_pre)
                dd, an = dd[idx], an[idx]
            scores.append(s)
            level_deltas.append(dd)
            level_anchors.append(an)
            level_ids.append(torch.full_like(s, lvl, dtype=torch.long))
        s = torch.cat(scores)
        rboxes = head._decode(torch.cat(level_anchors), torch.cat(level_deltas).float(), image_size)
        ids = torch.cat(level_ids)
        valid = torch.isfinite(rboxes).all(dim=1)
        if cfg.min_bbox_size > 0:
            sides_w, sides_h = head._sides(rboxes)
            valid = valid & (sides_w >= cfg.min_bbox_size) & (sides_h >= cfg.min_bbox_size)
        safe = torch.where(valid[:, None], rboxes, torch.zeros_like(rboxes))
        levels = torch.arange(len(logits), device=s.device)
        per_level = torch.where((ids[None, :] == levels[:, None]) & valid[None, :], s[None, :].float(), -1.0)
        keep = multiclass_nms(head._nms_boxes(safe), per_level, cfg.nms_iou, -0.5, 1 << 30)
        _, best = topk_min(s.float()[keep], cfg.max_per_img)
        keep = keep[best]
        return torch.cat([rboxes[keep], s[keep, None].to(rboxes.dtype)], dim=1)

    def _detect(self, feats: list[Tensor], proposals: Tensor, image_size: tuple) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`OrientedRoIHead.predict` + ``_postprocess`` for image 0."""
        head = self.model.roi_head
        cfg = head.test_cfg
        rois = torch.cat([torch.zeros_like(proposals[:, :1]), proposals[:, :5]], dim=1)
        cls_logits, deltas = head.bbox_head(self._roi_feats(feats, rois))
        probs = F.softmax(cls_logits.float(), dim=1)
        boxes = head.bbox_coder.decode(rois[:, 1:], deltas.float(), max_shape=image_size)  # centres in the image
        scores = probs[:, : probs.shape[1] - 1]
        return multiclass_nms_rotated_graph(boxes, scores, cfg.score_thr, cfg.nms_iou, cfg.max_per_img)

    def _roi_feats(self, feats: list[Tensor], rois: Tensor, ext: nn.Module | None = None) -> Tensor:
        """:class:`RotatedRoIExtractor` forward (default: the RoI head's): every RoI pooled from its level. Layers
        of a horizontal extractor (torchvision ``RoIAlign``, which has an ONNX symbolic) run as they are."""
        ext = self.model.roi_head.bbox_roi_extractor if ext is None else ext
        levels = ext.map_levels(rois)
        parts, order = [], []
        for lvl, layer in enumerate(ext.roi_layers):
            idx = torch.nonzero(levels == lvl).flatten()
            if isinstance(layer, RoIAlign):
                parts.append(layer(feats[lvl], rois[idx]))
                order.append(idx)
                continue
            parts.append(
                roi_align_rotated_graph(
                    feats[lvl],
                    rois[idx],
                    layer.output_size,
                    layer.spatial_scale,
                    layer.sampling_ratio,
                    layer.aligned,
                    layer.clockwise,
                )
            )
            order.append(idx)
        order_t = torch.cat(order)
        inverse = torch.zeros_like(order_t).scatter(0, order_t, torch.arange(order_t.shape[0], device=rois.device))
        return torch.cat(parts)[inverse]
