"""RotatedRetinaHead (MMRotate 0.3.4 ``RotatedRetinaHead`` / ``RotatedAnchorHead``) against independent
re-derivations written in this file from the official code: key layout and parameter totals, anchors by hand, the
test path (top-k, decoding with the official formulas, rescale, greedy class-wise NMS with shapely IoU), the
training targets and losses (max-IoU assignment by loops with shapely, focal loss and smooth-L1 by formula)."""

from __future__ import annotations

import math

import pytest
import torch
from shapely.geometry import Polygon

from lsknet.models.retina_head import RetinaTestConfig, RotatedAnchorGenerator, RotatedRetinaHead
from lsknet.ops import DeltaXYWHTCoder, rbox_to_corners, regularize_rbox


def _official_head_keys(stacked, num_anchors, num_classes, feat=256, in_ch=256):
    """Keys/shapes of RotatedRetinaHead(conv_cfg=None, norm_cfg=None) as its _init_layers builds them."""
    keys = {}
    for i in range(stacked):
        c = in_ch if i == 0 else feat
        for tower in ("cls_convs", "reg_convs"):
            keys[f"{tower}.{i}.conv.weight"] = (feat, c, 3, 3)
            keys[f"{tower}.{i}.conv.bias"] = (feat,)
    keys["retina_cls.weight"] = (num_anchors * num_classes, feat, 3, 3)
    keys["retina_cls.bias"] = (num_anchors * num_classes,)
    keys["retina_reg.weight"] = (num_anchors * 5, feat, 3, 3)
    keys["retina_reg.bias"] = (num_anchors * 5,)
    return keys


def _fam_head(**kw):
    return RotatedRetinaHead(
        stacked_convs=2,
        anchor_generator=RotatedAnchorGenerator(scales=[4], ratios=[1.0]),
        bbox_coder=DeltaXYWHTCoder((0.0,) * 5, (1.0,) * 5, "le135", norm_factor=1, edge_swap=False, proj_xy=True),
        assign_by_circumhbbox=None,
        **kw,
    )


@pytest.mark.parametrize(
    ("make", "stacked", "anchors", "total"),
    [
        # R3Det bbox_head: 2 towers x 4 convs x (256*256*9 + 256) = 4,720,640; retina_cls 256*135*9 + 135 = 311,175;
        # retina_reg 256*45*9 + 45 = 103,725; total 5,135,540
        (RotatedRetinaHead, 4, 9, 5_135_540),
        # S2A-Net fam_head: 2 towers x 2 convs x 590,080 = 2,360,320; cls 256*15*9 + 15 = 34,575; reg 256*5*9 + 5
        # = 11,525; total 2,406,420
        (_fam_head, 2, 1, 2_406_420),
    ],
)
def test_official_key_layout_and_parameter_total(make, stacked, anchors, total):
    head = make()
    expected = _official_head_keys(stacked, anchors, 15)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == expected
    assert sum(p.numel() for p in head.parameters()) == total
    head.load_state_dict({k: torch.randn(s) for k, s in expected.items()}, strict=True)


def test_official_init_prior_probability():
    head = RotatedRetinaHead(num_classes=3, in_channels=8, feat_channels=8)
    torch.testing.assert_close(torch.sigmoid(head.retina_cls.bias), torch.full((27,), 0.01))
    assert float(head.retina_reg.bias.detach().abs().max()) == 0.0


def test_anchors_by_hand():
    gen = RotatedAnchorGenerator()
    assert gen.num_anchors == 9
    a = gen.grid_anchors([(3, 4), (2, 2), (1, 1), (1, 1), (1, 1)], torch.device("cpu"))
    assert [x.shape[0] for x in a] == [3 * 4 * 9, 2 * 2 * 9, 9, 9, 9]
    # level 0 (stride 8), row 1, column 2: centre (16, 8); anchor k = ratio index * 3 + scale index
    loc = (1 * 4 + 2) * 9
    for r_i, ratio in enumerate([1.0, 0.5, 2.0]):
        for s_i in range(3):
            scale = 4 * 2 ** (s_i / 3)
            w, h = 8 * scale / math.sqrt(ratio), 8 * scale * math.sqrt(ratio)
            torch.testing.assert_close(a[0][loc + r_i * 3 + s_i], torch.tensor([16.0, 8.0, w, h, 0.0]))
    flags = gen.valid_flags([(3, 4)] * 5, (9, 17), 9, torch.device("cpu"))[0].view(3, 4, 9)
    # ceil(9 / 8) = 2 rows and ceil(17 / 8) = 3 columns are inside the image's own padded size
    assert flags[:2, :3].all() and not flags[2].any() and not flags[:, 3].any()


