"""Oriented RPN (Xie et al., "Oriented R-CNN for Object Detection", ICCV 2021) and its anchor generator; the
assignment and sampling it shares with the RoI head are in :mod:`lsknet.models.matching`.

The RPN predicts, for each of the 3 horizontal anchors at every location of the 5 pyramid levels, an objectness
logit (sigmoid) and 6 midpoint-offset deltas that turn the anchor into an oriented proposal. Defaults are the
official LSKNet / MMRotate ``OrientedRPNHead`` settings; parameter names (``rpn_conv``, ``rpn_cls``, ``rpn_reg``)
match its checkpoints.

Box formats: ``hbox`` = horizontal ``(x1, y1, x2, y2)`` pixels; ``rbox`` = ``(cx, cy, w, h, theta)`` pixels and
radians, le90 (see ``lsknet.ops``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from lsknet.models.matching import MaxIoUAssigner, RandomSampler
from lsknet.ops import DeltaXYWHCoder, MidpointOffsetCoder, rbox_to_hbox
from lsknet.ops.hbox_nms import batched_nms_hbox


class AnchorGenerator:
    """Horizontal anchors ``(x1, y1, x2, y2)`` centred on ``(j * stride, i * stride)`` of every feature location.

    Per location the anchors are ordered by ratio then scale (MMDetection's order, which the channel layout of
    ``rpn_cls`` / ``rpn_reg`` in official checkpoints follows). ``ratio = h / w``; the side of a square anchor
    is ``stride * scale``.
    """

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = (8.0,),
    ) -> None:
        self.strides = [int(s) for s in strides]
        self.ratios = [float(r) for r in ratios]
        self.scales = [float(s) for s in scales]

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return len(self.ratios) * len(self.scales)

    def base_anchors(self, stride: int, device: torch.device | None = None) -> torch.Tensor:
        """(A, 4) anchors centred on the origin for one level."""
        ratios = torch.tensor(self.ratios, dtype=torch.float32, device=device)
        scales = torch.tensor(self.scales, dtype=torch.float32, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1.0 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)

    def grid_anchors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        """Anchors of every level, each (H * W * A, 4), location-major (row, column, anchor)."""
        if len(featmap_sizes) != len(self.strides):
            raise ValueError(f"got {len(featmap_sizes)} feature maps for {len(self.strides)} anchor strides")
        out = []
        for (h, w), stride in zip(featmap_sizes, self.strides):
            base = self.base_anchors(stride, device)
            xs = torch.arange(w, dtype=torch.float32, device=device) * stride
            ys = torch.arange(h, dtype=torch.float32, device=device) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + base[None]).reshape(-1, 4))
        return out


@dataclass
class ProposalConfig:
    """Proposal generation: top ``nms_pre`` anchors per level by objectness, horizontal NMS per level at
    ``nms_iou`` on the proposals' envelopes, ``max_per_img`` kept. With ``min_bbox_size > 0`` boxes with a side
    ``< min_bbox_size`` are dropped before NMS; with 0 (official) nothing is dropped, not even degenerate boxes
    (non-finite boxes always are)."""

    nms_pre: int = 2000
    nms_iou: float = 0.8
    max_per_img: int = 2000
    min_bbox_size: float = 0.0


class OrientedRPNHead(nn.Module):
    """Oriented region proposal network over a feature pyramid.

    The box-specific steps (regression targets, proposal decoding, the boxes NMS runs on) are the methods
    ``_targets``, ``_decode``, ``_sides`` and ``_nms_boxes``; :class:`HorizontalRPNHead` overrides them.

    Args:
        in_channels: channels of the pyramid levels (256).
        feat_channels: channels of the shared 3x3 conv (256).
        anchor_generator: anchors per level (official: strides 4..64, ratios 0.5/1/2, scale 8).
        pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality: max-IoU assigner on horizontal envelopes.
        num_samples, pos_fraction: anchors sampled per image for the loss (256, 0.5).
        allowed_border: anchors sticking out of the image by more than this many pixels are not trained
            (official 0; negative = train all anchors).
        train_proposals, test_proposals: :class:`ProposalConfig` for training and inference.
        smooth_l1_beta: beta of the regression loss (1/9).
        official_angle_rounding: decode proposals with MMRotate's float arithmetic (default, see
            :class:`~lsknet.ops.MidpointOffsetCoder`): some near-vertical proposals get angle ``+pi/2 - eps``
            instead of ``-pi/2`` and are pooled turned by 180 degrees, as in the official detector. ``False``
            gives exact le90 angles (a deliberate deviation); ignored when ``bbox_coder`` is given.
    """

    def __init__(
        self,
        in_channels: int = 256,
        feat_channels: int = 256,
        anchor_generator: AnchorGenerator | None = None,
        bbox_coder: MidpointOffsetCoder | None = None,
        pos_iou_thr: float = 0.7,
        neg_iou_thr: float = 0.3,
        min_pos_iou: float = 0.3,
        match_low_quality: bool = True,
        num_samples: int = 256,
        pos_fraction: float = 0.5,
        allowed_border: float = 0.0,
        train_proposals: ProposalConfig | None = None,
        test_proposals: ProposalConfig | None = None,
        smooth_l1_beta: float = 1.0 / 9.0,
        official_angle_rounding: bool = True,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.bbox_coder = bbox_coder or MidpointOffsetCoder(official_rounding=official_angle_rounding)
        num_anchors = self.anchor_generator.num_anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * self.reg_dim, 1)
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality
        self.num_samples = num_samples
        self.pos_fraction = pos_fraction
        self.allowed_border = allowed_border
        self.train_proposals = train_proposals or ProposalConfig()
        self.test_proposals = test_proposals or ProposalConfig()
        self.smooth_l1_beta = smooth_l1_beta
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.01) weights, zero biases (official initialisation)."""
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    @property
    def assigner(self) -> MaxIoUAssigner:
        """Anchors to ground truth (horizontal envelopes), from this head's thresholds."""
        return MaxIoUAssigner(
            pos_iou_thr=self.pos_iou_thr,
            neg_iou_thr=self.neg_iou_thr,
            min_pos_iou=self.min_pos_iou,
            match_low_quality=self.match_low_quality,
        )

    @property
    def sampler(self) -> RandomSampler:
        """Anchors sampled per image for the loss."""
        return RandomSampler(num=self.num_samples, pos_fraction=self.pos_fraction)

    def propose(
        self,
        feats: Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
        gt_rboxes: Sequence[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The RPN step of the detector (torchvision ``RegionProposalNetwork.forward``): ``(proposals, losses)``.

        Builds this head's anchors for the pyramid, picks ``train_proposals`` or ``test_proposals`` from
        ``self.training``, and in training computes the losses against ``gt_rboxes`` (one (G, 5) rbox tensor per
        image, required then). ``image_sizes``: (h, w) of each image before padding. Proposals: (K, 6) per image.
        """
        logits, deltas = self(feats)
        anchors = self.anchor_generator.grid_anchors([f.shape[-2:] for f in feats], feats[0].device)
        losses: dict[str, torch.Tensor] = {}
        if self.training:
            if gt_rboxes is None:
                raise ValueError("the RPN needs gt_rboxes in training mode")
            losses = self.loss(logits, deltas, anchors, image_sizes, gt_rboxes)
        cfg = self.train_proposals if self.training else self.test_proposals
        return self.proposals(logits, deltas, anchors, image_sizes, cfg), losses

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, D * A, H, W), D = ``reg_dim`` (the raw head;
        see :meth:`propose`)."""
        logits, deltas = [], []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            logits.append(self.rpn_cls(x))
            deltas.append(self.rpn_reg(x))
        return logits, deltas

    #: regression outputs per anchor (six midpoint-offset deltas)
    reg_dim = 6

    def _flatten(self, logits: list[torch.Tensor], deltas: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, sum HWA) logits and (B, sum HWA, reg_dim) deltas in anchor order."""
        b = logits[0].shape[0]
        flat_logits = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1) for x in logits], dim=1)
        flat_deltas = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, self.reg_dim) for x in deltas], dim=1)
        return flat_logits, flat_deltas

    def _targets(self, anchors: torch.Tensor, gt_rboxes: torch.Tensor, gt_hboxes: torch.Tensor) -> torch.Tensor:
        """Regression targets of positive anchors (N, 4) for their matched ground truth (N, 5 rbox, N, 4 envelope)."""
        return self.bbox_coder.encode(anchors, gt_rboxes)

    def _decode(self, anchors: torch.Tensor, deltas: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Proposal boxes (rboxes (N, 5)) of anchors (N, 4) and their deltas (N, reg_dim)."""
        return self.bbox_coder.decode(anchors, deltas)

    @staticmethod
    def _sides(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(width, height) of decoded proposals (the ``min_bbox_size`` filter)."""
        return boxes[:, 2], boxes[:, 3]

    @staticmethod
    def _nms_boxes(boxes: torch.Tensor) -> torch.Tensor:
        """The horizontal boxes the proposal NMS compares: the rboxes' envelopes."""
        return rbox_to_hbox(boxes)

    def loss(
        self,
        logits: list[torch.Tensor],
        deltas: list[torch.Tensor],
        anchors: list[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
        gt_rboxes: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Sigmoid objectness loss and smooth-L1 midpoint-offset loss, both averaged over all sampled anchors
        of the batch (``loss_rpn_cls``, ``loss_rpn_bbox``). ``image_sizes``: (h, w) of each image before padding."""
        flat_logits, flat_deltas = self._flatten(logits, deltas)
        all_anchors = torch.cat(anchors, dim=0)
        cls_losses, reg_losses = [], []
        num_total = 0
        for i, (h, w) in enumerate(image_sizes):
            if self.allowed_border >= 0:
                b = self.allowed_border
                inside = (
                    (all_anchors[:, 0] >= -b)
                    & (all_anchors[:, 1] >= -b)
                    & (all_anchors[:, 2] < w + b)
                    & (all_anchors[:, 3] < h + b)
                )
                inside_idx = torch.nonzero(inside).flatten()
            else:
                inside_idx = torch.arange(all_anchors.shape[0], device=all_anchors.device)
            anchors_i = all_anchors[inside_idx]
            gts = gt_rboxes[i]
            gt_hboxes = rbox_to_hbox(gts) if gts.numel() else gts.new_zeros(0, 4)
            matches, _ = self.assigner(box_iou, gt_hboxes, anchors_i)
            pos, neg = self.sampler(matches)
            num_total += max(pos.numel(), 1) + max(neg.numel(), 1)
            sel = torch.cat([pos, neg])
            target = torch.zeros(sel.numel(), device=flat_logits.device, dtype=flat_logits.dtype)
            target[: pos.numel()] = 1.0
            cls_losses.append(
                F.binary_cross_entropy_with_logits(flat_logits[i, inside_idx[sel]], target, reduction="sum")
            )
            if pos.numel():
                reg_target = self._targets(anchors_i[pos], gts[matches[pos]], gt_hboxes[matches[pos]])
                pred = flat_deltas[i, inside_idx[pos]]
                reg_losses.append(
                    F.smooth_l1_loss(pred, reg_target.to(pred.dtype), beta=self.smooth_l1_beta, reduction="sum")
                )
            else:
                reg_losses.append(flat_deltas[i].sum() * 0.0)
        return {
            "loss_rpn_cls": torch.stack(cls_losses).sum() / num_total,
            "loss_rpn_bbox": torch.stack(reg_losses).sum() / num_total,
        }

    @torch.no_grad()
    def proposals(
        self,
        logits: list[torch.Tensor],
        deltas: list[torch.Tensor],
        anchors: list[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]],
        cfg: ProposalConfig,
    ) -> list[torch.Tensor]:
        """Proposals per image, by score: (K, 6) = rbox (cx, cy, w, h, theta) + objectness score (this head);
        (K, 5) = hbox + score for :class:`HorizontalRPNHead`."""
        out = []
        for i in range(len(image_sizes)):
            scores, level_deltas, level_anchors, level_ids = [], [], [], []
            for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
                s = lg[i].permute(1, 2, 0).reshape(-1).sigmoid()
                d = dl[i].permute(1, 2, 0).reshape(-1, self.reg_dim)
                if 0 < cfg.nms_pre < s.numel():
                    s, idx = s.topk(cfg.nms_pre)
                    d, an = d[idx], an[idx]
                scores.append(s)
                level_deltas.append(d)
                level_anchors.append(an)
                level_ids.append(torch.full_like(s, lvl, dtype=torch.long))
            s = torch.cat(scores)
            rboxes = self._decode(torch.cat(level_anchors), torch.cat(level_deltas).float(), image_sizes[i])
            ids = torch.cat(level_ids)
            # official semantics: the size filter only runs for min_bbox_size > 0 (sides >= it are kept), so
            # degenerate proposals (h = 0 when the clamped midpoint offsets meet) stay among the candidates
            valid = torch.isfinite(rboxes).all(dim=1)
            if cfg.min_bbox_size > 0:
                w, h = self._sides(rboxes)
                valid &= (w >= cfg.min_bbox_size) & (h >= cfg.min_bbox_size)
            if not bool(valid.all()):
                rboxes, s, ids = rboxes[valid], s[valid], ids[valid]
            if rboxes.numel() == 0:
                out.append(rboxes.new_zeros(0, rboxes.shape[1] + 1))
                continue
            keep = batched_nms_hbox(self._nms_boxes(rboxes), s.float(), ids, cfg.nms_iou)[: cfg.max_per_img]
            out.append(torch.cat([rboxes[keep], s[keep, None].to(rboxes.dtype)], dim=1))
        return out


class HorizontalRPNHead(OrientedRPNHead):
    """Horizontal region proposal network (MMDetection ``RPNHead`` / MMRotate ``RotatedRPNHead``, the first stage of
    RoI Transformer): the same anchors, objectness, assignment (on the ground truths' envelopes), sampling and loss
    as :class:`OrientedRPNHead`, but 4 ``DeltaXYWH`` deltas per anchor (``rpn_reg``: 4A channels) decoded into
    horizontal proposals ``(x1, y1, x2, y2)`` clipped to the unpadded image, with horizontal NMS per level.

    ``propose`` returns (K, 5) = hbox + objectness score per image. Official RoI Transformer settings: proposal
    NMS at 0.7 for training and testing (``nms_iou``), stds 1. Takes :class:`OrientedRPNHead`'s arguments except
    ``official_angle_rounding`` (no angles here); ``bbox_coder`` defaults to :class:`~lsknet.ops.DeltaXYWHCoder`.
    """

    reg_dim = 4

    def __init__(self, *args, bbox_coder: DeltaXYWHCoder | None = None, **kwargs) -> None:
        kwargs.pop("official_angle_rounding", None)
        for key in ("train_proposals", "test_proposals"):
            if kwargs.get(key) is None:
                kwargs[key] = ProposalConfig(nms_iou=0.7)
        super().__init__(*args, **kwargs)
        self.bbox_coder = bbox_coder or DeltaXYWHCoder()

    def _targets(self, anchors: torch.Tensor, gt_rboxes: torch.Tensor, gt_hboxes: torch.Tensor) -> torch.Tensor:
        return self.bbox_coder.encode(anchors, gt_hboxes)

    def _decode(self, anchors: torch.Tensor, deltas: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        return self.bbox_coder.decode(anchors, deltas, max_shape=image_size)

    @staticmethod
    def _sides(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]

    @staticmethod
    def _nms_boxes(boxes: torch.Tensor) -> torch.Tensor:
        return boxes
