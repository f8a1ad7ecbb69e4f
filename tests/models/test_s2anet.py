"""S2A-Net: official structure (parameter totals, strict loading of the official key layout), training losses, and
the test path against an independent re-derivation of MMRotate 0.3.4's ``S2ANet.simple_test`` (anchor refinement
decode, ODM decode, per-level top-k, class-wise rotated NMS with shapely overlaps, le135 -> le90)."""

from __future__ import annotations

import math

import pytest
import torch
from shapely.geometry import Polygon

from lsknet.errors import CheckpointError
from lsknet.models.oriented_rcnn import build_oriented_rcnn
from lsknet.models.s2anet import build_s2anet

# Totals counted from the official config lsk_{t,s}_s2anet_fpn_1x_dota.py and MMRotate 0.3.4's module definitions
# (15 classes, 256 channels; a 3x3 conv C_in -> C_out has 9 * C_in * C_out + C_out parameters):
#   backbone      LSKNet-T 3,990,190 / LSKNet-S 13,840,892 (the official backbones, see test_oriented_rcnn)
#   neck          FPN start_level=1, add_extra_convs='on_input': laterals 1x1 from the stages 2..4
#                 (T: 64, 160, 256 -> 123,648; S: 128, 320, 512 -> 246,528), 3 output convs 3 * 590,080, extra
#                 conv on the last stage (T 256 -> 590,080; S 512 -> 1,179,904) and one on that output 590,080
#                 -> T 3,074,048, S 3,786,752
#   fam_head      RotatedRetinaHead, 2 stacked convs per tower: 4 * 590,080 + retina_cls (256 -> 15) 34,575
#                 + retina_reg (256 -> 5) 11,525 = 2,406,420
#   align_conv    5 levels x DeformConv2d 256 -> 256 3x3 without bias: 5 * 589,824 = 2,949,120
#   odm_head      ORConv2d weight (32, 256, 1, 3, 3) 73,728 + bias 256; cls_convs 32 -> 256 73,984 and
#                 256 -> 256 590,080; reg_convs 2 * 590,080; odm_cls 34,575; odm_reg 11,525 = 1,964,308
OFFICIAL_TOTALS = {
    "lsknet_t": 3_990_190 + 3_074_048 + 2_406_420 + 2_949_120 + 1_964_308,  # 14,384,086
    "lsknet_s": 13_840_892 + 3_786_752 + 2_406_420 + 2_949_120 + 1_964_308,  # 24,947,492
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("variant", ["lsknet_t", "lsknet_s"])
def test_parameter_totals_are_official(variant):
    model = build_s2anet(variant, num_classes=15)
    assert _count(model) == OFFICIAL_TOTALS[variant]
    assert OFFICIAL_TOTALS == {"lsknet_t": 14_384_086, "lsknet_s": 24_947_492}


def _official_head_layout(last_stage: int, lateral_in: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the S2A-Net parts after the backbone, written from the official modules (mmdet FPN,
    RotatedRetinaHead, AlignConvModule, ODMRefineHead with ORConv2d and its persistent ``indices`` buffer)."""
    c = 256
    keys: dict[str, tuple[int, ...]] = {}
    for i, cin in enumerate(lateral_in):
        keys[f"neck.lateral_convs.{i}.conv.weight"] = (c, cin, 1, 1)
        keys[f"neck.lateral_convs.{i}.conv.bias"] = (c,)
    for i in range(5):
        cin = last_stage if i == 3 else c
        keys[f"neck.fpn_convs.{i}.conv.weight"] = (c, cin, 3, 3)
        keys[f"neck.fpn_convs.{i}.conv.bias"] = (c,)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(2):
            keys[f"fam_head.{tower}.{i}.conv.weight"] = (c, c, 3, 3)
            keys[f"fam_head.{tower}.{i}.conv.bias"] = (c,)
    keys.update({"fam_head.retina_cls.weight": (15, c, 3, 3), "fam_head.retina_cls.bias": (15,)})
    keys.update({"fam_head.retina_reg.weight": (5, c, 3, 3), "fam_head.retina_reg.bias": (5,)})
    for i in range(5):
        keys[f"align_conv.ac.{i}.deform_conv.weight"] = (c, c, 3, 3)
    keys["odm_head.or_conv.weight"] = (32, c, 1, 3, 3)
    keys["odm_head.or_conv.bias"] = (c,)
    keys["odm_head.or_conv.indices"] = (1, 3, 3, 8)
    keys.update({"odm_head.cls_convs.0.conv.weight": (c, 32, 3, 3), "odm_head.cls_convs.0.conv.bias": (c,)})
    keys.update({"odm_head.cls_convs.1.conv.weight": (c, c, 3, 3), "odm_head.cls_convs.1.conv.bias": (c,)})
    for i in range(2):
        keys[f"odm_head.reg_convs.{i}.conv.weight"] = (c, c, 3, 3)
        keys[f"odm_head.reg_convs.{i}.conv.bias"] = (c,)
    keys.update({"odm_head.odm_cls.weight": (15, c, 3, 3), "odm_head.odm_cls.bias": (15,)})
    keys.update({"odm_head.odm_reg.weight": (5, c, 3, 3), "odm_head.odm_reg.bias": (5,)})
    return keys


# MMCV's ORConv2d.indices for arf_config (1, 8), 3x3: rotation k moves tap j (row-major, 1-based) to entry [j][k]
# (the official kernel_indices table read by rotation angle 0, 45, ..., 315)
_OFFICIAL_ARF_TABLE = [
    (1, 2, 3, 4, 5, 6, 7, 8, 9), (2, 3, 6, 1, 5, 9, 4, 7, 8), (3, 6, 9, 2, 5, 8, 1, 4, 7), (6, 9, 8, 3, 5, 7, 2, 1, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1), (8, 7, 4, 9, 5, 1, 6, 3, 2), (7, 4, 1, 8, 5, 2, 9, 6, 3), (4, 1, 2, 7, 5, 3, 8, 9, 6),
]  # fmt: skip


def test_official_key_layout_loads_strictly(tmp_path):
    model = build_s2anet("lsknet_t", num_classes=15)
    backbone = {k: tuple(v.shape) for k, v in build_oriented_rcnn("lsknet_t").state_dict().items()
                if k.startswith("backbone.")}  # fmt: skip
    layout = {**backbone, **_official_head_layout(256, (64, 160, 256))}
    gen = torch.Generator().manual_seed(3)
    state = {}
    for key, shape in layout.items():
        if key.endswith("indices"):
            table = torch.tensor(_OFFICIAL_ARF_TABLE, dtype=torch.int32).t().contiguous()  # (taps, rotations)
            state[key] = table.view(1, 3, 3, 8)
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        else:
            state[key] = torch.randn(shape, generator=gen)
    state["ema_odm_head_odm_cls_weight"] = torch.zeros(1)  # EMA-hook buffers are ignored
    path = tmp_path / "lsk_t_s2anet_fpn_1x_dota.pth"
    torch.save({"meta": {"CLASSES": ["c"] * 15}, "state_dict": state}, path)
    loaded = build_s2anet("lsknet_t", num_classes=15, checkpoint=path).state_dict()
    assert {k: tuple(v.shape) for k, v in loaded.items()} == layout
    for key in ("odm_head.or_conv.weight", "align_conv.ac.4.deform_conv.weight", "neck.fpn_convs.3.conv.weight",
                "fam_head.retina_reg.bias", "backbone.block3.4.attn.spatial_gating_unit.conv1.weight"):  # fmt: skip
        assert torch.equal(loaded[key], state[key])
    assert torch.equal(loaded["odm_head.or_conv.indices"], model.state_dict()["odm_head.or_conv.indices"])
    with pytest.raises(CheckpointError, match="15 classes.*3"):
        build_s2anet("lsknet_t", num_classes=3, checkpoint=path)
    state.pop("align_conv.ac.2.deform_conv.weight")
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="align_conv.ac.2"):
        build_s2anet("lsknet_t", num_classes=15, checkpoint=path)


def test_lsknet_s_layout_has_the_wider_lateral_and_extra_convs():
    sd = build_s2anet("s", num_classes=15).state_dict()
    layout = _official_head_layout(512, (128, 320, 512))
    assert {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("backbone.")} == layout


@pytest.fixture(scope="module")
def small_model():
    """A quick S2A-Net (timm resnet18 backbone, 32 channels) with random heads that produce detections."""
    torch.manual_seed(0)
    model = build_s2anet("resnet18", num_classes=3, fpn_channels=32, head={"test_cfg": {"nms_pre": 40}})
    with torch.no_grad():
        for conv in (model.fam_head.retina_reg, model.odm_head.odm_reg):
            conv.weight.normal_(std=0.05)
            conv.bias.normal_(std=0.3)
        model.odm_head.odm_cls.bias.normal_(std=1.0)
        model.odm_head.odm_cls.weight.normal_(std=0.05)
    return model


def _targets():
    return [
        {"rboxes": torch.tensor([[40.0, 30.0, 30.0, 12.0, 0.3], [70.0, 50.0, 24.0, 24.0, -1.2]]),
         "labels": torch.tensor([0, 2])},
        {"rboxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)},
    ]  # fmt: skip


def test_training_losses_are_finite_and_reach_both_heads(small_model):
    small_model.train()
    images = [torch.rand(3, 96, 128) * 255, torch.rand(3, 64, 80) * 255]
    losses = small_model(images, _targets())
    assert set(losses) == {"loss_fam_cls", "loss_fam_bbox", "loss_odm_cls", "loss_odm_bbox"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    small_model.zero_grad()
    sum(losses.values()).backward()
    for part in ("fam_head.retina_reg", "fam_head.retina_cls", "odm_head.or_conv", "odm_head.odm_reg",
                 "align_conv.ac.0.deform_conv", "neck.fpn_convs.3.conv"):  # fmt: skip
        grad = small_model.get_submodule(part).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, part
    small_model.eval()


# ---- independent re-derivation of the official test path --------------------------------------------------


def _decode_le135(anchors: torch.Tensor, deltas: torch.Tensor, max_shape=None) -> torch.Tensor:
    """MMRotate delta2bbox with the S2A-Net coder (means 0, stds 1, norm_factor 1, proj_xy, no edge swap, le135)."""
    px, py, pw, ph, pa = anchors.double().unbind(1)
    dx, dy, dw, dh, da = deltas.double().unbind(1)
    clip = abs(math.log(16 / 1000))
    gw, gh = pw * dw.clamp(-clip, clip).exp(), ph * dh.clamp(-clip, clip).exp()
    gx = dx * pw * torch.cos(pa) - dy * ph * torch.sin(pa) + px
    gy = dx * pw * torch.sin(pa) + dy * ph * torch.cos(pa) + py
    ga = torch.remainder(pa + da * math.pi + math.pi / 4, math.pi) - math.pi / 4
    if max_shape is not None:
        gx, gy = gx.clamp(0, max_shape[1] - 1), gy.clamp(0, max_shape[0] - 1)
    return torch.stack([gx, gy, gw, gh, ga], 1)


def _polygon(b) -> Polygon:
    cx, cy, w, h, t = (float(v) for v in b)
    c, s = math.cos(t), math.sin(t)
    return Polygon([(cx + u * c - v * s, cy + u * s + v * c) for u, v in
                    ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))])  # fmt: skip


def _official_test(cls_maps, reg_maps, rois, size, nms_pre, score_thr=0.05, iou_thr=0.1, max_num=2000):
    """get_bboxes + multiclass_nms_rotated, written from the official code, with a greedy shapely NMS."""
    boxes, scores = [], []
    for cls, reg, anc in zip(cls_maps, reg_maps, rois):
        s = cls.permute(1, 2, 0).reshape(-1, cls.shape[0]).double().sigmoid()
        d = reg.permute(1, 2, 0).reshape(-1, 5)
        if s.shape[0] > nms_pre:
            keep = s.max(1).values.topk(nms_pre).indices
            s, d, anc = s[keep], d[keep], anc[keep]
        boxes.append(_decode_le135(anc, d, size))
        scores.append(s)
    boxes, scores = torch.cat(boxes), torch.cat(scores)
    cands = [(float(scores[i, c]), i, c) for i in range(len(boxes)) for c in range(scores.shape[1])
             if scores[i, c] > score_thr]  # fmt: skip
    cands.sort(key=lambda t: -t[0])
    kept = []
    for score, i, c in cands:
        poly = _polygon(boxes[i])
        if all(k[2] != c or poly.intersection(k[3]).area / poly.union(k[3]).area <= iou_thr for k in kept):
            kept.append((score, i, c, poly))
    kept = kept[:max_num]
    out = []
    for score, i, c, _ in kept:  # le135 -> le90: long side first, angle in [-pi/2, pi/2)
        cx, cy, w, h, t = boxes[i].tolist()
        if w < h:
            w, h, t = h, w, t + math.pi / 2
        out.append([cx, cy, w, h, (t + math.pi / 2) % math.pi - math.pi / 2, score, c])
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 7)


def test_inference_equals_the_official_test_path(small_model):
    model = small_model.eval()
    image = torch.rand(3, 100, 120) * 255
    result = model([image])[0]
    with torch.no_grad():
        batch, sizes = model.preprocess([image])
        feats = model.extract_feats(batch)
        fam_cls, fam_reg = model.fam_head(feats)
        # FAM refinement from the official anchors: square side 4 * stride at (j * stride, i * stride), angle 0
        rois = []
        for reg, stride in zip(fam_reg, (8, 16, 32, 64, 128)):
            h, w = reg.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            anchors = torch.stack([xs.flatten() * stride, ys.flatten() * stride, torch.full((h * w,), 4.0 * stride),
                                   torch.full((h * w,), 4.0 * stride), torch.zeros(h * w)], 1)  # fmt: skip
            rois.append(_decode_le135(anchors, reg[0].permute(1, 2, 0).reshape(-1, 5)))
        model_rois = model.fam_head.refine_bboxes(fam_cls, fam_reg)[0]
        for mine, theirs in zip(rois, model_rois):
            assert torch.allclose(mine, theirs.double(), atol=1e-3)
        odm_cls, odm_reg = model.odm_head(model.align_conv(feats, [r[None] for r in model_rois]))
    expected = _official_test([c[0] for c in odm_cls], [r[0] for r in odm_reg], [r.double() for r in model_rois],
                              sizes[0], nms_pre=40)  # fmt: skip
    assert len(expected) > 5
    got = torch.cat([result["rboxes"], result["scores"][:, None], result["labels"][:, None].float()], 1).double()
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-3), (got - expected).abs().max()


def test_eval_returns_le90_boxes_inside_the_image(small_model):
    model = small_model.eval()
    results = model([torch.rand(3, 70, 90) * 255, torch.rand(3, 64, 64) * 255])
    for res, (h, w) in zip(results, [(70, 90), (64, 64)]):
        assert res["rboxes"].shape[1] == 5 and res["labels"].dtype == torch.int64
        assert (res["rboxes"][:, 2] >= res["rboxes"][:, 3]).all()
        assert (res["rboxes"][:, 4] >= -math.pi / 2).all() and (res["rboxes"][:, 4] < math.pi / 2).all()
        assert (res["rboxes"][:, 0] <= w - 1).all() and (res["rboxes"][:, 1] <= h - 1).all()
        assert (res["scores"][:-1] >= res["scores"][1:]).all()


def test_optimize_for_inference_keeps_the_detections():
    """The inference copy (channels-last heads) handles ORConv's 5-D weight and gives the same detections (heads
    with larger random weights, so that scores differ between positions and NMS has no ties to break)."""
    from lsknet.inference.optimize import optimize_for_inference
    from lsknet.models.s2anet_parts import ORConv2d

    torch.manual_seed(1)
    model = build_s2anet("resnet10t", num_classes=2, fpn_channels=32).eval()
    with torch.no_grad():
        for m in [*model.fam_head.modules(), *model.odm_head.modules()]:
            if isinstance(m, (torch.nn.Conv2d, ORConv2d)):
                m.weight.normal_(std=0.15)
        model.odm_head.odm_cls.bias.zero_()
    image = [torch.rand(3, 90, 110) * 255]
    eager = model(image)[0]
    fast = optimize_for_inference(model)(image)[0]
    assert len(eager["scores"]) == len(fast["scores"]) > 3
    assert len(eager["scores"].unique()) == len(eager["scores"])
    assert torch.allclose(eager["scores"], fast["scores"], atol=1e-5)
    assert torch.equal(eager["labels"], fast["labels"])
    from lsknet.ops import rbox_iou  # same rectangles (a near-square box may flip its le90 long side by rounding)

    assert (rbox_iou(eager["rboxes"].double(), fast["rboxes"].double(), aligned=True) > 0.99).all()
