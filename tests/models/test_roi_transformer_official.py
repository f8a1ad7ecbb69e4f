"""RoI Transformer inference == an independent re-derivation of MMRotate 0.3.4's test path.

Written from reading the official code: ``RotatedRPNHead._get_bboxes_single`` (top 2000 per level by sorted
sigmoid score, mmdet ``delta2bbox`` with ``max_shape`` clipping, mmcv ``batched_nms`` per level at 0.7),
``RoITransRoIHead.simple_test`` (``bbox2roi``, stage 0 ``regress_by_class`` through ``DeltaXYWHAHBBoxCoder.decode``,
stage 1 on the rotated RoIs, class logits of the two stages summed and divided by 2, then ``get_bboxes`` of the last
stage: softmax, ``DeltaXYWHAOBBoxCoder.decode`` per class with ``max_shape``, ``multiclass_nms_rotated``) and
mmdet's ``SingleRoIExtractor`` level rule. It shares with lsknet only the network layers (backbone, FPN,
convolutions, FCs), torchvision's ``roi_align``, RoIAlignRotated (tested against MMCV elsewhere) and the rotated
NMS primitive, called per class here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import nms, roi_align

from lsknet.models.oriented_rcnn import PIXEL_MEAN, PIXEL_STD
from lsknet.models.roi_transformer import build_roi_transformer
from lsknet.ops import nms_rotated

from .test_official_inference import PI, _image, assert_same_detections, ref_anchors, ref_norm_angle


# ---- the re-derivation (anchors, le90 angle wrap and the comparison are Oriented R-CNN's, same official code) ----
def ref_delta2hbox(rois, deltas, max_shape, clip=16 / 1000):
    """mmdet delta2bbox, stds 1, clip_border: x to [0, W], y to [0, H]."""
    px, py = (rois[:, 0] + rois[:, 2]) * 0.5, (rois[:, 1] + rois[:, 3]) * 0.5
    pw, ph = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    mr = abs(math.log(clip))
    dw, dh = deltas[:, 2].clamp(min=-mr, max=mr), deltas[:, 3].clamp(min=-mr, max=mr)
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * deltas[:, 0], py + ph * deltas[:, 1]
    b = torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], -1)
    h, w = max_shape
    b[:, 0::2] = b[:, 0::2].clamp(min=0, max=w)
    b[:, 1::2] = b[:, 1::2].clamp(min=0, max=h)
    return b


def ref_rpn(logits, deltas, anchors, max_shape, nms_pre=2000, iou=0.7, max_per_img=2000):
    scores, dls, ans, ids = [], [], [], []
    for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
        s = lg[0].permute(1, 2, 0).reshape(-1).sigmoid()
        d = dl[0].permute(1, 2, 0).reshape(-1, 4)
        if nms_pre > 0 and s.shape[0] > nms_pre:
            ranked, inds = s.sort(descending=True)
            s, d, an = ranked[:nms_pre], d[inds[:nms_pre]], an[inds[:nms_pre]]
        scores.append(s)
        dls.append(d)
        ans.append(an)
        ids.append(torch.full((s.shape[0],), lvl, dtype=torch.long))
    s, ids = torch.cat(scores), torch.cat(ids)
    props = ref_delta2hbox(torch.cat(ans), torch.cat(dls), max_shape)
    keep = []
    for lvl in ids.unique():  # levels never suppress each other
        idx = torch.nonzero(ids == lvl).flatten()
        keep.append(idx[nms(props[idx], s[idx], iou)])
    keep = torch.cat(keep)
    keep = keep[s[keep].sort(descending=True).indices]
    return torch.cat([props, s[:, None]], 1)[keep][:max_per_img]


def ref_hroi_feats(feats, rois, strides=(4, 8, 16, 32)):
    """mmdet SingleRoIExtractor + mmcv RoIAlign(7, sampling_ratio=0, aligned=True)."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    lvls = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, 3).long()
    out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], 7, 7)
    for lvl in range(4):
        idx = torch.nonzero(lvls == lvl).flatten()
        if idx.numel():
            out[idx] = roi_align(feats[lvl], rois[idx], 7, 1 / strides[lvl], 0, aligned=True)
    return out


