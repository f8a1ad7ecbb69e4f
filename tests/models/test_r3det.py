"""R3Det (official ``lsk_{t,s}_r3det_fpn_1x_dota`` on MMRotate 0.3.4): parameter totals, strict loading of a checkpoint
written in the official key layout, training losses, and the test path against an independent re-derivation of the
official ``R3Det.simple_test`` (filter_bboxes, FRM, refine_bboxes, get_bboxes: decoding and class-wise NMS by loops
with shapely)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lsknet.errors import CheckpointError, ConfigError
from lsknet.models.oriented_rcnn import build_oriented_rcnn
from lsknet.models.r3det import build_r3det
from lsknet.ops import regularize_rbox, rotated_feature_align
from tests.models.test_retina_head import _decode_ref, _multiclass_nms_ref, _official_head_keys

# Totals for 15 classes, counted from the official config and module definitions:
#   backbone (as Oriented R-CNN's, tested there): T 3,990,190; S 13,840,892
#     (S = 30,977,062 official Oriented R-CNN total - FPN 2,623,488 - RPN 595,477 - RoI head 13,917,205)
#   FPN start_level=1, add_extra_convs='on_input': T 3,074,048; S 3,786,752 (tests/models/test_fpn_options.py)
#   bbox_head (RotatedRetinaHead, 4 stacked convs, 9 anchors): 4,720,640 + 311,175 + 103,725 = 5,135,540
#   2 x FeatureRefineModule: conv_5_1 and conv_1_5 256*256*5 + 256 = 327,936 each, conv_1_1 65,792 -> 721,664 each
#   2 x RotatedRetinaRefineHead (1 anchor): 4,720,640 + (256*15*9 + 15) + (256*5*9 + 5) = 4,766,740 each
#   T: 3,990,190 + 3,074,048 + 5,135,540 + 1,443,328 + 9,533,480 = 23,176,586
#   S: 13,840,892 + 3,786,752 + 5,135,540 + 1,443,328 + 9,533,480 = 33,739,992
OFFICIAL_TOTALS = {"lsknet_t": 23_176_586, "lsknet_s": 33_739_992}


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def r3det_t():
    torch.manual_seed(0)
    return build_r3det("lsknet_t", num_classes=15)


@pytest.mark.parametrize("variant", ["lsknet_t", "lsknet_s"])
def test_parameter_totals_are_official(variant, r3det_t):
    model = r3det_t if variant == "lsknet_t" else build_r3det(variant)
    assert _count(model) == OFFICIAL_TOTALS[variant]
    assert [_count(m) for m in (model.bbox_head, model.feat_refine_module, model.refine_head)] == [
        5_135_540, 2 * 721_664, 2 * 4_766_740
    ]  # fmt: skip


def _official_keys(backbone_keys, in_channels, num_classes=15):
    """The key layout of the official R3Det (MMRotate R3Det.__init__ + the config), written from the definitions."""
    keys = {f"backbone.{k}": s for k, s in backbone_keys.items()}
    used = in_channels[1:]
    for i, c in enumerate(used):
        keys[f"neck.lateral_convs.{i}.conv.weight"], keys[f"neck.lateral_convs.{i}.conv.bias"] = (256, c, 1, 1), (256,)
        keys[f"neck.fpn_convs.{i}.conv.weight"], keys[f"neck.fpn_convs.{i}.conv.bias"] = (256, 256, 3, 3), (256,)
    keys["neck.fpn_convs.3.conv.weight"], keys["neck.fpn_convs.3.conv.bias"] = (256, in_channels[-1], 3, 3), (256,)
    keys["neck.fpn_convs.4.conv.weight"], keys["neck.fpn_convs.4.conv.bias"] = (256, 256, 3, 3), (256,)
    keys.update({f"bbox_head.{k}": s for k, s in _official_head_keys(4, 9, num_classes).items()})
    for i in range(2):
        for name, kernel in (("conv_5_1", (5, 1)), ("conv_1_5", (1, 5)), ("conv_1_1", (1, 1))):
            keys[f"feat_refine_module.{i}.{name}.weight"] = (256, 256, *kernel)
            keys[f"feat_refine_module.{i}.{name}.bias"] = (256,)
        keys.update({f"refine_head.{i}.{k}": s for k, s in _official_head_keys(4, 1, num_classes).items()})
    return keys


@pytest.mark.parametrize(("variant", "channels"), [("lsknet_t", [32, 64, 160, 256]), ("lsknet_s", [64, 128, 320, 512])])
def test_official_layout_loads_strictly(tmp_path, r3det_t, variant, channels):
    orcnn = build_oriented_rcnn(variant, num_classes=15)
    backbone = {k: tuple(v.shape) for k, v in orcnn.backbone.state_dict().items()}
    expected = _official_keys(backbone, channels)
    if variant == "lsknet_t":
        assert {k: tuple(v.shape) for k, v in r3det_t.state_dict().items()} == expected
    gen = torch.Generator().manual_seed(3)
    state = {k: torch.randn(s, generator=gen) for k, s in expected.items()}
    state["ema_bbox_head_retina_cls_weight"] = torch.zeros(1)  # EMA hook buffers are ignored
    path = tmp_path / f"lsk_{variant[-1]}_r3det_fpn_1x_dota.pth"
    torch.save({"meta": {"epoch": 12, "CLASSES": ["x"] * 15}, "state_dict": state}, path)
    model = build_r3det(variant, checkpoint=path)  # strict: every key present, none unexpected, shapes equal
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for key in ("backbone.block3.1.mlp.fc2.weight", "neck.fpn_convs.3.conv.weight", "bbox_head.retina_cls.bias",
                "feat_refine_module.1.conv_5_1.weight", "refine_head.1.reg_convs.3.conv.weight"):  # fmt: skip
        assert torch.equal(loaded[key], state[key])
    if variant == "lsknet_s":
        return
    # a checkpoint for another number of classes is refused, naming both
    bad = dict(state)
    for i in range(2):
        bad[f"refine_head.{i}.retina_cls.weight"] = torch.randn(5, 256, 3, 3)
        bad[f"refine_head.{i}.retina_cls.bias"] = torch.randn(5)
    torch.save({"state_dict": bad}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="5 classes.*15"):
        build_r3det("lsknet_t", checkpoint=tmp_path / "other.pth")


def test_bad_head_option_is_a_config_error():
    with pytest.raises(ConfigError, match="nonsense"):
        build_r3det("lsknet_t", head={"nonsense": 1})


def _targets():
    return [
        {"rboxes": torch.tensor([[30.0, 34.0, 36.0, 14.0, 0.5], [20.0, 16.0, 12.0, 10.0, -1.3]]),
         "labels": torch.tensor([2, 0])},
        {"rboxes": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)},
    ]  # fmt: skip


def test_train_losses_are_finite_and_reach_every_stage():
    torch.manual_seed(1)
    model = build_r3det("lsknet_t", num_classes=3, fpn_channels=32, head={"stacked_convs": 1}).train()
    images = [torch.rand(3, 64, 64) * 255, torch.rand(3, 50, 60) * 255]
    losses = model(images, _targets())
    assert set(losses) == {f"loss_{s}_{k}" for s in ("s0", "sr0", "sr1") for k in ("cls", "bbox")}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_s0_bbox"] > 0  # the first stage has positives (assigned on the horizontal envelopes)
    sum(losses.values()).backward()
    for module in (model.backbone, model.neck, model.bbox_head, model.feat_refine_module, model.refine_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


# ---- test path vs a re-derivation of R3Det.simple_test ---------------------------------------------------------


def _filter_ref(head, cls_scores, bbox_preds):
    """filter_bboxes: per location the best anchor by its best class logit, decoded (oc, no clamp)."""
    c, a = head.num_classes, head.num_anchors
    anchors = head.anchor_generator.grid_anchors([tuple(x.shape[-2:]) for x in cls_scores], torch.device("cpu"))
    out = []
    for img in range(cls_scores[0].shape[0]):
        levels = []
        for cls, reg, anc in zip(cls_scores, bbox_preds, anchors):
            h, w = cls.shape[-2:]
            boxes = []
            for i in range(h):
                for j in range(w):
                    best = [float(cls[img, k * c : (k + 1) * c, i, j].max()) for k in range(a)]
                    k = best.index(max(best))
                    delta = reg[img, k * 5 : k * 5 + 5, i, j].tolist()
                    boxes.append(_decode_ref(anc[(i * w + j) * a + k].tolist(), delta, "oc", False, None, None))
            levels.append(torch.tensor(boxes))
        out.append(levels)
    return out


def _frm_ref(frm, feats, rois):
    out = []
    for lvl, (x, stride) in enumerate(zip(feats, (8, 16, 32, 64, 128))):
        sd = {k: v for k, v in frm.state_dict().items()}
        f = F.conv2d(F.conv2d(x, sd["conv_1_5.weight"], sd["conv_1_5.bias"], padding=(0, 2)), sd["conv_5_1.weight"],
                     sd["conv_5_1.bias"], padding=(2, 0))  # fmt: skip
        f = f + F.conv2d(x, sd["conv_1_1.weight"], sd["conv_1_1.bias"])
        boxes = torch.stack([r[lvl] for r in rois]).to(x.dtype)
        out.append(x + rotated_feature_align(f, boxes, 1 / stride, points=1))
    return out


def _refine_ref(bbox_preds, rois):
    out = []
    for img, levels in enumerate(rois):
        new = []
        for reg, boxes in zip(bbox_preds, levels):
            w = reg.shape[-1]
            new.append(torch.tensor([_decode_ref(b.tolist(), reg[img, :, n // w, n % w].tolist(), "oc", False, None,
                                                 None) for n, b in enumerate(boxes)]))  # fmt: skip
        out.append(new)
    return out


def _get_bboxes_ref(cls_scores, bbox_preds, rois, img, size, cfg, num_classes):
    """RotatedRetinaRefineHead.get_bboxes for one image: nms_pre top-k per level, decode with the rois as anchors
    (centres clamped to the image), class-wise greedy rotated NMS."""
    cands = []
    for cls, reg, boxes in zip(cls_scores, bbox_preds, rois[img]):
        w = cls.shape[-1]
        entries = []
        for n, anchor in enumerate(boxes.tolist()):
            s = [1 / (1 + math.exp(-float(v))) for v in cls[img, :, n // w, n % w]]
            entries.append((max(s), s, reg[img, :, n // w, n % w].tolist(), anchor))
        if 0 < cfg.nms_pre < len(entries):
            entries = sorted(entries, key=lambda e: -e[0])[: cfg.nms_pre]
        cands += [(_decode_ref(an, d, "oc", False, None, size), s) for _, s, d, an in entries]
    return _multiclass_nms_ref(cands, cfg, num_classes)


def test_test_path_equals_rederivation():
    torch.manual_seed(5)
    model = build_r3det(
        "lsknet_t", num_classes=3, fpn_channels=16,
        head={"stacked_convs": 1, "test_cfg": {"nms_pre": 30, "score_thr": 0.3, "nms_iou": 0.1, "max_per_img": 40}},
    ).eval()  # fmt: skip
    with torch.no_grad():
        for module in (model.bbox_head, model.feat_refine_module, model.refine_head):
            for name, p in module.named_parameters():
                # moderate deltas (boxes stay image-sized) and unsaturated scores (no ties at 1.0)
                p.normal_(0, 0.01 if "retina_reg" in name else 0.03 if "retina_cls" in name else 0.1)
    image = torch.rand(3, 70, 90) * 255
    got = model([image])[0]

    batch, sizes = model.preprocess([image])
    with torch.no_grad():
        feats = model.extract_feats(batch)
        outs = model.bbox_head(feats)
        rois = _filter_ref(model.bbox_head, *outs)
        for i in range(2):
            x = _frm_ref(model.feat_refine_module[i], feats, rois)
            outs = model.refine_head[i](x)
            if i == 0:
                rois = _refine_ref(outs[1], rois)
    ref = _get_bboxes_ref(*outs, rois, 0, sizes[0], model.refine_head[-1].test_cfg, 3)
    assert len(ref) > 3
    assert got["rboxes"].shape[0] == len(ref)
    torch.testing.assert_close(got["rboxes"], regularize_rbox(torch.tensor([b for _, b, _ in ref]), "le90"),
                               rtol=1e-4, atol=2e-3)  # fmt: skip
    torch.testing.assert_close(got["scores"], torch.tensor([s for s, _, _ in ref]))
    assert got["labels"].tolist() == [lab for _, _, lab in ref]


@pytest.mark.parametrize("variant", ["t", "s"])
def test_presets_and_names_build_r3det(variant):
    from lsknet.config import load_config
    from lsknet.models.detectors import detector_from_config
    from lsknet.models.factory import create_model

    cfg = load_config(f"dota_lsknet_{variant}_r3det")
    assert cfg["model"]["name"] == f"lsknet_{variant}_r3det" and cfg["optim"]["lr"] == 2e-4
    assert cfg["data"]["batch_size"] == 2  # official 8 GPUs x 2 images for T and S
    model = detector_from_config(cfg["model"], 15)
    assert _count(model) == OFFICIAL_TOTALS[f"lsknet_{variant}"]
    if variant == "t":
        named = create_model("lsknet_t_r3det", num_classes=4, head={"test_cfg": {"score_thr": 0.2}})
        assert named.num_classes == 4 and named.refine_head[-1].test_cfg.score_thr == 0.2
