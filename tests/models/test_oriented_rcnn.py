"""Oriented R-CNN: official structure (parameter totals, checkpoint key layout), and the behaviour of its parts
against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

import lsknet
from lsknet.errors import CheckpointError
from lsknet.models.fpn import FPN
from lsknet.models.oriented_rcnn import build_oriented_rcnn, load_detector_checkpoint
from lsknet.models.roi_head import OrientedRoIHead, RotatedRoIExtractor
from lsknet.models.rpn import AnchorGenerator, OrientedRPNHead, ProposalConfig

# Official totals for 15 classes (acceptance criteria of the issue) and the per-part split of LSKNet-T
# (backbone 3,990,190 + FPN 2,492,416 + RPN 595,477 + RoI head 13,917,205).
OFFICIAL_TOTALS = {"lsknet_t": 20_995_288, "lsknet_s": 30_977_062}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def det_t():
    torch.manual_seed(0)
    return build_oriented_rcnn("lsknet_t", num_classes=15)


@pytest.mark.parametrize("variant", ["lsknet_t", "lsknet_s"])
def test_parameter_totals_are_official(variant, det_t):
    model = det_t if variant == "lsknet_t" else build_oriented_rcnn(variant, num_classes=15)
    assert _count(model) == OFFICIAL_TOTALS[variant]
    if variant == "lsknet_t":
        parts = [_count(m) for m in (model.backbone, model.neck, model.rpn_head, model.roi_head)]
        assert parts == [3_990_190, 2_492_416, 595_477, 13_917_205]


def test_create_model_names_build_the_detector():
    model = lsknet.models.factory.create_model("lsknet_t_orcnn", num_classes=3)
    assert model.roi_head.bbox_head.fc_cls.out_features == 4  # 3 classes + background
    assert model.roi_head.bbox_head.fc_reg.out_features == 5  # class-agnostic


def test_state_dict_uses_mmrotate_names(det_t):
    keys = set(det_t.state_dict())
    official = {
        "backbone.patch_embed1.proj.weight",
        "backbone.block1.0.attn.spatial_gating_unit.conv0.weight",
        "backbone.block4.1.mlp.fc2.bias",
        "backbone.norm4.weight",
        "neck.lateral_convs.0.conv.weight",
        "neck.lateral_convs.3.conv.bias",
        "neck.fpn_convs.3.conv.weight",
        "rpn_head.rpn_conv.weight",
        "rpn_head.rpn_cls.weight",
        "rpn_head.rpn_reg.bias",
        "roi_head.bbox_head.shared_fcs.0.weight",
        "roi_head.bbox_head.shared_fcs.1.bias",
        "roi_head.bbox_head.fc_cls.weight",
        "roi_head.bbox_head.fc_reg.weight",
    }
    assert official <= keys
    assert not any(k.startswith(("neck.fpn_convs.4", "neck.lateral_convs.4", "backbone.head")) for k in keys)
    sd = det_t.state_dict()
    assert sd["rpn_head.rpn_cls.weight"].shape == (3, 256, 1, 1)  # sigmoid objectness, 3 anchors
    assert sd["rpn_head.rpn_reg.weight"].shape == (18, 256, 1, 1)  # 6 midpoint-offset deltas per anchor
    assert sd["roi_head.bbox_head.shared_fcs.0.weight"].shape == (1024, 256 * 7 * 7)


def _fake_mmrotate_checkpoint(model: torch.nn.Module, path, num_classes_in_file: int | None = None):
    """An MMRotate 0.x style file: {'meta', 'state_dict'} with random tensors and EMA-hook buffers."""
    gen = torch.Generator().manual_seed(1)
    state = {}
    for key, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            state[key] = torch.randn(value.shape, generator=gen)
        else:
            state[key] = value.clone()
    if num_classes_in_file is not None:
        state["roi_head.bbox_head.fc_cls.weight"] = torch.randn(num_classes_in_file + 1, 1024)
        state["roi_head.bbox_head.fc_cls.bias"] = torch.randn(num_classes_in_file + 1)
    state["ema_backbone_patch_embed1_proj_weight"] = torch.zeros(1)
    state["ema_neck_fpn_convs_0_conv_weight"] = torch.zeros(1)
    torch.save({"meta": {"epoch": 12, "mmcv_version": "1.7.0", "CLASSES": ["plane"] * 15}, "state_dict": state}, path)
    return state


def test_mmrotate_checkpoint_loads_and_ignores_ema(tmp_path, det_t):
    path = tmp_path / "lsk_t_fpn_1x_dota_le90.pth"
    state = _fake_mmrotate_checkpoint(det_t, path)
    model = lsknet.models.factory.create_model("lsknet_t_orcnn", num_classes=15, checkpoint=path)
    loaded = model.state_dict()
    for key in ("backbone.block2.1.attn.spatial_gating_unit.conv_squeeze.weight", "neck.fpn_convs.2.conv.weight"):
        assert torch.equal(loaded[key], state[key])
    assert torch.equal(loaded["roi_head.bbox_head.fc_cls.weight"], state["roi_head.bbox_head.fc_cls.weight"])
    assert not any(k.startswith("ema_") for k in loaded)


def test_checkpoint_with_other_number_of_classes_is_refused(tmp_path, det_t):
    path = tmp_path / "det.pth"
    _fake_mmrotate_checkpoint(det_t, path, num_classes_in_file=5)
    with pytest.raises(CheckpointError, match="5 classes.*15"):
        load_detector_checkpoint(build_oriented_rcnn("lsknet_t", num_classes=15), path)


def test_checkpoint_of_other_variant_or_missing_file_is_refused(tmp_path, det_t):
    path = tmp_path / "det.pth"
    _fake_mmrotate_checkpoint(det_t, path)
    with pytest.raises(CheckpointError, match="backbone"):
        load_detector_checkpoint(build_oriented_rcnn("lsknet_s", num_classes=15), path)
    with pytest.raises(CheckpointError, match="not found"):
        load_detector_checkpoint(det_t, tmp_path / "missing.pth")


# ---- FPN -------------------------------------------------------------------------------------------------


def test_fpn_top_down_and_extra_level_against_hand_computation():
    fpn = FPN([2, 2, 2, 2], out_channels=2, num_outs=5)
    with torch.no_grad():  # identity laterals and identity 3x3 smoothing: outputs are the top-down sums
        for conv in fpn.lateral_convs:
            conv.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            conv.conv.bias.zero_()
        for conv in fpn.fpn_convs:
            conv.conv.weight.zero_()
            conv.conv.weight[0, 0, 1, 1] = conv.conv.weight[1, 1, 1, 1] = 1.0
            conv.conv.bias.zero_()
    feats = [torch.randn(1, 2, 16 // 2**i, 16 // 2**i) for i in range(4)]
    outs = fpn(feats)
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2, 1]

    def up(x):  # nearest x2 by hand
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    p5 = feats[3]
    p4 = feats[2] + up(p5)
    p3 = feats[1] + up(p4)
    p2 = feats[0] + up(p3)
    for got, want in zip(outs, [p2, p3, p4, p5, p5[:, :, ::2, ::2]]):
        torch.testing.assert_close(got, want)


# ---- anchors, assignment, sampling ------------------------------------------------------------------------


def test_anchor_shapes_and_positions_by_hand():
    gen = AnchorGenerator()
    r2 = math.sqrt(2.0)
    base = gen.base_anchors(4)  # ratio h/w = 0.5, 1, 2; area (4 * 8)^2
    want = torch.tensor(
        [
            [-16 * r2, -8 * r2, 16 * r2, 8 * r2],
            [-16, -16, 16, 16],
            [-8 * r2, -16 * r2, 8 * r2, 16 * r2],
        ]
    )
    torch.testing.assert_close(base, want)
    levels = gen.grid_anchors([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)], torch.device("cpu"))
    assert [lv.shape[0] for lv in levels] == [18, 6, 3, 3, 3]
    # location (row 1, column 2) of level 0: anchors centred at (x=8, y=4), the 2nd one square 32 px
    torch.testing.assert_close(levels[0][(1 * 3 + 2) * 3 + 1], torch.tensor([8 - 16.0, 4 - 16.0, 8 + 16.0, 4 + 16.0]))
    # stride 64, scale 8: a 512 px square
    torch.testing.assert_close(levels[4][1], torch.tensor([-256.0, -256.0, 256.0, 256.0]))


# ---- RPN proposals ---------------------------------------------------------------------------------------


def test_rectangle_deltas_give_the_anchors_as_le90_proposals():
    head = OrientedRPNHead(in_channels=4, feat_channels=4, anchor_generator=AnchorGenerator(strides=[8], scales=[4]))
    logits = [torch.full((1, 3, 1, 1), -5.0)]
    logits[0][0, 1] = 5.0  # the square anchor scores best
    # da = db = 0.5 (0.5 / std 0.5 = 1.0) puts the top / right vertices on the envelope's corners: a horizontal
    # rectangle; zero deltas would give the inscribed diamond instead (the midpoint-offset parametrisation)
    deltas = [torch.zeros(1, 18, 1, 1)]
    deltas[0][0, [4, 5, 10, 11, 16, 17]] = 1.0
    anchors = head.anchor_generator.grid_anchors([(1, 1)], torch.device("cpu"))
    cfg = ProposalConfig(nms_pre=10, nms_iou=0.99, max_per_img=10)
    props = head.proposals(logits, deltas, anchors, [(8, 8)], cfg)[0]
    assert props.shape == (3, 6)
    r2 = math.sqrt(2.0)
    # sorted by score; the square first; wide anchor -> theta 0, tall anchor -> w/h swapped, theta -pi/2
    torch.testing.assert_close(props[0, :4], torch.tensor([0.0, 0.0, 32.0, 32.0]), atol=1e-4, rtol=0)
    wide_tall = sorted(props[1:, :5].tolist(), key=lambda r: abs(r[4]))
    torch.testing.assert_close(
        torch.tensor(wide_tall[0]), torch.tensor([0, 0, 32 * r2, 16 * r2, 0.0]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        torch.tensor(wide_tall[1]), torch.tensor([0, 0, 32 * r2, 16 * r2, -math.pi / 2]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(props[0, 5], torch.sigmoid(torch.tensor(5.0)))
    # horizontal NMS at 0.3: the wide and tall anchors overlap the square by 1/(1+... ) < 0.8 but > 0.3
    props = head.proposals(logits, deltas, anchors, [(8, 8)], ProposalConfig(10, 0.3, 10))[0]
    assert props.shape[0] == 1


# ---- RoI head --------------------------------------------------------------------------------------------


def test_roi_levels_follow_the_scale_rule():
    ext = RotatedRoIExtractor()
    sides = torch.tensor([10.0, 55.9, 56.0, 111.0, 112.0, 224.0, 448.0, 2000.0])
    rois = torch.stack([torch.zeros(8), sides, sides, sides, sides, torch.zeros(8)], dim=1)
    # floor(log2(side / 56 + 1e-6)) clamped to 0..3, computed by hand
    assert ext.map_levels(rois).tolist() == [0, 0, 0, 0, 1, 2, 3, 3]
    # a 30 x 120 box has sqrt(area) 60 -> level 0 (the area counts, not the long side)
    assert ext.map_levels(torch.tensor([[0, 0, 0, 120.0, 30.0, 0.3]])).tolist() == [0]


def test_roi_features_come_from_the_mapped_level():
    ext = RotatedRoIExtractor()
    feats = [torch.full((1, 2, 64 // 2**i, 64 // 2**i), float(i + 1)) for i in range(5)]
    rois = torch.tensor([[0, 128.0, 128.0, 40.0, 40.0, 0.2], [0, 128.0, 128.0, 120.0, 120.0, -0.7]])
    out = ext(feats, rois)
    assert out.shape == (2, 2, 7, 7)
    torch.testing.assert_close(out[0], torch.full((2, 7, 7), 1.0))
    torch.testing.assert_close(out[1], torch.full((2, 7, 7), 2.0))


def test_postprocess_thresholds_and_per_class_nms():
    head = OrientedRoIHead(num_classes=2)
    boxes = torch.tensor(
        [
            [50.0, 50.0, 40.0, 20.0, 0.0],
            [51.0, 50.0, 40.0, 20.0, 0.0],  # overlaps box 0 (IoU ~0.95)
            [150.0, 50.0, 40.0, 20.0, 0.3],
        ]
    )
    probs = torch.tensor([[0.9, 0.06, 0.04], [0.8, 0.15, 0.05], [0.02, 0.03, 0.95]])
    res = head._postprocess(boxes, probs, head.test_cfg)
    got = sorted(zip(res["labels"].tolist(), [round(s, 2) for s in res["scores"].tolist()]))
    # class 0: box 0 (0.9) suppresses box 1 (0.8); class 1: box 1 (0.15) and box 0 (0.06) overlap -> 0.15 kept;
    # box 2 has no score above 0.05 for classes 0/1
    assert got == [(0, 0.9), (1, 0.15)]
    assert torch.allclose(res["scores"], res["scores"].sort(descending=True).values)


# ---- whole detector --------------------------------------------------------------------------------------


def test_preprocess_normalises_and_pads_to_32(det_t):
    img = torch.full((3, 40, 70), 255.0)
    batch, sizes = det_t.preprocess([img, torch.zeros(3, 33, 20, dtype=torch.uint8)])
    assert batch.shape == (2, 3, 64, 96) and sizes == [(40, 70), (33, 20)]
    want = (255.0 - 123.675) / 58.395
    assert batch[0, 0, 0, 0].item() == pytest.approx(want)
    assert batch[1, 2, 0, 0].item() == pytest.approx(-103.53 / 57.375)
    assert batch[0, :, 40:, :].abs().sum() == 0 and batch[1, :, :, 20:].abs().sum() == 0


def test_train_returns_losses_and_eval_returns_results():
    torch.manual_seed(0)
    model = build_oriented_rcnn(
        "lsknet_t",
        num_classes=3,
        rpn={"train_proposals": {"nms_pre": 200, "max_per_img": 100}, "test_proposals": {"max_per_img": 50}},
        roi={"num_samples": 32},
    )
    images = [torch.rand(3, 96, 128) * 255, torch.rand(3, 80, 64) * 255]
    targets = [
        {"rboxes": torch.tensor([[40.0, 40.0, 50.0, 20.0, 0.4]]), "labels": torch.tensor([2])},
        {"rboxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)},  # image without objects
    ]
    targets[0]["rboxes"] = torch.cat([targets[0]["rboxes"], torch.tensor([[120.0, 10.0, 40.0, 16.0, 0.2]])])
    targets[0]["labels"] = torch.tensor([2, 0])  # the second box sticks out of the 128 x 96 image
    model.train()
    losses = model(images, targets)
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} <= set(losses)
    total = sum(v for k, v in losses.items() if k.startswith("loss"))
    assert torch.isfinite(total)
    total.backward()
    assert model.roi_head.bbox_head.fc_cls.weight.grad.abs().sum() > 0
    assert model.rpn_head.rpn_reg.weight.grad.abs().sum() > 0  # the one positive anchor set regresses
    model.eval()
    with torch.no_grad():
        results = model(images)
    assert len(results) == 2
    for r in results:
        n = r["scores"].shape[0]
        assert r["rboxes"].shape == (n, 5) and r["labels"].shape == (n,) and r["labels"].dtype == torch.long
        assert bool((r["scores"] > 0.05).all()) and bool((r["labels"] < 3).all())
        if n:
            assert bool((r["rboxes"][:, 2] >= r["rboxes"][:, 3]).all())  # le90: w is the long side
            assert bool((r["rboxes"][:, 4] >= -math.pi / 2).all()) and bool((r["rboxes"][:, 4] < math.pi / 2).all())
    with torch.no_grad():  # an image smaller than one stride-32 cell still runs (padded)
        assert model([torch.rand(3, 12, 20) * 255])[0]["rboxes"].shape[1] == 5
    with pytest.raises(ValueError, match="labels"):
        model.train()
        model(images[:1], [{"rboxes": torch.zeros(1, 5), "labels": torch.tensor([3])}])