def ref_delta2rbox_from_hbox(rois, deltas, stds=(0.1, 0.1, 0.2, 0.2, 1.0), norm_factor=2.0, clip=16 / 1000):
    """DeltaXYWHAHBBoxCoder.decode, le90, edge_swap (no clamping: the official decode ignores max_shape)."""
    d = deltas * deltas.new_tensor(stds)
    dx, dy, dw, dh, da = d.unbind(1)
    da = da * (norm_factor * PI)
    px, py = (rois[:, 0] + rois[:, 2]) * 0.5, (rois[:, 1] + rois[:, 3]) * 0.5
    pw, ph = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    mr = abs(math.log(clip))
    gw, gh = pw * dw.clamp(-mr, mr).exp(), ph * dh.clamp(-mr, mr).exp()
    gx, gy = px + pw * dx, py + ph * dy
    ga = ref_norm_angle(da)
    w, h = torch.where(gw > gh, gw, gh), torch.where(gw > gh, gh, gw)
    t = ref_norm_angle(torch.where(gw > gh, ga, ga + PI / 2))
    return torch.stack([gx, gy, w, h, t], 1)


def ref_delta2rbox(rois, deltas, max_shape, stds=(0.05, 0.05, 0.1, 0.1, 0.5), clip=16 / 1000):
    """DeltaXYWHAOBBoxCoder.decode per class (deltas (N, 5C)), le90, proj_xy, edge_swap, centres clamped."""
    n = deltas.shape[0]
    d = deltas.view(n, -1, 5) * deltas.new_tensor(stds)
    dx, dy, dw, dh, da = d.unbind(-1)
    px, py, pw, ph, pa = (v[:, None] for v in rois.unbind(1))
    mr = abs(math.log(clip))
    gw, gh = pw * dw.clamp(-mr, mr).exp(), ph * dh.clamp(-mr, mr).exp()
    gx = dx * pw * torch.cos(pa) - dy * ph * torch.sin(pa) + px
    gy = dx * pw * torch.sin(pa) + dy * ph * torch.cos(pa) + py
    ga = ref_norm_angle(pa + da)
    gx, gy = gx.clamp(min=0, max=max_shape[1] - 1), gy.clamp(min=0, max=max_shape[0] - 1)
    w, h = torch.where(gw > gh, gw, gh), torch.where(gw > gh, gh, gw)
    t = ref_norm_angle(torch.where(gw > gh, ga, ga + PI / 2))
    return torch.stack([gx, gy, w, h, t], -1)  # (N, C, 5)


def ref_multiclass_nms(boxes, probs, score_thr=0.05, iou=0.1, max_num=2000):
    """multiclass_nms_rotated with per-class boxes (N, C, 5); classes kept apart by running NMS per class."""
    num_classes = probs.shape[1] - 1
    scores = probs[:, :-1].reshape(-1)
    labels = torch.arange(num_classes).repeat(probs.shape[0])
    boxes = boxes.reshape(-1, 5)
    ok = scores > score_thr
    boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    keep = []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[nms_rotated(boxes[idx], scores[idx], iou)])
    keep = torch.cat(keep) if keep else labels[:0]
    keep = keep[scores[keep].sort(descending=True, stable=True).indices][:max_num]
    return boxes[keep], scores[keep], labels[keep]


