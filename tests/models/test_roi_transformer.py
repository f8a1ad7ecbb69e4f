"""RoI Transformer: official structure (parameter totals, MMRotate key layout loaded strictly), its new parts against
hand-computed values (coders, horizontal RPN, horizontal RoI extractor, two-stage targets), and training."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align

from lsknet.errors import CheckpointError, ConfigError
from lsknet.models.oriented_rcnn import build_oriented_rcnn
from lsknet.models.roi_trans_head import HorizontalRoIExtractor, RoITransRoIHead, StageTrainConfig
from lsknet.models.roi_transformer import build_roi_transformer
from lsknet.models.rpn import HorizontalRPNHead, ProposalConfig
from lsknet.ops import DeltaXYWHAHCoder, DeltaXYWHCoder, rbox_to_hbox

PI = math.pi

# Official totals for 15 classes, counted from configs/lsknet/lsk_{t,s}_roitrans_fpn_1x_dota.py and MMRotate 0.3.4:
#   backbone LSKNet-T 3,990,190 / LSKNet-S 13,840,892 and FPN 2,492,416 / 2,623,488 (as in Oriented R-CNN)
#   RotatedRPNHead: rpn_conv 256*256*9 + 256 = 590,080; rpn_cls (3 anchors, sigmoid) 256*3 + 3 = 771;
#                   rpn_reg (4 deltas) 256*12 + 12 = 3,084                                  -> 593,935
#   stage 0 RotatedShared2FCBBoxHead: 12544*1024 + 1024 = 12,846,080; 1024*1024 + 1024 = 1,049,600;
#           fc_cls 1024*16 + 16 = 16,400; fc_reg class-agnostic 1024*5 + 5 = 5,125         -> 13,917,205
#   stage 1: the same with fc_reg per class 1024*75 + 75 = 76,875                          -> 13,988,955
#   T: 3,990,190 + 2,492,416 + 593,935 + 13,917,205 + 13,988,955 = 34,982,701
#   S: 13,840,892 + 2,623,488 + 593,935 + 13,917,205 + 13,988,955 = 44,964,475
OFFICIAL_TOTALS = {"lsknet_t": 34_982_701, "lsknet_s": 44_964_475}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def det_t():
    torch.manual_seed(0)
    return build_roi_transformer("lsknet_t", num_classes=15)


@pytest.mark.parametrize("variant", ["lsknet_t", "lsknet_s"])
def test_parameter_totals_are_official(variant, det_t):
    model = det_t if variant == "lsknet_t" else build_roi_transformer("s", num_classes=15)
    assert _count(model) == OFFICIAL_TOTALS[variant]
    assert [_count(m) for m in (model.rpn_head, *model.roi_head.bbox_head)] == [593_935, 13_917_205, 13_988_955]


def _official_head_shapes(num_classes=15, c=256):
    """The head keys of an MMRotate 0.3.4 RoI Transformer checkpoint (RotatedRPNHead, RoITransRoIHead with two
    RotatedShared2FCBBoxHead; RoIAlign layers have no parameters), written from the official definitions."""
    shapes = {
        "rpn_head.rpn_conv.weight": (c, c, 3, 3),
        "rpn_head.rpn_conv.bias": (c,),
        "rpn_head.rpn_cls.weight": (3, c, 1, 1),
        "rpn_head.rpn_cls.bias": (3,),
        "rpn_head.rpn_reg.weight": (12, c, 1, 1),
        "rpn_head.rpn_reg.bias": (12,),
    }
    for stage, reg in ((0, 5), (1, 5 * num_classes)):
        p = f"roi_head.bbox_head.{stage}."
        shapes.update(
            {
                p + "shared_fcs.0.weight": (1024, c * 49),
                p + "shared_fcs.0.bias": (1024,),
                p + "shared_fcs.1.weight": (1024, 1024),
                p + "shared_fcs.1.bias": (1024,),
                p + "fc_cls.weight": (num_classes + 1, 1024),
                p + "fc_cls.bias": (num_classes + 1,),
                p + "fc_reg.weight": (reg, 1024),
                p + "fc_reg.bias": (reg,),
            }
        )
    return shapes


def test_official_key_layout_loads_strictly(tmp_path, det_t):
    # backbone + neck: the Oriented R-CNN layout (checked against the official names in test_oriented_rcnn)
    orcnn = build_oriented_rcnn("lsknet_t", num_classes=15).state_dict()
    shapes = {k: tuple(v.shape) for k, v in orcnn.items() if k.startswith(("backbone.", "neck."))}
    shapes.update(_official_head_shapes())
    gen = torch.Generator().manual_seed(3)
    state = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    for k, v in orcnn.items():  # integer buffers (BatchNorm's num_batches_tracked)
        if not v.dtype.is_floating_point:
            state[k] = v.clone()
    state["ema_backbone_patch_embed1_proj_weight"] = torch.zeros(1)  # EMA hook buffers are ignored
    path = tmp_path / "lsk_t_roitrans_fpn_1x_dota.pth"
    torch.save({"meta": {"epoch": 12, "CLASSES": ["plane"] * 15}, "state_dict": state}, path)
    model = build_roi_transformer("lsknet_t", num_classes=15, checkpoint=path)
    loaded = model.state_dict()
    assert set(loaded) == set(state) - {"ema_backbone_patch_embed1_proj_weight"}
    for key in ("roi_head.bbox_head.1.fc_reg.weight", "rpn_head.rpn_reg.bias", "backbone.block3.4.mlp.fc2.weight"):
        assert torch.equal(loaded[key], state[key])
    # an Oriented R-CNN checkpoint is not a RoI Transformer checkpoint
    torch.save({"state_dict": orcnn}, tmp_path / "orcnn.pth")
    with pytest.raises(CheckpointError):
        build_roi_transformer("lsknet_t", num_classes=15, checkpoint=tmp_path / "orcnn.pth")


def test_bad_head_options_are_config_errors():
    with pytest.raises(ConfigError, match="rpn_nms"):
        build_roi_transformer("resnet18", num_classes=2, head={"rpn_nms": 0.5})
    with pytest.raises(ConfigError, match="bogus"):
        build_roi_transformer("resnet18", num_classes=2, head={"bogus": 1})


# ---- coders ----------------------------------------------------------------------------------------------
def test_delta_xywh_coder_by_hand():
    coder = DeltaXYWHCoder()
    anchors = torch.tensor([[0.0, 0.0, 20.0, 10.0]])  # centre (10, 5), 20 x 10
    gt = torch.tensor([[5.0, 0.0, 45.0, 20.0]])  # centre (25, 10), 40 x 20
    d = coder.encode(anchors, gt)
    torch.testing.assert_close(d, torch.tensor([[15 / 20, 5 / 10, math.log(2), math.log(2)]]))
    torch.testing.assert_close(coder.decode(anchors, d), gt)
    # clip_border: x into [0, W], y into [0, H] of the (unpadded) image
    torch.testing.assert_close(coder.decode(anchors, d, max_shape=(15, 30)), torch.tensor([[5.0, 0.0, 30.0, 15.0]]))
    # exp inputs clamped to |log(16 / 1000)|
    big = coder.decode(anchors, torch.tensor([[0.0, 0.0, 10.0, -10.0]]))
    torch.testing.assert_close(big[0, 2] - big[0, 0], torch.tensor(20 * 1000 / 16))


def test_delta_xywhah_coder_by_hand():
    coder = DeltaXYWHAHCoder()  # stds (0.1, 0.1, 0.2, 0.2, 1), norm_factor 2, le90, edge swap
    roi = torch.tensor([[0.0, 0.0, 40.0, 20.0]])  # centre (20, 10), 40 x 20
    # a 40 x 20 box at 0.3 rad, centre (24, 12): dx = 4/40, dy = 2/20, dw = dh = 0, da = 0.3 / (2 pi)
    gt = torch.tensor([[24.0, 12.0, 40.0, 20.0, 0.3]])
    want = torch.tensor([[0.1 / 0.1, 0.1 / 0.1, 0.0, 0.0, 0.3 / (2 * PI)]])
    torch.testing.assert_close(coder.encode(roi, gt), want)
    torch.testing.assert_close(coder.decode(roi, want), gt)
    # the same rectangle written with w < h and the angle turned by pi/2: encoded with the edges swapped back
    swapped = torch.tensor([[24.0, 12.0, 20.0, 40.0, 0.3 - PI / 2]])
    torch.testing.assert_close(coder.encode(roi, swapped), want)
    # a decoded box with w < h comes back as w >= h, angle + pi/2 (le90-wrapped)
    d = torch.tensor([[0.0, 0.0, 0.0, 5 * math.log(4), -0.4 / (2 * PI)]])  # h: 20 * 4 = 80 > w = 40
    torch.testing.assert_close(coder.decode(roi, d), torch.tensor([[20.0, 10.0, 80.0, 40.0, PI / 2 - 0.4]]))


def test_delta_xywhah_round_trip_random():
    g = torch.Generator().manual_seed(0)
    n = 500
    c = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 60 + 4
    rois = torch.cat([c - wh / 2, c + wh / 2], 1)
    gw = torch.rand(n, generator=g) * 80 + 20
    gt = torch.stack(
        [c[:, 0] + torch.randn(n, generator=g) * 5, c[:, 1] + torch.randn(n, generator=g) * 5, gw,
         gw * (torch.rand(n, generator=g) * 0.9 + 0.05), (torch.rand(n, generator=g) - 0.5) * PI * 0.999],
        1,
    )  # fmt: skip
    back = DeltaXYWHAHCoder().decode(rois, DeltaXYWHAHCoder().encode(rois, gt))
    torch.testing.assert_close(back, gt, atol=1e-3, rtol=1e-5)


# ---- horizontal RPN and RoI extractor ---------------------------------------------------------------------
def test_horizontal_rpn_decodes_clips_and_nms_per_level():
    head = HorizontalRPNHead(in_channels=1, feat_channels=1)
    assert head.rpn_reg.out_channels == 12 and head.test_proposals.nms_iou == 0.7  # official RoI Transformer
    anchors = [torch.tensor([[0.0, 0.0, 20.0, 10.0], [2.0, 0.0, 22.0, 10.0]]), torch.tensor([[1.0, 0.0, 21.0, 10.0]])]
    logits = [torch.tensor([3.0, 2.0]).view(1, 2, 1, 1), torch.tensor([1.0]).view(1, 1, 1, 1)]
    deltas = [torch.zeros(1, 8, 1, 1), torch.tensor([0.5, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)]
    got = head.proposals(logits, deltas, anchors, [(8, 30)], ProposalConfig(nms_iou=0.7))[0]
    # anchor 0 and 1 are clipped to y <= 8 and overlap by IoU 18/22 > 0.7: anchor 1 suppressed; the level-1 box
    # (shifted by 10 px, IoU with anchor 0 only 10/30) is on another level and kept anyway
    s = torch.sigmoid(torch.tensor([3.0, 1.0]))
    want = torch.tensor([[0.0, 0.0, 20.0, 8.0, s[0]], [11.0, 0.0, 30.0, 8.0, s[1]]])
    torch.testing.assert_close(got, want)


def test_horizontal_rpn_trains_on_envelopes():
    torch.manual_seed(0)
    head = HorizontalRPNHead(in_channels=4, feat_channels=4, allowed_border=-1)
    head.anchor_generator.strides = [8]
    feats = [torch.randn(1, 4, 8, 8)]
    gt = torch.tensor([[32.0, 32.0, 40.0, 20.0, PI / 6]])
    logits, deltas = head(feats)
    anchors = head.anchor_generator.grid_anchors([(8, 8)], feats[0].device)
    losses = head.loss(logits, deltas, anchors, [(64, 64)], [gt])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox"} and losses["loss_rpn_bbox"] > 0
    # the regression target is the DeltaXYWH code of the envelope (hand-derived: 40 cos + 20 sin by 40 sin + 20 cos)
    env = rbox_to_hbox(gt)
    w, h = 40 * math.cos(PI / 6) + 20 * math.sin(PI / 6), 40 * math.sin(PI / 6) + 20 * math.cos(PI / 6)
    torch.testing.assert_close(env, torch.tensor([[32 - w / 2, 32 - h / 2, 32 + w / 2, 32 + h / 2]]))
    target = head._targets(anchors[0][:1], gt, env)
    torch.testing.assert_close(target, DeltaXYWHCoder().encode(anchors[0][:1], env))


def test_horizontal_roi_extractor_levels_and_features():
    ext = HorizontalRoIExtractor()
    rois = torch.tensor([[0, 0, 0, 100, 100], [0, 0, 0, 113, 113], [0, 0, 0, 224, 224], [0, 0, 0, 900, 900]]).float()
    assert ext.map_levels(rois).tolist() == [0, 1, 2, 3]  # floor(log2(sqrt(wh) / 56 + 1e-6)) clamped to 0..3
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 2, 128 // s, 128 // s, generator=g) for s in (4, 8, 16, 32)]
    r = torch.tensor([[0.0, 3.0, 5.0, 40.0, 50.0], [0.0, 4.0, 6.0, 124.0, 126.0]])
    out = ext(feats, r)
    torch.testing.assert_close(out[0:1], roi_align(feats[0], r[0:1], 7, 0.25, 0, aligned=True))  # 41 px: level 0
    torch.testing.assert_close(out[1:2], roi_align(feats[1], r[1:2], 7, 0.125, 0, aligned=True))  # 120: level 1


# ---- two-stage training targets ----------------------------------------------------------------------------
def test_stage_targets_follow_the_official_assignment():
    torch.manual_seed(0)
    head = RoITransRoIHead(num_classes=3, in_channels=1, fc_channels=4, train_cfg=StageTrainConfig(num_samples=8))
    gt = torch.tensor([[50.0, 50.0, 60.0, 20.0, PI / 4]])
    env = rbox_to_hbox(gt)[0]
    # stage 0: horizontal proposals against the envelope by horizontal IoU; the ground truth's envelope is added
    props = torch.stack([env, env + torch.tensor([30.0, 0, 30, 0]), torch.tensor([0.0, 0, 5, 5])])
    boxes, labels, targets, is_gt = head._sample_stage(0, props, gt, torch.tensor([2]))
    assert labels.tolist() == [2, 2, 3, 3] and is_gt.tolist() == [True, False]
    torch.testing.assert_close(boxes[:2], torch.stack([env, env]))
    torch.testing.assert_close(targets, DeltaXYWHAHCoder().encode(boxes[:2], gt.expand(2, 5)))
    # stage 1: rotated RoIs by rotated IoU (the envelope itself is not a positive any more: IoU 0.5 < ... )
    rrois = torch.tensor([[50.0, 50.0, 60.0, 20.0, PI / 4 + 0.05], [50.0, 50.0, 60.0, 20.0, -PI / 4]])
    boxes, labels, targets, is_gt = head._sample_stage(1, rrois, gt, torch.tensor([2]))
    assert labels.tolist() == [2, 2, 3] and is_gt.tolist() == [True, False]
    # DeltaXYWHAOBBoxCoder with stds (0.05, 0.05, 0.1, 0.1, 0.5): the second positive differs by -0.05 rad only
    torch.testing.assert_close(targets[1], torch.tensor([0.0, 0.0, 0.0, 0.0, -0.05 / 0.5]), atol=1e-5, rtol=0)


# ---- the whole detector -------------------------------------------------------------------------------------
def _scene(seed=0, size=96):
    """A flat image with two bright rotated rectangles of two classes, and their le90 boxes."""
    g = torch.Generator().manual_seed(seed)
    img = torch.full((3, size, size), 60.0) + torch.rand(3, size, size, generator=g) * 10
    boxes = torch.tensor([[30.0, 34.0, 40.0, 16.0, 0.5], [66.0, 64.0, 36.0, 24.0, -0.9]])
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for (cx, cy, w, h, t), color in zip(boxes.tolist(), ([250.0, 40, 40], [40.0, 230, 250])):
        u = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)
        v = -(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
        inside = (u.abs() <= w / 2) & (v.abs() <= h / 2)
        img[:, inside] = torch.tensor(color)[:, None]
    return img, {"rboxes": boxes, "labels": torch.tensor([0, 1])}


def test_train_losses_finite_and_decreasing_and_eval_results():
    torch.manual_seed(0)
    head = {
        "rpn_allowed_border": -1,
        "rpn_train_proposals": {"nms_pre": 300, "max_per_img": 100},
        "rpn_test_proposals": {"nms_pre": 300, "max_per_img": 50},
        "train_cfg": {"num_samples": 64},
        "fc_channels": 128,
    }
    model = build_roi_transformer("lsknet_t", num_classes=2, drop_path_rate=0.0, proj_drop_rate=0.0,
                                  fpn_channels=64, head=head)  # fmt: skip
    img, target = _scene()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    model.train()
    totals = []
    for _ in range(8):
        losses = model([img], [target])
        assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls_s0", "loss_bbox_s0", "loss_cls_s1", "loss_bbox_s1"} <= set(
            losses
        )
        total = sum(v for k, v in losses.items() if k.startswith("loss"))
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        assert model.roi_head.bbox_head[1].fc_reg.weight.grad.abs().sum() > 0
        opt.step()
        totals.append(float(total.detach()))
    assert sum(totals[-2:]) < 0.8 * sum(totals[:2]), totals
    model.eval()
    with torch.no_grad():
        results = model([img, torch.rand(3, 40, 70) * 255])
    for r in results:
        n = r["scores"].shape[0]
        assert r["rboxes"].shape == (n, 5) and r["labels"].dtype == torch.long and bool((r["labels"] < 2).all())
        if n:
            assert bool((r["rboxes"][:, 2] >= r["rboxes"][:, 3]).all())
            assert bool((r["rboxes"][:, 4] >= -PI / 2).all()) and bool((r["rboxes"][:, 4] < PI / 2).all())
