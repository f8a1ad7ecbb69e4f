"""Oriented R-CNN inference == an independent re-derivation of MMRotate 0.3.4's test path.

The re-derivation below was written from reading the official code (``OrientedRPNHead._get_bboxes_single``,
``MidpointOffsetCoder.delta2bbox`` + ``poly2obb_le90``, ``obb2xyxy_le90``, mmcv ``batched_nms``,
``RotatedBBoxHead.get_bboxes`` + ``DeltaXYWHAOBBoxCoder.delta2bbox`` with ``max_shape``,
``multiclass_nms_rotated``, mmdet's ``Pad(size_divisor=32)`` of each test image on its own). It shares with lsknet
only the network layers (backbone, FPN, convolutions, RoIAlignRotated, FCs), whose equality with the official
ones is tested elsewhere, and the rotated NMS primitive, called per class here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from lsknet.models.oriented_rcnn import PIXEL_MEAN, PIXEL_STD, build_oriented_rcnn
from lsknet.models.roi_head import OrientedRoIHead, RoITestConfig
from lsknet.models.rpn import OrientedRPNHead, ProposalConfig
from lsknet.ops import nms_rotated

PI = math.pi


# ---- the re-derivation -----------------------------------------------------------------------------------
def ref_anchors(featmap_sizes, strides=(4, 8, 16, 32, 64), ratios=(0.5, 1.0, 2.0), scale=8.0):
    """mmdet AnchorGenerator: base anchors around (0, 0) (ratio-major, w = stride * scale / sqrt(ratio)), shifted
    to every location row by row."""
    out = []
    for (fh, fw), stride in zip(featmap_sizes, strides):
        base = []
        for r in ratios:
            hr = math.sqrt(r)
            w, h = stride * (1 / hr) * scale, stride * hr * scale
            base.append([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h])
        base = torch.tensor(base, dtype=torch.float32)
        sx = torch.arange(fw, dtype=torch.float32) * stride
        sy = torch.arange(fh, dtype=torch.float32) * stride
        xx, yy = sx.repeat(fh), sy.view(-1, 1).repeat(1, fw).view(-1)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1)
        out.append((base[None, :, :] + shifts[:, None, :]).view(-1, 4))
    return out


def ref_norm_angle(a):
    return (a + PI / 2) % PI - PI / 2


def ref_midpoint_decode(rois, deltas, stds=(1.0, 1.0, 1.0, 1.0, 0.5, 0.5), clip=16 / 1000):
    d = deltas * deltas.new_tensor(stds)
    dx, dy, dw, dh, da, db = (d[:, i : i + 1] for i in range(6))
    mr = abs(math.log(clip))
    dw, dh = dw.clamp(-mr, mr), dh.clamp(-mr, mr)
    px = ((rois[:, 0] + rois[:, 2]) * 0.5).unsqueeze(1)
    py = ((rois[:, 1] + rois[:, 3]) * 0.5).unsqueeze(1)
    pw = (rois[:, 2] - rois[:, 0]).unsqueeze(1)
    ph = (rois[:, 3] - rois[:, 1]).unsqueeze(1)
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    x1, y1, x2, y2 = gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5
    da, db = da.clamp(-0.5, 0.5), db.clamp(-0.5, 0.5)
    ga, _ga, gb, _gb = gx + da * gw, gx - da * gw, gy + db * gh, gy - db * gh
    polys = torch.stack([ga, y1, x2, gb, _ga, y2, x1, _gb], dim=-1)  # (N, 1, 8)
    center = torch.stack([gx, gy, gx, gy, gx, gy, gx, gy], dim=-1)
    cp = polys - center
    diag = torch.sqrt(cp[..., 0::2] * cp[..., 0::2] + cp[..., 1::2] * cp[..., 1::2])
    cp = cp * (diag.max(dim=-1, keepdim=True).values / diag).repeat_interleave(2, dim=-1)
    p = (cp + center).reshape(-1, 8)
    # poly2obb_le90
    e1 = torch.sqrt((p[:, 0] - p[:, 2]) ** 2 + (p[:, 1] - p[:, 3]) ** 2)
    e2 = torch.sqrt((p[:, 2] - p[:, 4]) ** 2 + (p[:, 3] - p[:, 5]) ** 2)
    a1 = torch.atan2(p[:, 3] - p[:, 1], p[:, 2] - p[:, 0])
    a2 = torch.atan2(p[:, 7] - p[:, 1], p[:, 6] - p[:, 0])
    ang = p.new_zeros(p.shape[0])
    ang[e1 > e2] = a1[e1 > e2]
    ang[e1 <= e2] = a2[e1 <= e2]
    ang = ref_norm_angle(ang)
    cx, cy = (p[:, 0] + p[:, 4]) / 2.0, (p[:, 1] + p[:, 5]) / 2.0
    return torch.stack([cx, cy, torch.maximum(e1, e2), torch.minimum(e1, e2), ang], 1)


def ref_obb2xyxy(b):
    c, s = torch.cos(b[:, 4:5]), torch.sin(b[:, 4:5])
    xb = (b[:, 2:3] / 2 * c).abs() + (b[:, 3:4] / 2 * s).abs()
    yb = (b[:, 2:3] / 2 * s).abs() + (b[:, 3:4] / 2 * c).abs()
    bias = torch.cat([xb, yb], 1)
    return torch.cat([b[:, :2] - bias, b[:, :2] + bias], 1)


def ref_rpn(logits, deltas, anchors, nms_pre=2000, iou=0.8, max_per_img=2000, min_bbox_size=0.0):
    scores, dls, ans, ids = [], [], [], []
    for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
        s = lg[0].permute(1, 2, 0).reshape(-1).sigmoid()
        d = dl[0].permute(1, 2, 0).reshape(-1, 6)
        if nms_pre > 0 and s.shape[0] > nms_pre:
            ranked, inds = s.sort(descending=True)
            s, d, an = ranked[:nms_pre], d[inds[:nms_pre]], an[inds[:nms_pre]]
        scores.append(s)
        dls.append(d)
        ans.append(an)
        ids.append(torch.full((s.shape[0],), lvl, dtype=torch.long))
    s, props, ids = torch.cat(scores), ref_midpoint_decode(torch.cat(ans), torch.cat(dls)), torch.cat(ids)
    if min_bbox_size > 0:
        ok = (props[:, 2] >= min_bbox_size) & (props[:, 3] >= min_bbox_size)
        s, props, ids = s[ok], props[ok], ids[ok]
    hbox = ref_obb2xyxy(props)
    keep = []
    for lvl in ids.unique():  # levels never suppress each other
        idx = torch.nonzero(ids == lvl).flatten()
        keep.append(idx[nms(hbox[idx], s[idx], iou)])
    keep = torch.cat(keep)
    keep = keep[s[keep].sort(descending=True).indices]
    return torch.cat([props, s[:, None]], 1)[keep][:max_per_img]


def ref_delta_decode(rois, deltas, max_shape, stds=(0.1, 0.1, 0.2, 0.2, 0.1), clip=16 / 1000, scale=(1.0, 1.0)):
    d = deltas * deltas.new_tensor(stds)
    dx, dy, dw, dh, da = d.unbind(1)
    px, py, pw, ph, pa = rois.unbind(1)
    mr = abs(math.log(clip))
    gw, gh = pw * dw.clamp(-mr, mr).exp(), ph * dh.clamp(-mr, mr).exp()
    gx = dx * pw * torch.cos(pa) - dy * ph * torch.sin(pa) + px
    gy = dx * pw * torch.sin(pa) + dy * ph * torch.cos(pa) + py
    ga = ref_norm_angle(pa + da)
    gx = gx.clamp(min=0, max=max_shape[1] - 1)
    gy = gy.clamp(min=0, max=max_shape[0] - 1)
    w, h = torch.where(gw > gh, gw, gh), torch.where(gw > gh, gh, gw)
    t = ref_norm_angle(torch.where(gw > gh, ga, ga + PI / 2))
    # rescale=True: bboxes[..., :4] / (w_scale, h_scale, w_scale, h_scale), before the NMS
    sw, sh = scale
    return torch.stack([gx / sw, gy / sh, w / sw, h / sh, t], 1)


def ref_multiclass_nms(boxes, probs, score_thr=0.05, iou=0.1, max_num=2000):
    num_classes = probs.shape[1] - 1
    scores = probs[:, :-1].reshape(-1)
    labels = torch.arange(num_classes).repeat(probs.shape[0])
    boxes = boxes[:, None].expand(-1, num_classes, 5).reshape(-1, 5)
    ok = scores > score_thr
    boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    keep = []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[nms_rotated(boxes[idx], scores[idx], iou)])
    keep = torch.cat(keep) if keep else labels[:0]
    keep = keep[scores[keep].sort(descending=True, stable=True).indices][:max_num]
    return boxes[keep], scores[keep], labels[keep]


def ref_rresize(image, img_scale):
    """Test RResize(img_scale, keep_ratio=True): mmcv rescale_size + imresize (bilinear, 8-bit result)."""
    h, w = image.shape[1:]
    factor = min(max(img_scale) / max(h, w), min(img_scale) / min(h, w))
    nw, nh = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
    out = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    return out.round().clamp(0, 255), (nw / w, nh / h)


@torch.no_grad()
def ref_simple_test(model, image, rpn_cfg=None, roi_cfg=None, img_scale=None):
    """One image, batch 1: (resize,) normalise, pad to a multiple of 32 on its own, official post-processing."""
    rpn_cfg = rpn_cfg or {}
    roi_cfg = roi_cfg or {}
    scale = (1.0, 1.0)
    if img_scale is not None:
        image, scale = ref_rresize(image, img_scale)
    h, w = image.shape[1:]
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    x = F.pad((image - mean) / std, (0, pw - w, 0, ph - h))[None]
    feats = model.extract_feats(x)
    logits, deltas = model.rpn_head(feats)
    anchors = ref_anchors([f.shape[-2:] for f in feats])
    props = ref_rpn(logits, deltas, anchors, **rpn_cfg)
    rois = torch.cat([props.new_zeros(props.shape[0], 1), props[:, :5]], 1)
    cls, reg = model.roi_head.bbox_head(model.roi_head.bbox_roi_extractor(feats, rois))
    boxes = ref_delta_decode(rois[:, 1:], reg, (h, w), scale=scale)
    return ref_multiclass_nms(boxes, F.softmax(cls, dim=-1), **roi_cfg), props


def assert_same_detections(got, ref, tol=1e-3):
    boxes, scores, labels = ref
    assert got["labels"].tolist() == labels.tolist()
    torch.testing.assert_close(got["scores"], scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(got["rboxes"][:, :4], boxes[:, :4], atol=tol, rtol=0)
    dt = (got["rboxes"][:, 4] - boxes[:, 4] + PI / 2) % PI - PI / 2  # same rectangle: angles equal mod pi
    assert dt.numel() == 0 or float(dt.abs().max()) < 1e-4


# ---- fixtures --------------------------------------------------------------------------------------------
RPN_TEST = {"nms_pre": 400, "max_per_img": 300}  # fewer than the official 2000 / 2000 to keep the test fast


@pytest.fixture(scope="module")
def wild_detector():
    """Random weights with large regression outputs: proposals that saturate the midpoint offsets (some
    degenerate, some axis-aligned at the le90 boundary) and final boxes whose centres leave the image."""
    torch.manual_seed(0)
    model = build_oriented_rcnn("lsknet_t", num_classes=4, rpn={"test_proposals": RPN_TEST}).eval()
    with torch.no_grad():
        reg = model.rpn_head.rpn_reg.weight.view(3, 6, -1)  # (anchor, delta, channel)
        reg[:, :4].normal_(0, 0.02)  # proposals near their anchors (no RoI entirely off the feature maps)
        reg[:, 4:].normal_(0, 0.5)  # midpoint offsets often clamped at +-0.5
        model.roi_head.bbox_head.fc_reg.weight.normal_(0, 0.05)
        model.roi_head.bbox_head.fc_cls.weight.normal_(0, 0.05)
    return model


def _image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g) * 255


# ---- the detector == the re-derivation ---------------------------------------------------------------------
def test_detector_equals_official_rederivation_on_mixed_batch(wild_detector):
    images = [_image(120, 150, 1), _image(70, 64, 2)]
    got = wild_detector(images)
    for img, res in zip(images, got):
        ref, props = ref_simple_test(wild_detector, img, RPN_TEST)
        # the case this test is about: proposals with h = 0, proposals at the le90 boundary, clamped centres
        assert int((props[:, 3] == 0).sum()) > 0
        assert int((props[:, 4] > PI / 2 - 1e-3).sum()) > 0
        h, w = img.shape[1:]
        c = ref[0][:, :2]
        assert int(((c[:, 0] == 0) | (c[:, 0] == w - 1) | (c[:, 1] == 0) | (c[:, 1] == h - 1)).sum()) > 0
        assert len(ref[1]) > 20
        assert_same_detections(res, ref)


def test_batch_of_mixed_sizes_equals_one_by_one(wild_detector):
    images = [_image(100, 130, 4), _image(64, 97, 5), _image(99, 129, 6)]  # 1 and 3 share a padded size
    together = wild_detector(images)
    for img, res in zip(images, together):
        alone = wild_detector([img])[0]
        assert res["labels"].tolist() == alone["labels"].tolist()
        torch.testing.assert_close(res["rboxes"], alone["rboxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(res["scores"], alone["scores"], atol=1e-5, rtol=0)


# ---- item by item, hand-derived ----------------------------------------------------------------------------
def test_roi_decode_clamps_centres_to_the_unpadded_image():
    head = OrientedRoIHead(num_classes=1, in_channels=1, featmap_strides=(4,), fc_channels=4)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.bbox_head.fc_cls.bias.copy_(torch.tensor([5.0, 0.0]))  # class 0 well above the threshold
        head.bbox_head.fc_reg.bias.copy_(torch.tensor([-10.0, 30.0, 0.0, 0.0, 0.0]))  # dx = -1, dy = +3
    feats = [torch.zeros(1, 1, 16, 16)]
    props = [torch.tensor([[5.0, 40.0, 20.0, 10.0, 0.0, 0.9]])]
    # image 50 high x 60 wide (padded to 64 x 64): centre (5 - 20, 40 + 30) -> clamped to (0, 49)
    res = head.predict(feats, props, [(50, 60)], RoITestConfig(score_thr=0.05))[0]
    assert res["rboxes"].tolist() == [[0.0, 49.0, 20.0, 10.0, 0.0]]


def test_rpn_keeps_degenerate_proposals_when_min_bbox_size_is_zero():
    head = OrientedRPNHead(in_channels=1, feat_channels=1)
    anchors = [torch.tensor([[0.0, 0.0, 20.0, 10.0], [30.0, 30.0, 50.0, 40.0]])]
    logits = [torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)]
    # da = +0.5, db = -0.5 (stds 0.5): the top vertex lands on the right one -> a segment, h = 0
    deltas = [torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).view(1, 12, 1, 1)]
    got = head.proposals(logits, deltas, anchors, [(64, 64)], ProposalConfig(nms_pre=10, max_per_img=10))[0]
    assert got.shape == (2, 6)
    # the segment from the top-left to the bottom-right corner of anchor 0: length sqrt(20^2 + 10^2)
    assert got[0, 3].item() == 0.0 and got[0, 2].item() == pytest.approx(math.hypot(20, 10), abs=1e-4)
    assert got[0, 5].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    # min_bbox_size > 0: the official filter keeps sides >= the size (anchor 1 decodes to a 20 x 10 rhombus whose
    # half-diagonals are stretched to 10: a square of side 10 * sqrt(2)); the segment is dropped
    side = 10 * math.sqrt(2)
    kept = head.proposals(logits, deltas, anchors, [(64, 64)], ProposalConfig(min_bbox_size=side - 1e-3))[0]
    assert kept.shape[0] == 1 and kept[0, 2].item() == pytest.approx(side, abs=1e-4)
    none = head.proposals(logits, deltas, anchors, [(64, 64)], ProposalConfig(min_bbox_size=side + 1e-3))[0]
    assert none.shape[0] == 0


# ---- test-time resize (item 4) -----------------------------------------------------------------------------
def test_keep_ratio_sizes_by_hand():
    from lsknet.ops import keep_ratio_size

    assert keep_ratio_size(600, 1000, 800) == (480, 800)  # HRSC: long side to 800
    assert keep_ratio_size(300, 500, (800, 800)) == (480, 800)  # small images are enlarged
    assert keep_ratio_size(2048, 2048, 1024) == (1024, 1024)  # DOTA ms rate 0.5 patch
    assert keep_ratio_size(682, 682, 1024) == (1024, 1024)  # rate 1.5: 682 * 1024 / 682 = 1024
    assert keep_ratio_size(1024, 700, (1024, 1024)) == (1024, 700)
    assert keep_ratio_size(500, 2000, (1333, 800)) == (333, 1333)  # min(1333 / 2000, 800 / 500) = 0.6665


def test_test_resize_equals_official_rresize_and_rescale(wild_detector):
    images = [_image(90, 150, 8), _image(120, 64, 9)]
    wild_detector.test_resize = 200  # both enlarged: (120, 200) and (200, 107)
    try:
        got = wild_detector(images)
    finally:
        wild_detector.test_resize = None
    for img, res in zip(images, got):
        ref, _ = ref_simple_test(wild_detector, img, RPN_TEST, img_scale=(200, 200))
        assert len(ref[1]) > 20
        assert_same_detections(res, ref)
        # boxes are in the original image's pixels: centres clamped to the resized image map back inside it
        h, w = img.shape[1:]
        assert float(res["rboxes"][:, 0].max()) <= w and float(res["rboxes"][:, 1].max()) <= h


def test_presets_carry_the_official_test_resize():
    from lsknet.config import load_config
    from lsknet.tasks.detection import OrientedDetector

    assert load_config("hrsc_lsknet_t_orcnn")["data"]["test_resize"] == 800
    assert load_config("dota_ms_lsknet_s_orcnn")["data"]["test_resize"] == 1024
    assert load_config("dota_lsknet_t_orcnn")["data"]["test_resize"] is None  # 1024 patches: no-op anyway
    cfg = load_config("hrsc_lsknet_t_orcnn")
    cfg["model"]["name"] = "resnet18"  # a light backbone: only the plumbing is checked here
    assert OrientedDetector(cfg).model.test_resize == 800


# ---- official float arithmetic of the proposal decode (item 6) ---------------------------------------------
def test_official_rounding_reproduces_mmrotate_angles_at_the_le90_boundary():
    from lsknet.ops import MidpointOffsetCoder

    g = torch.Generator().manual_seed(0)
    n = 20000
    c = torch.rand(n, 2, generator=g) * 1000
    wh = torch.stack([torch.rand(n, generator=g) * 40 + 4, torch.rand(n, generator=g) * 80 + 50], 1)  # tall
    anchors = torch.cat([c - wh / 2, c + wh / 2], 1)
    d = torch.zeros(n, 6)
    d[:, 4:] = 1.0  # da = db = +0.5: an axis-aligned rectangle with a vertical long side
    d[:, :2] = torch.randn(n, 2, generator=g) * 0.1
    ref = ref_midpoint_decode(anchors, d)
    boundary = ref[:, 4] > 0  # MMRotate writes some of them as +pi/2 - eps instead of -pi/2
    assert 10 < int(boundary.sum()) < n // 100
    official = MidpointOffsetCoder(official_rounding=True).decode(anchors, d)
    assert torch.equal(official, ref)  # float for float
    exact = MidpointOffsetCoder().decode(anchors, d)
    assert bool((exact[boundary, 4] == -PI / 2).all() | (exact[boundary, 4] < 0).all())
    assert OrientedRPNHead().bbox_coder.official_rounding  # the detector's default