# ---- test path --------------------------------------------------------------------------------------------


def _decode_ref(anchor, delta, version, proj, norm_factor, max_shape):
    """delta2bbox of MMRotate's DeltaXYWHAOBBoxCoder (means 0, stds 1, edge_swap False), one box, in floats."""
    px, py, pw, ph, pa = anchor
    dx, dy, dw, dh, da = delta
    if norm_factor:
        da = da * norm_factor * math.pi
    clip = abs(math.log(16 / 1000))
    gw, gh = pw * math.exp(min(max(dw, -clip), clip)), ph * math.exp(min(max(dh, -clip), clip))
    if proj:
        gx = dx * pw * math.cos(pa) - dy * ph * math.sin(pa) + px
        gy = dx * pw * math.sin(pa) + dy * ph * math.cos(pa) + py
    else:
        gx, gy = px + pw * dx, py + ph * dy
    ga = pa + da
    if version == "le135":
        ga = (ga + math.pi / 4) % math.pi - math.pi / 4
    if max_shape is not None:
        gx, gy = min(max(gx, 0), max_shape[1] - 1), min(max(gy, 0), max_shape[0] - 1)
    return [gx, gy, gw, gh, ga]


def _poly(rb):
    return Polygon(rbox_to_corners(torch.tensor([rb], dtype=torch.float64))[0].tolist())


def _reference_test_path(head, cls_scores, bbox_preds, img, size, scale, cfg, version, proj, norm_factor):
    """get_bboxes + multiclass_nms_rotated for one image, with loops and shapely."""
    c, a = head.num_classes, head.num_anchors
    sizes = [tuple(x.shape[-2:]) for x in cls_scores]
    anchors = head.anchor_generator.grid_anchors(sizes, torch.device("cpu"))
    cands = []  # (box, scores)
    for cls, reg, anc in zip(cls_scores, bbox_preds, anchors):
        h, w = cls.shape[-2:]
        entries = []
        for i in range(h):
            for j in range(w):
                for k in range(a):
                    logits = cls[img, k * c : (k + 1) * c, i, j]
                    s = [1 / (1 + math.exp(-float(v))) for v in logits]
                    d = [float(v) for v in reg[img, k * 5 : (k + 1) * 5, i, j]]
                    entries.append((max(s), s, d, anc[(i * w + j) * a + k].tolist()))
        if 0 < cfg.nms_pre < len(entries):
            entries = sorted(entries, key=lambda e: -e[0])[: cfg.nms_pre]
        for _, s, d, an in entries:
            box = _decode_ref(an, d, version, proj, norm_factor, size)
            box = [box[0] / scale[0], box[1] / scale[1], box[2] / scale[0], box[3] / scale[1], box[4]]
            cands.append((box, s))
    return _multiclass_nms_ref(cands, cfg, c)


def _multiclass_nms_ref(cands, cfg, num_classes):
    """multiclass_nms_rotated by loops: per class, greedy NMS (shapely IoU) over (box, scores) with score > thr."""
    dets = []
    for label in range(num_classes):
        pool = sorted(((s[label], b) for b, s in cands if s[label] > cfg.score_thr), key=lambda t: -t[0])
        kept = []
        for score, box in pool:
            p = _poly(box)
            if all(p.intersection(q).area / max(p.union(q).area, 1e-12) <= cfg.nms_iou for _, _, q in kept):
                kept.append((score, box, p))
        dets += [(score, box, label) for score, box, _ in kept]
    dets.sort(key=lambda t: -t[0])
    return dets[: cfg.max_per_img]


