"""optimize_for_inference on the task models: the optimized detector makes the eager detector's detections (same
count, labels and order; boxes within 1e-3 px; scores within 1e-5); the segmenter gives the same logits."""

from __future__ import annotations

import pytest
import torch

from lsknet import optimize_for_inference
from lsknet.models.oriented_rcnn import build_oriented_rcnn


def _spread_detector(variant: str, seed: int = 0) -> torch.nn.Module:
    """Random-weight detector whose RPN objectness and class scores spread over (0, 1) like a trained model's
    (the official init gives near-constant scores: every tie would make the comparison meaningless). Objectness
    logits stay within about +-12, as a trained RPN's: beyond ~16.6 float32 sigmoids round to exactly 1.0, and
    thousands of proposals tied at 1.0 would leave the choice among them to float rounding."""
    torch.manual_seed(seed)
    model = build_oriented_rcnn(variant, num_classes=15, drop_path_rate=0.0, proj_drop_rate=0.0)
    with torch.no_grad():
        rpn = model.rpn_head
        rpn.rpn_cls.weight.normal_(0, 0.25)  # objectness logits spread over a few units (official init: ~0)
        rpn.rpn_cls.bias.fill_(-2.0)  # most anchors are background
        head = model.roi_head.bbox_head
        head.fc_cls.weight.normal_(0, 0.03)  # class logits spread per box and per class
        head.fc_cls.bias.copy_(torch.linspace(-3.0, 1.0, head.fc_cls.bias.numel()))
        for m in model.backbone.modules():  # non-trivial BN statistics so that BN folding is exercised
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth random RGB image in 0..255 (blobs at several scales, so objectness varies over the image)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(3, h, w)
    for s in (4, 16, 64):
        small = torch.rand(1, 3, max(1, h // s), max(1, w // s), generator=g)
        img += torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (img / 3 * 255).clamp(0, 255)


def _assert_same_detections(eager: dict, fast: dict, score_atol: float = 1e-5, min_count: int = 20) -> None:
    """Same count; same labels, boxes (1e-3 px) and scores (``score_atol``) position by position, except that
    detections whose eager scores lie within the score tolerance of each other (a tie group) may come in any order
    within their group (float rounding decides the order of near-equal scores)."""
    n = eager["scores"].numel()
    assert n > min_count, "too few detections for a meaningful comparison"
    assert eager["scores"].std() > 0.02  # the scores do spread
    assert fast["scores"].numel() == n
    assert torch.allclose(fast["scores"], eager["scores"], atol=score_atol, rtol=0)
    gaps = eager["scores"][:-1] - eager["scores"][1:]
    assert (gaps >= 0).all()
    group = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum((gaps > score_atol).long(), 0)])
    ties = 0
    for g in torch.unique(group).tolist():
        idx = torch.nonzero(group == g).flatten().tolist()
        free = list(idx)
        for i in idx:  # each eager detection has its own fast twin inside the tie group
            match = [
                j
                for j in free
                if fast["labels"][j] == eager["labels"][i]
                and (fast["rboxes"][j] - eager["rboxes"][i]).abs().max().item() <= 1e-3
            ]
            assert match, f"detection {i} of the eager model has no twin among the optimized ones"
            ties += match[0] != i
            free.remove(match[0])
    assert ties <= n // 20  # reordering is confined to rare near-ties


def _check(variant: str, size: tuple[int, int], seed: int = 0) -> None:
    model = _spread_detector(variant, seed)
    fast = optimize_for_inference(model)
    assert fast is not model and fast.training is False
    img = _image(*size, seed=seed + 1)
    with torch.inference_mode():
        ref = model([img])[0]
        got = fast([img])[0]
    _assert_same_detections(ref, got)


@pytest.mark.parametrize("variant", ["lsknet_t", "lsknet_s"])
def test_optimized_detector_same_detections_small_odd_size(variant):
    _check(variant, (197, 263))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lsknet_t", "lsknet_s"])
@pytest.mark.parametrize("size", [(1024, 1024), (611, 1003)])
def test_optimized_detector_same_detections_large(variant, size):
    _check(variant, size, seed=3)


def test_optimized_detector_leaves_source_untouched_and_keeps_its_api():
    model = _spread_detector("lsknet_t")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.rpn_head).__name__ == "OrientedRPNHead"  # the source keeps its class
    assert fast.num_classes == 15 and hasattr(fast.rpn_head, "proposals")
    assert not any(p.requires_grad for p in fast.parameters())


def test_optimized_segmenter_same_logits():
    from lsknet.models.segmentation import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter("lsknet_t", head="unetformer", num_classes=6).eval()
    fast = optimize_for_inference(model)
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        ref, got = model(x), fast(x)
    assert got.shape == ref.shape
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4


def test_optimized_detector_reuses_its_workspace_and_returns_detections_that_do_not_alias_it():
    """Large temporaries come from a workspace kept between calls (no fresh page-faulting buffers per call); a
    later call must not change the detections an earlier call returned, and repeating an image repeats its result
    exactly."""
    model = _spread_detector("lsknet_t")
    fast = optimize_for_inference(model)
    img_a, img_b = _image(197, 263, seed=1), _image(197, 263, seed=2)
    with torch.inference_mode():
        first = fast([img_a])[0]
        kept = {k: v.clone() for k, v in first.items()}
        held = fast.inference_workspace.nbytes
        assert held > 197 * 263 * 4 * 4  # at least the finest pyramid level's worth of buffers
        other = fast([img_b])[0]
        assert fast.inference_workspace.nbytes == held  # same sizes: the same buffers, nothing new
        again = fast([img_a])[0]
        ref = model([img_a])[0]
    for k in kept:
        assert torch.equal(first[k], kept[k]), k  # not overwritten by the later calls
        assert torch.equal(again[k], kept[k]), k
    assert not torch.equal(other["scores"][:5], kept["scores"][:5])
    _assert_same_detections(ref, first)
