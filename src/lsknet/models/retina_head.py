"""Rotated RetinaNet head (Lin et al., focal loss; MMRotate 0.3.4 ``RotatedRetinaHead`` / ``RotatedAnchorHead``),
shared by S2A-Net's feature alignment module (FAM) and R3Det's first stage and refinement stages.

Per pyramid level two towers of ``stacked_convs`` 3x3 conv + ReLU (``cls_convs.N.conv``, ``reg_convs.N.conv``) feed
``retina_cls`` (A * C sigmoid logits) and ``retina_reg`` (A * 5 deltas), A anchors per location. Anchors are
MMDetection's (ratio-major, location-major order) with angle 0 ("fake" rotated anchors, as the official
``RotatedAnchorGenerator``). Deltas use :class:`~lsknet.ops.DeltaXYWHTCoder` in the config's angle version
(R3Det: ``oc``, no projection; S2A-Net FAM: ``le135``, projected, ``norm_factor=1``).

Training: max-IoU assignment of anchors to ground truth (rotated IoU; with ``assign_by_circumhbbox`` against the
ground truth's horizontal envelope, the official default that R3Det's first stage keeps), every valid anchor that
is positive or negative enters a sigmoid focal loss, positives enter a smooth-L1 (or L1) loss on the deltas; both
are divided by the number of positives of the batch (each image counts at least 1), as MMDetection does.
Inference: per level the ``nms_pre`` anchors with the best class score, decoding (centres clamped into the image),
mapping back through the test scale factor, then class-wise rotated NMS (:func:`lsknet.ops.multiclass_nms_rotated`).

Box formats: ``rbox`` = ``(cx, cy, w, h, theta)`` pixels and radians; inside the head in the coder's angle version,
results converted to le90 (the library convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, sigmoid_focal_loss

from lsknet.models.fpn import ConvUnit
from lsknet.models.matching import NEGATIVE, MaxIoUAssigner
from lsknet.models.rpn import AnchorGenerator
from lsknet.ops import DeltaXYWHTCoder, multiclass_nms_rotated, rbox_iou, rbox_to_hbox, regularize_rbox

__all__ = ["RetinaTestConfig", "RotatedAnchorGenerator", "RotatedRetinaHead"]

Levels = list[torch.Tensor]


class RotatedAnchorGenerator:
    """Angle-0 rotated anchors ``(cx, cy, w, h, 0)`` at ``(j * stride, i * stride)`` of every feature location.

    Scales are ``scales`` or ``octave_base_scale * 2 ** (k / scales_per_octave)``; ``ratio = h / w``; a square anchor
    has side ``stride * scale``. Order per location: ratio-major, then scale (MMDetection). Official R3Det: strides
    8..128, ratios (1, 0.5, 2), octave base 4 with 3 scales per octave (9 anchors); S2A-Net FAM: scale 4, ratio 1.
    """

    def __init__(
        self,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        ratios: Sequence[float] = (1.0, 0.5, 2.0),
        scales: Sequence[float] | None = None,
        octave_base_scale: float = 4.0,
        scales_per_octave: int = 3,
    ) -> None:
        if scales is None:
            scales = [octave_base_scale * 2 ** (k / scales_per_octave) for k in range(scales_per_octave)]
        self._hbox = AnchorGenerator(strides, ratios, scales)
        self.strides = self._hbox.strides

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return self._hbox.num_anchors

    def grid_anchors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device) -> Levels:
        """Anchors of every level, each (H * W * A, 5), location-major (row, column, anchor)."""
        out = []
        for hb in self._hbox.grid_anchors(featmap_sizes, device):
            ctr, wh = (hb[:, :2] + hb[:, 2:]) / 2, hb[:, 2:] - hb[:, :2]
            out.append(torch.cat([ctr, wh, wh.new_zeros(wh.shape[0], 1)], dim=1))
        return out

    def valid_flags(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        pad_size: tuple[int, int],
        num_anchors: int,
        device: torch.device,
    ) -> Levels:
        """MMDetection ``valid_flags``: per level (H * W * num_anchors,) True where the location lies inside the
        image's own padded size ``pad_size`` = (h, w) (the rest of the batch padding is not trained)."""
        out = []
        for (h, w), s in zip(featmap_sizes, self.strides):
            vh, vw = min(math.ceil(pad_size[0] / s), h), min(math.ceil(pad_size[1] / s), w)
            ok = (torch.arange(h, device=device)[:, None] < vh) & (torch.arange(w, device=device)[None, :] < vw)
            out.append(ok.reshape(-1, 1).expand(-1, num_anchors).reshape(-1))
        return out


