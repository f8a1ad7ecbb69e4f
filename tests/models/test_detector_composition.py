"""OrientedRCNN.forward reads like torchvision's GeneralizedRCNN.forward: targets checked in one named method, the
RPN owns its anchors and picks train / test proposal settings from ``self.training``, returning (proposals, losses)."""

from __future__ import annotations

import pytest
import torch

from lsknet.models.oriented_rcnn import build_oriented_rcnn
from lsknet.models.rpn import ProposalConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    det = build_oriented_rcnn("lsknet_t", num_classes=3)
    det.rpn_head.train_proposals = ProposalConfig(nms_pre=200, max_per_img=30)
    det.rpn_head.test_proposals = ProposalConfig(nms_pre=100, max_per_img=12)
    return det


def _inputs():
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 128, generator=gen) * 255, torch.rand(3, 64, 64, generator=gen) * 255]
    targets = [
        {"rboxes": torch.tensor([[40.0, 30.0, 30.0, 12.0, 0.3]]), "labels": torch.tensor([2])},
        {"rboxes": torch.tensor([[20.0, 20.0, 16.0, 10.0, -0.5], [44.0, 40.0, 12.0, 8.0, 0.0]]),
         "labels": torch.tensor([0, 1])},
    ]  # fmt: skip
    return images, targets


def test_rpn_propose_picks_settings_from_training_mode(model):
    images, targets = _inputs()
    batch, sizes = model.preprocess(images)
    gt_rboxes, _ = model.check_targets(targets, len(images), batch.device)
    with torch.no_grad():
        feats = model.extract_feats(batch)
        model.rpn_head.train()
        torch.manual_seed(7)
        proposals, losses = model.rpn_head.propose(feats, sizes, gt_rboxes)
        # the same step from the head's parts, by hand
        logits, deltas = model.rpn_head(feats)
        anchors = model.rpn_head.anchor_generator.grid_anchors([f.shape[-2:] for f in feats], batch.device)
        torch.manual_seed(7)
        want_losses = model.rpn_head.loss(logits, deltas, anchors, sizes, gt_rboxes)
        want = model.rpn_head.proposals(logits, deltas, anchors, sizes, model.rpn_head.train_proposals)
        assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox"}
        for key in losses:
            torch.testing.assert_close(losses[key], want_losses[key])
        assert all(p.shape[0] <= 30 for p in proposals) and any(p.shape[0] > 12 for p in proposals)
        for got, exp in zip(proposals, want):
            torch.testing.assert_close(got, exp)
        model.rpn_head.eval()
        proposals, losses = model.rpn_head.propose(feats, sizes)
        assert losses == {} and all(p.shape[0] <= 12 for p in proposals)
        model.rpn_head.train()
        with pytest.raises(ValueError, match="gt_rboxes"):
            model.rpn_head.propose(feats, sizes)


def test_training_forward_returns_the_four_losses_and_checks_targets(model):
    images, targets = _inputs()
    model.train()
    losses = model(images, targets)
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="needs targets"):
        model(images)
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        model(images, targets[:1])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        model(images, [targets[0], {"rboxes": torch.zeros(1, 5), "labels": torch.tensor([3])}])
    model.eval()
    out = model(images)
    assert len(out) == 2 and {"rboxes", "scores", "labels"} <= set(out[0])