@pytest.mark.parametrize("kind", ["r3det", "fam"])
def test_test_path_equals_rederivation(kind):
    torch.manual_seed(1)
    cfg = RetinaTestConfig(nms_pre=40, score_thr=0.3, nms_iou=0.1, max_per_img=60)
    if kind == "r3det":
        head = RotatedRetinaHead(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=2, test_cfg=cfg)
        version, proj, norm_factor = "oc", False, None
    else:
        head = _fam_head(num_classes=3, in_channels=8, feat_channels=8, test_cfg=cfg)
        version, proj, norm_factor = "le135", True, 1
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.15)
    head.eval()
    feats = [torch.randn(2, 8, 8 // 2**i or 1, 10 // 2**i or 1) for i in range(5)]
    cls_scores, bbox_preds = head(feats)
    sizes, scales = [(60, 75), (64, 80)], [(1.0, 1.0), (0.5, 0.625)]
    got = head.predict(cls_scores, bbox_preds, sizes, scale_factors=scales)
    for img in range(2):
        ref = _reference_test_path(head, cls_scores, bbox_preds, img, sizes[img], scales[img], cfg, version, proj,
                                   norm_factor)
        assert len(ref) > 5
        assert got[img]["rboxes"].shape[0] == len(ref)
        ref_boxes = regularize_rbox(torch.tensor([b for _, b, _ in ref]), "le90")
        torch.testing.assert_close(got[img]["rboxes"], ref_boxes, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(got[img]["scores"], torch.tensor([s for s, _, _ in ref]))
        assert got[img]["labels"].tolist() == [lab for _, _, lab in ref]


def test_filter_and_refine_bboxes_equal_loops():
    torch.manual_seed(2)
    head = RotatedRetinaHead(num_classes=3, in_channels=4, feat_channels=4, stacked_convs=1)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.2)
    feats = [torch.randn(2, 4, 4 // 2**i or 1, 6 // 2**i or 1) for i in range(5)]
    cls_scores, bbox_preds = head(feats)
    best = head.filter_bboxes(cls_scores, bbox_preds)
    anchors = head.anchor_generator.grid_anchors([tuple(c.shape[-2:]) for c in cls_scores], torch.device("cpu"))
    for lvl, (cls, reg, anc) in enumerate(zip(cls_scores, bbox_preds, anchors)):
        h, w = cls.shape[-2:]
        for img in range(2):
            for i in range(h):
                for j in range(w):
                    per_anchor = [float(cls[img, k * 3 : k * 3 + 3, i, j].max()) for k in range(9)]
                    k = max(range(9), key=per_anchor.__getitem__)
                    d = reg[img, k * 5 : k * 5 + 5, i, j].tolist()
                    ref = _decode_ref(anc[(i * w + j) * 9 + k].tolist(), d, "oc", False, None, None)
                    torch.testing.assert_close(best[img][lvl][i * w + j], torch.tensor(ref), rtol=1e-5, atol=1e-4)
    # refinement of given rois (R3Det refine heads, one anchor per location)
    fam = _fam_head(num_classes=3, in_channels=4, feat_channels=4)
    c2, r2 = fam(feats)
    refined = fam.refine_bboxes(c2, r2, rois=best)
    own = fam.refine_bboxes(c2, r2)
    grid = fam.anchor_generator.grid_anchors([tuple(c.shape[-2:]) for c in c2], torch.device("cpu"))
    for lvl in range(5):
        w = r2[lvl].shape[-1]
        for n in (0, 3):
            if n >= best[1][lvl].shape[0]:
                continue
            d = r2[lvl][1, :, n // w, n % w].tolist()
            ref = _decode_ref(best[1][lvl][n].tolist(), d, "le135", True, 1, None)
            torch.testing.assert_close(refined[1][lvl][n], torch.tensor(ref), rtol=1e-5, atol=1e-4)
            ref = _decode_ref(grid[lvl][n].tolist(), d, "le135", True, 1, None)
            torch.testing.assert_close(own[1][lvl][n], torch.tensor(ref), rtol=1e-5, atol=1e-4)


# ---- training targets and losses ---------------------------------------------------------------------------


def _iou(a, b):
    p, q = _poly(a), _poly(b)
    return p.intersection(q).area / p.union(q).area


def _envelope(rb):
    xs = [x for x, _ in _poly(rb).exterior.coords]
    ys = [y for _, y in _poly(rb).exterior.coords]
    return [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys), 0.0]


def _assign_ref(anchors, gts, pos_thr, neg_thr, min_pos):
    """MMDetection MaxIoUAssigner (gt_max_assign_all, match_low_quality) with loops: -1 negative, -2 ignored."""
    ious = [[_iou(g, a) for a in anchors] for g in gts]
    out = []
    for j in range(len(anchors)):
        col = [ious[g][j] for g in range(len(gts))]
        m = max(col)
        out.append(col.index(m) if m >= pos_thr else (-1 if m < neg_thr else -2))
    for g in range(len(gts)):
        gmax = max(ious[g])
        if gmax >= min_pos:
            for j in range(len(anchors)):
                if ious[g][j] == gmax:
                    out[j] = g
    return out


@pytest.mark.parametrize("circum", ["oc", None])
def test_loss_equals_rederivation(circum):
    torch.manual_seed(3)
    num_classes = 3
    gen = RotatedAnchorGenerator(strides=[8], ratios=[1.0, 0.5, 2.0], scales=[2.0, 4.0])
    coder = DeltaXYWHTCoder((0.0,) * 5, (1.0,) * 5, "oc", norm_factor=None, edge_swap=False, proj_xy=False)
    head = RotatedRetinaHead(
        num_classes, 4, 4, 1, anchor_generator=gen, bbox_coder=coder, assign_by_circumhbbox=circum
    )
    feats = [torch.randn(1, 4, 5, 6)]
    cls_scores, bbox_preds = head(feats)
    cls_scores = [c + torch.randn_like(c) for c in cls_scores]
    bbox_preds = [r + 0.3 * torch.randn_like(r) for r in bbox_preds]
    gts_le90 = torch.tensor([[17.0, 14.0, 30.0, 12.0, 0.4], [33.0, 22.0, 20.0, 18.0, -1.2]])
    labels = torch.tensor([2, 0])
    losses = head.loss(cls_scores, bbox_preds, [gts_le90], [labels])

    anchors = gen.grid_anchors([(5, 6)], torch.device("cpu"))[0].tolist()
    gts_oc = regularize_rbox(gts_le90, "oc").tolist()
    assign_gts = [_envelope(g) for g in gts_oc] if circum else gts_oc
    m = _assign_ref(anchors, assign_gts, 0.5, 0.4, 0.0)
    logits = cls_scores[0][0].permute(1, 2, 0).reshape(-1, num_classes)
    deltas = bbox_preds[0][0].permute(1, 2, 0).reshape(-1, 5)
    num_pos = max(sum(1 for x in m if x >= 0), 1)
    cls_total, reg_total = 0.0, 0.0
    for j, mj in enumerate(m):
        if mj == -2:
            continue
        for c in range(num_classes):
            t = 1.0 if mj >= 0 and int(labels[mj]) == c else 0.0
            p = 1 / (1 + math.exp(-float(logits[j, c])))
            pt = p if t else 1 - p
            alpha = 0.25 if t else 0.75
            cls_total += -alpha * (1 - pt) ** 2 * math.log(pt)
        if mj >= 0:
            px, py, pw, ph, pa = anchors[j]
            gx, gy, gw, gh, ga = gts_oc[mj]
            target = [(gx - px) / pw, (gy - py) / ph, math.log(gw / pw), math.log(gh / ph), ga - pa]
            for d, tv in zip(deltas[j].tolist(), target):
                diff = abs(d - tv)
                reg_total += 0.5 * diff * diff / 0.11 if diff < 0.11 else diff - 0.5 * 0.11
    assert sum(1 for x in m if x >= 0) >= 2
    assert losses["loss_cls"].item() == pytest.approx(cls_total / num_pos, rel=1e-4)
    assert losses["loss_bbox"].item() == pytest.approx(reg_total / num_pos, rel=1e-4)
    (losses["loss_cls"] + losses["loss_bbox"]).backward()


def test_loss_without_ground_truth_and_outside_pad_size():
    head = RotatedRetinaHead(num_classes=2, in_channels=4, feat_channels=4, stacked_convs=1)
    feats = [torch.randn(2, 4, 4 // 2**i or 1, 4 // 2**i or 1) for i in range(5)]
    cls_scores, bbox_preds = head(feats)
    empty = [torch.zeros(0, 5), torch.zeros(0, 5)]
    no_labels = [torch.zeros(0, dtype=torch.long)] * 2
    losses = head.loss(cls_scores, bbox_preds, empty, no_labels)
    assert losses["loss_bbox"].item() == 0.0 and torch.isfinite(losses["loss_cls"])
    # an image whose own padded size is smaller trains fewer anchors: a smaller focal-loss sum
    small = head.loss(cls_scores, bbox_preds, empty, no_labels, pad_sizes=[(32, 32), (8, 8)])
    assert 0 < small["loss_cls"].item() < losses["loss_cls"].item()
    losses["loss_cls"].backward()
