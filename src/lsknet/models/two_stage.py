"""Two-stage detectors: an RPN whose proposals feed a RoI head (Oriented R-CNN, RoI Transformer).

The flow is torchvision's ``GeneralizedRCNN``: features -> ``rpn_head.propose`` (which picks its train / test
proposal settings from ``self.training`` and returns ``(proposals, losses)``) -> ``roi_head.loss`` in training or
``roi_head.predict`` at inference. A subclass names the classifier whose rows give the class count of a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lsknet.models.detector_base import Detector

__all__ = ["TwoStageDetector"]


class TwoStageDetector(Detector):
    """``backbone`` + ``neck`` + ``rpn_head`` + ``roi_head`` (see :class:`~lsknet.models.detector_base.Detector` for
    the input handling and the other keyword arguments)."""

    #: state-dict key of the classifier whose rows (minus the background row) are the number of classes
    classifier_key: str = ""

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        rpn_head: nn.Module,
        roi_head: nn.Module,
        backbone_indices: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, neck, backbone_indices, **kwargs)
        self.rpn_head = rpn_head
        self.roi_head = roi_head

    @property
    def num_classes(self) -> int:
        """Number of object classes (background excluded)."""
        return self.roi_head.num_classes

    @classmethod
    def checkpoint_num_classes(cls, state_dict: Mapping[str, torch.Tensor]) -> int | None:
        """Classes a state dict of this detector was trained for (``classifier_key`` rows minus background)."""
        weight = state_dict.get(cls.classifier_key)
        return None if weight is None else int(weight.shape[0]) - 1

    def loss_batch(
        self,
        batch: torch.Tensor,
        sizes: list[tuple[int, int]],
        gt_rboxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The RPN's losses and the RoI head's (keys ``loss_*``; others such as ``acc`` are only logged)."""
        feats = self.extract_feats(batch)
        proposals, losses = self.rpn_head.propose(feats, sizes, gt_rboxes)
        losses.update(self.roi_head.loss(feats, proposals, gt_rboxes, gt_labels))
        return losses

    def predict_batch(
        self,
        batch: torch.Tensor,
        sizes: list[tuple[int, int]],
        scale_factors: list[tuple[float, float]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """RPN proposals, then the RoI head's decode + per-class NMS (see :class:`Detector`)."""
        feats = self.extract_feats(batch)
        proposals, _ = self.rpn_head.propose(feats, sizes)
        return self.roi_head.predict(feats, proposals, sizes, scale_factors=scale_factors)