@torch.no_grad()
def ref_simple_test(model, image, rpn_cfg):
    """One image, batch 1: normalise, pad to a multiple of 32, the official two-stage test path."""
    h, w = image.shape[1:]
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    x = F.pad((image - mean) / std, (0, pw - w, 0, ph - h))[None]
    feats = model.extract_feats(x)
    # RotatedRPNHead.forward_single: relu(3x3 conv) -> 1x1 cls / 1x1 reg
    logits, deltas = [], []
    for f in feats:
        t = F.relu(F.conv2d(f, model.rpn_head.rpn_conv.weight, model.rpn_head.rpn_conv.bias, padding=1))
        logits.append(F.conv2d(t, model.rpn_head.rpn_cls.weight, model.rpn_head.rpn_cls.bias))
        deltas.append(F.conv2d(t, model.rpn_head.rpn_reg.weight, model.rpn_head.rpn_reg.bias))
    props = ref_rpn(logits, deltas, ref_anchors([f.shape[-2:] for f in feats]), (h, w), **rpn_cfg)
    rois = torch.cat([props.new_zeros(props.shape[0], 1), props[:, :4]], 1)

    def shared2fc(head, roi_feats):
        t = roi_feats.flatten(1)
        for fc in head.shared_fcs:
            t = F.relu(F.linear(t, fc.weight, fc.bias))
        return F.linear(t, head.fc_cls.weight, head.fc_cls.bias), F.linear(t, head.fc_reg.weight, head.fc_reg.bias)

    heads = model.roi_head.bbox_head
    cls0, reg0 = shared2fc(heads[0], ref_hroi_feats(feats, rois))
    rrois = torch.cat([rois[:, :1], ref_delta2rbox_from_hbox(rois[:, 1:], reg0)], 1)
    cls1, reg1 = shared2fc(heads[1], model.roi_head.bbox_roi_extractor[1](feats, rrois))
    cls = sum([cls0, cls1]) / 2.0
    boxes = ref_delta2rbox(rrois[:, 1:], reg1, (h, w))
    return ref_multiclass_nms(boxes, F.softmax(cls, dim=-1)), props, rrois


RPN_TEST = {"nms_pre": 300, "max_per_img": 200}  # fewer than the official 2000 / 2000 to keep the test fast


@pytest.fixture(scope="module")
def wild_detector():
    """Random weights with large regression outputs: proposals clipped at the image border, rotated RoIs at all
    angles (both edge-swap branches), final centres clamped into the image."""
    torch.manual_seed(0)
    head = {"rpn_test_proposals": RPN_TEST}
    model = build_roi_transformer("lsknet_t", num_classes=4, head=head).eval()
    with torch.no_grad():
        model.rpn_head.rpn_reg.weight.normal_(0, 0.05)
        for stage in model.roi_head.bbox_head:
            stage.fc_reg.weight.normal_(0, 0.05)
            stage.fc_cls.weight.normal_(0, 0.05)
    return model


def test_detector_equals_official_rederivation(wild_detector):
    images = [_image(120, 150, 1), _image(70, 64, 2)]
    got = wild_detector(images)
    for img, res in zip(images, got):
        (boxes, scores, labels), props, rrois = ref_simple_test(wild_detector, img, RPN_TEST)
        h, w = img.shape[1:]
        # the cases this test is about: proposals clipped to the unpadded image, rotated RoIs of both edge-swap
        # branches and all angle signs, final centres clamped, several classes, enough detections
        assert int(((props[:, 2] == w) | (props[:, 3] == h)).sum()) > 0
        assert int((rrois[:, 5] > 0.3).sum()) > 0 and int((rrois[:, 5] < -0.3).sum()) > 0
        c = boxes[:, :2]
        assert int(((c[:, 0] == 0) | (c[:, 0] == w - 1) | (c[:, 1] == 0) | (c[:, 1] == h - 1)).sum()) > 0
        assert len(labels.unique()) > 1 and len(scores) > 20
        assert_same_detections(res, (boxes, scores, labels))


def test_proposals_and_rotated_rois_equal_the_rederivation(wild_detector):
    """The intermediate stages on their own: horizontal proposals float for float, rotated RoIs to rounding."""
    img = _image(96, 130, 3)
    _, props, rrois = ref_simple_test(wild_detector, img, RPN_TEST)
    with torch.no_grad():
        batch, sizes = wild_detector.preprocess([img])
        feats = wild_detector.extract_feats(batch)
        got = wild_detector.rpn_head.propose(feats, sizes)[0][0]
        assert got.shape == props.shape == (RPN_TEST["max_per_img"], 5)
        torch.testing.assert_close(got, props, atol=1e-4, rtol=0)
        head = wild_detector.roi_head
        rois = torch.cat([got.new_zeros(got.shape[0], 1), got[:, :4]], 1)
        _, deltas = head._stage_forward(0, feats, rois)
        mine = head.hbox_coder.decode(rois[:, 1:], deltas)
    torch.testing.assert_close(mine, rrois[:, 1:], atol=1e-3, rtol=0)