@dataclass
class RetinaTestConfig:
    """Inference of a dense rotated head (official R3Det / S2A-Net ``test_cfg``): per level the ``nms_pre`` best
    anchors (by their best class score), detections with a class score ``> score_thr``, class-wise rotated NMS at
    IoU ``nms_iou``, at most ``max_per_img`` results. ``min_bbox_size`` is accepted and, as officially, unused."""

    nms_pre: int = 2000
    min_bbox_size: float = 0.0
    score_thr: float = 0.05
    nms_iou: float = 0.1
    max_per_img: int = 2000


class RotatedRetinaHead(nn.Module):
    """Dense rotated head with focal loss.

    Args:
        num_classes: object classes (sigmoid outputs, no background logit).
        in_channels, feat_channels: pyramid and tower channels (256, 256).
        stacked_convs: 3x3 conv + ReLU layers per tower (R3Det 4, S2A-Net FAM 2).
        anchor_generator: :class:`RotatedAnchorGenerator` (default: the R3Det anchors). For refinement heads it only
            gives the strides and ``num_anchors`` (use one anchor per location); their anchors are passed in.
        bbox_coder: delta coder (default: R3Det's ``oc``, means 0, stds 1, no projection, no edge swap).
        pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality: max-IoU assigner (R3Det stage 0: 0.5 / 0.4 / 0).
        assign_by_circumhbbox: angle version string (official default ``'oc'``) to assign against the ground truth's
            horizontal envelopes, ``None`` to use the rotated ground truth itself.
        focal_alpha, focal_gamma, loss_cls_weight: sigmoid focal loss (0.25, 2.0, 1.0).
        loss_bbox: ``"smooth_l1"`` (with ``smooth_l1_beta``, official 0.11) or ``"l1"``; weight ``loss_bbox_weight``.
        test_cfg: :class:`RetinaTestConfig`.
    """

    def __init__(
        self,
        num_classes: int = 15,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        anchor_generator: RotatedAnchorGenerator | None = None,
        bbox_coder: DeltaXYWHTCoder | None = None,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        min_pos_iou: float = 0.0,
        match_low_quality: bool = True,
        assign_by_circumhbbox: str | None = "oc",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loss_cls_weight: float = 1.0,
        loss_bbox: str = "smooth_l1",
        smooth_l1_beta: float = 0.11,
        loss_bbox_weight: float = 1.0,
        test_cfg: RetinaTestConfig | None = None,
    ) -> None:
        super().__init__()
        if loss_bbox not in ("smooth_l1", "l1"):
            raise ValueError(f"loss_bbox must be 'smooth_l1' or 'l1', got {loss_bbox!r}")
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator or RotatedAnchorGenerator()
        self.num_anchors = self.anchor_generator.num_anchors
        self.bbox_coder = bbox_coder or DeltaXYWHTCoder(
            (0.0,) * 5, (1.0,) * 5, angle_version="oc", norm_factor=None, edge_swap=False, proj_xy=False
        )
        self.assigner = MaxIoUAssigner(
            pos_iou_thr=pos_iou_thr,
            neg_iou_thr=neg_iou_thr,
            min_pos_iou=min_pos_iou,
            match_low_quality=match_low_quality,
        )
        self.assign_by_circumhbbox = assign_by_circumhbbox
        self.focal_alpha, self.focal_gamma, self.loss_cls_weight = focal_alpha, focal_gamma, loss_cls_weight
        self.loss_bbox_kind, self.smooth_l1_beta, self.loss_bbox_weight = loss_bbox, smooth_l1_beta, loss_bbox_weight
        self.test_cfg = test_cfg or RetinaTestConfig()
        chans = [in_channels] + [feat_channels] * stacked_convs
        self.cls_convs = nn.ModuleList(ConvUnit(chans[i], feat_channels, 3, padding=1) for i in range(stacked_convs))
        self.reg_convs = nn.ModuleList(ConvUnit(chans[i], feat_channels, 3, padding=1) for i in range(stacked_convs))
        self.retina_cls = nn.Conv2d(feat_channels, self.num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, self.num_anchors * 5, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: Normal(0, 0.01) weights, zero biases; ``retina_cls`` bias for a 0.01 prior probability."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.retina_cls.bias, -math.log((1 - 0.01) / 0.01))

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[Levels, Levels]:
        """Per level: class logits (B, A * C, H, W) and deltas (B, A * 5, H, W)."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            c, r = x, x
            for conv in self.cls_convs:
                c = F.relu(conv(c))
            for conv in self.reg_convs:
                r = F.relu(conv(r))
            cls_scores.append(self.retina_cls(c))
            bbox_preds.append(self.retina_reg(r))
        return cls_scores, bbox_preds

    def grid_anchors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device) -> Levels:
        """This head's own anchors per level (H * W * A, 5) in pixels."""
        return self.anchor_generator.grid_anchors(featmap_sizes, device)

    def _anchors_per_image(self, cls_scores: Levels, anchors: Sequence[Levels] | None) -> list[Levels]:
        if anchors is not None:
            if len(anchors) != cls_scores[0].shape[0]:
                raise ValueError(f"{cls_scores[0].shape[0]} images but anchors for {len(anchors)}")
            return [list(a) for a in anchors]
        grid = self.grid_anchors([tuple(c.shape[-2:]) for c in cls_scores], cls_scores[0].device)
        return [grid] * cls_scores[0].shape[0]

    def _flat(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """(B, A * k, H, W) -> (B, H * W * A, k) in anchor order."""
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, k)

    # --------------------------------------------------------------------------------------------- box refining
    @torch.no_grad()
    def filter_bboxes(self, cls_scores: Levels, bbox_preds: Levels) -> list[Levels]:
        """R3Det: per image and level the box decoded from the best-scoring anchor of every location, (H * W, 5)
        (MMRotate ``filter_bboxes``: best anchor by its best class logit; no clamping)."""
        grid = self.grid_anchors([tuple(c.shape[-2:]) for c in cls_scores], cls_scores[0].device)
        a, b = self.num_anchors, cls_scores[0].shape[0]
        out: list[Levels] = [[] for _ in range(b)]
        for cls, reg, anc in zip(cls_scores, bbox_preds, grid):
            best = self._flat(cls, self.num_classes).reshape(b, -1, a, self.num_classes).amax(-1).argmax(-1)
            deltas = self._flat(reg, 5).reshape(b, -1, a, 5)
            anc = anc.reshape(-1, a, 5)
            loc = torch.arange(anc.shape[0], device=anc.device)
            for i in range(b):
                out[i].append(self.bbox_coder.decode(anc[loc, best[i]], deltas[i, loc, best[i]].float()))
        return out

    @torch.no_grad()
    def refine_bboxes(
        self, cls_scores: Levels, bbox_preds: Levels, rois: Sequence[Levels] | None = None
    ) -> list[Levels]:
        """Per image and level every location's box decoded from its anchor (one anchor per location): the
        head's own anchors (S2A-Net FAM) or ``rois`` from a previous stage (R3Det refinement heads)."""
        if bbox_preds[0].shape[1] != 5:
            raise ValueError("refine_bboxes needs one anchor per location")
        anchors = self._anchors_per_image(cls_scores, rois)
        return [
            [self.bbox_coder.decode(anc, self._flat(reg, 5)[i].float()) for anc, reg in zip(anchors[i], bbox_preds)]
            for i in range(len(anchors))
        ]

    # ------------------------------------------------------------------------------------------------- losses
    def assign(self, gts: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Matches (N,) of ``anchors`` (N, 5) to ``gts`` (G, 5): ground-truth index, ``NEGATIVE`` or ``IGNORED``."""
        if self.assign_by_circumhbbox is None:
            return self.assigner(rbox_iou, gts, anchors)[0]
        env = rbox_to_hbox(gts)
        if bool((anchors[:, 4] == 0).all()):  # both sides axis-aligned: the exact rotated IoU is the plain IoU
            return self.assigner(box_iou, env, rbox_to_hbox(anchors))[0]
        env_rb = torch.cat([(env[:, :2] + env[:, 2:]) / 2, env[:, 2:] - env[:, :2], env.new_zeros(len(env), 1)], 1)
        return self.assigner(rbox_iou, env_rb, anchors)[0]

    def loss(
        self,
        cls_scores: Levels,
        bbox_preds: Levels,
        gt_rboxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        anchors: Sequence[Levels] | None = None,
        pad_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"loss_cls", "loss_bbox"}`` for a batch. ``gt_rboxes``: (G, 5) le90 per image (converted to the coder's
        angle version here); ``anchors``: per image and level (H * W * A, 5), default this head's grid;
        ``pad_sizes``: (h, w) of each image's own padded size (anchors outside are not trained; default all)."""
        b = cls_scores[0].shape[0]
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        per_image = self._anchors_per_image(cls_scores, anchors)
        flat_cls = torch.cat([self._flat(c, self.num_classes) for c in cls_scores], 1)
        flat_reg = torch.cat([self._flat(r, 5) for r in bbox_preds], 1)
        version = self.bbox_coder.angle_version
        cls_sum, reg_sum = flat_cls.new_zeros(()), flat_reg.new_zeros(())
        num_pos = 0
        for i in range(b):
            anc = torch.cat(per_image[i]).detach()
            if pad_sizes is None:
                valid = torch.ones(anc.shape[0], dtype=torch.bool, device=anc.device)
            else:
                valid = torch.cat(self.anchor_generator.valid_flags(sizes, pad_sizes[i], self.num_anchors, anc.device))
            vidx = torch.nonzero(valid).flatten()
            gts = regularize_rbox(gt_rboxes[i].to(anc.dtype), version)
            matches = self.assign(gts, anc[vidx])
            trained = vidx[(matches >= 0) | (matches == NEGATIVE)]
            pos_m = matches >= 0
            pos = vidx[pos_m]
            target = torch.zeros_like(flat_cls[i, trained])
            if pos.numel():
                lab = gt_labels[i][matches[pos_m]]
                rows = torch.searchsorted(trained, pos)
                target[rows, lab] = 1.0
                enc = self.bbox_coder.encode(anc[pos], gts[matches[pos_m]]).to(flat_reg.dtype)
                pred = flat_reg[i, pos]
                if self.loss_bbox_kind == "l1":
                    reg_sum = reg_sum + (pred - enc).abs().sum()
                else:
                    reg_sum = reg_sum + F.smooth_l1_loss(pred, enc, beta=self.smooth_l1_beta, reduction="sum")
            cls_sum = cls_sum + sigmoid_focal_loss(
                flat_cls[i, trained], target, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
            )
            num_pos += max(pos.numel(), 1)
        return {
            "loss_cls": cls_sum * (self.loss_cls_weight / num_pos),
            "loss_bbox": (reg_sum + flat_reg.sum() * 0.0) * (self.loss_bbox_weight / num_pos),
        }

    # ---------------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(
        self,
        cls_scores: Levels,
        bbox_preds: Levels,
        image_sizes: Sequence[tuple[int, int]],
        anchors: Sequence[Levels] | None = None,
        scale_factors: Sequence[tuple[float, float]] | None = None,
        cfg: RetinaTestConfig | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Per image ``{"rboxes": (D, 5) le90, "scores": (D,), "labels": (D,) int64}`` (MMRotate ``get_bboxes``).

        ``image_sizes``: (H, W) before padding (decoded centres are clamped into it); ``anchors`` as in :meth:`loss`;
        ``scale_factors``: (w_scale, h_scale) of a test resize per image: ``cx, w`` are divided by ``w_scale`` and
        ``cy, h`` by ``h_scale`` before NMS, as MMRotate's ``rescale=True``."""
        cfg = cfg or self.test_cfg
        per_image = self._anchors_per_image(cls_scores, anchors)
        results = []
        for i, size in enumerate(image_sizes):
            boxes, scores = [], []
            for cls, reg, anc in zip(cls_scores, bbox_preds, per_image[i]):
                s = cls[i].permute(1, 2, 0).reshape(-1, self.num_classes).float().sigmoid()
                d = reg[i].permute(1, 2, 0).reshape(-1, 5).float()
                if 0 < cfg.nms_pre < s.shape[0]:
                    idx = s.amax(1).topk(cfg.nms_pre).indices
                    s, d, anc = s[idx], d[idx], anc[idx]
                boxes.append(self.bbox_coder.decode(anc.float(), d, max_shape=size))
                scores.append(s)
            rb = torch.cat(boxes)
            if scale_factors is not None:
                sw, sh = scale_factors[i]
                rb = rb / rb.new_tensor([sw, sh, sw, sh, 1.0])
            res = multiclass_nms_rotated(rb, torch.cat(scores), cfg.score_thr, cfg.nms_iou, cfg.max_per_img)
            res["rboxes"] = regularize_rbox(res["rboxes"], "le90")
            results.append(res)
        return results
