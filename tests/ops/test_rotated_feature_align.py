"""rotated_feature_align (R3Det's feature refinement sampling) against a direct loop written from the op's definition
(MMCV ``rotated_feature_align`` kernel: output = feature + bilinear samples at the box centre [and corners], box
column 0 read as y and column 1 as x, MMCV's border rules), MMCV's own published test case, and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from lsknet.ops import rotated_feature_align
from tests.ops.test_roi_align_rotated import bilinear_mmcv  # MMCV bilinear_interpolate, one point


def _loop(features, boxes, scale, points, swapped=True):
    bx = boxes.tolist()
    n_, _, h_, w_ = features.shape
    out = torch.zeros_like(features)
    for n in range(n_):
        for h in range(h_):
            for w in range(w_):
                b = bx[n][h][w]
                y, x = (b[0] * scale, b[1] * scale) if swapped else (b[1] * scale, b[0] * scale)
                pts = [(y, x)]
                if points == 5:
                    bw, bh, a = b[2] * scale / 2, b[3] * scale / 2, b[4]
                    # width axis (cos a, sin a), height axis (-sin a, cos a), in the (x, y) frame of the kernel
                    for sw, sh in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
                        px = x + sw * math.cos(a) * bw - sh * math.sin(a) * bh
                        py = y + sw * math.sin(a) * bw + sh * math.cos(a) * bh
                        pts.append((py, px))
                val = features[n, :, h, w].clone()
                for py, px in pts:
                    val += bilinear_mmcv(features[n], py, px)
                out[n, :, h, w] = val
    return out


def _random_case(seed, dtype=torch.float32, size=(2, 3, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = size
    feats = torch.randn(size, generator=g, dtype=dtype)
    stride = 8
    boxes = torch.empty(n, h, w, 5, dtype=dtype)
    boxes[..., 0] = torch.rand(n, h, w, generator=g, dtype=dtype) * (w + 3) * stride - 1.5 * stride
    boxes[..., 1] = torch.rand(n, h, w, generator=g, dtype=dtype) * (h + 3) * stride - 1.5 * stride
    boxes[..., 2:4] = torch.rand(n, h, w, 2, generator=g, dtype=dtype) * 60 + 2
    boxes[..., 4] = (torch.rand(n, h, w, generator=g, dtype=dtype) - 0.5) * math.pi
    return feats, boxes, 1 / stride


@pytest.mark.parametrize("points", [1, 5])
@pytest.mark.parametrize("swapped", [True, False])
def test_equals_direct_loop(points, swapped):
    feats, boxes, scale = _random_case(points + 10 * swapped, dtype=torch.float64)
    got = rotated_feature_align(feats, boxes, scale, points, xy_swapped=swapped)
    torch.testing.assert_close(got, _loop(feats, boxes, scale, points, swapped), rtol=1e-12, atol=1e-12)
    # flat (B * H * W, 5) boxes, as MMRotate's FRM passes them, mean the same
    flat = rotated_feature_align(feats, boxes.reshape(-1, 5), scale, points, xy_swapped=swapped)
    torch.testing.assert_close(flat, got)


def test_boxes_far_outside_sample_zero_and_edges_replicate():
    feats = torch.arange(12.0).view(1, 1, 3, 4)
    boxes = torch.zeros(1, 3, 4, 5)
    boxes[..., 0], boxes[..., 1] = -1.5, 0.0  # column 0 is y: y = -1.5 < -1 -> sample 0
    torch.testing.assert_close(rotated_feature_align(feats, boxes, 1.0), feats)
    boxes[..., 0], boxes[..., 1] = 2.5, 3.5  # y in the last row, x past the last column: clamped to (2, 3)
    torch.testing.assert_close(rotated_feature_align(feats, boxes, 1.0), feats + 11.0)


def test_mmcv_published_case():
    """First image of MMCV's tests/test_ops/test_rotated_feature_align.py (points=1, spatial_scale=1/8): inputs,
    expected output and expected feature gradient of the official CUDA op (tolerance as there)."""
    feature = torch.tensor([[[1.2924, -0.2172, -0.5222, 0.1172], [0.9144, 1.2248, 1.3115, -0.9690],
                             [-0.8949, -1.1797, -0.9093, -0.3961], [-0.4586, 0.5062, -0.7947, -0.7397]],
                            [[-1.0943, -0.7495, 1.3461, -1.1652], [0.2034, 0.6763, -1.2357, 0.5231],
                             [-1.0062, 1.2592, 1.4225, -0.3951], [-0.1242, -1.6240, 0.1932, 2.7181]],
                            [[-1.6271, -1.0276, 0.0578, -0.2997], [-0.9684, -1.6946, -1.3188, -1.1938],
                             [-1.6744, -0.8917, -0.6556, 1.0073], [-0.1205, 0.3671, -0.3731, -0.5347]]]
                           ).unsqueeze(0).requires_grad_()  # fmt: skip
    bbox = torch.tensor([[[13.080, 12.688, 11.214, 93.944, -0.91905], [38.104, 10.134, 146.59, 90.306, -0.98211],
                          [-53.213, 49.508, 51.513, 32.055, -0.31954], [26.974, 25.248, 54.495, 3.1083, -0.62127]],
                         [[-15.604, -51.908, 239.98, 15.008, -1.2546], [31.354, -7.3635, 67.879, 35.081, -0.33851],
                          [-5.3292, 9.1946, 12.834, 10.485, -1.3039], [-23.925, 36.623, 39.875, 72.009, -0.65934]],
                         [[72.114, -23.781, 29.106, 84.501, -1.1340], [26.258, -7.7034, 176.29, 106.15, -1.2156],
                          [38.057, 46.016, 12.965, 6.9384, -1.0855], [24.428, -16.189, 205.72, 31.622, -0.15719]],
                         [[3.8226, 29.608, 14.457, 68.179, -0.91997], [25.003, -42.490, 96.007, 49.086, -1.4786],
                          [85.983, 54.980, 78.080, 100.03, -1.0926], [9.9065, 41.457, 5.9799, 17.973, -0.56313]]]
                        ).unsqueeze(0)  # fmt: skip
    expected = torch.tensor([[[1.1095, -0.2172, -0.5222, -0.6225], [0.9144, 0.7662, 1.0487, -0.9690],
                              [-0.8949, -1.6384, -0.9093, -0.3961], [-0.8604, 0.5062, -0.7947, -0.7397]],
                             [[-0.3961, -0.7495, 1.3461, 1.5528], [0.2034, 0.5522, -1.6722, 0.5231],
                              [-1.0062, 1.1350, 1.4225, -0.3951], [-0.4826, -1.6240, 0.1932, 2.7181]],
                             [[-2.6436, -1.0276, 0.0578, -0.8344], [-0.9684, -1.8151, -2.1843, -1.1938],
                              [-1.6744, -1.0121, -0.6556, 1.0073], [-0.8474, 0.3671, -0.3731, -0.5347]]])  # fmt: skip
    expected_grad = torch.tensor([[1.0000, 1.8507, 1.1493, 1.5222], [1.0000, 1.1511, 1.2139, 1.4778],
                                  [1.0000, 1.2629, 1.3721, 1.0000], [3.0000, 1.0000, 1.0000, 2.0000]])  # fmt: skip
    out = rotated_feature_align(feature, bbox, 1 / 8, points=1)
    out.backward(torch.ones_like(out))
    assert torch.allclose(out[0], expected, 1e-2)
    for c in range(3):
        assert torch.allclose(feature.grad[0, c], expected_grad, 1e-2)
    # the geometric (x, y) order gives a different result: the official op really reads column 0 as y
    assert not torch.allclose(rotated_feature_align(feature, bbox, 1 / 8, xy_swapped=False)[0], expected, 1e-2)


@pytest.mark.parametrize("points", [1, 5])
def test_gradcheck_float64(points):
    feats, boxes, scale = _random_case(7, dtype=torch.float64, size=(1, 2, 3, 4))
    feats.requires_grad_()
    assert torch.autograd.gradcheck(lambda f: rotated_feature_align(f, boxes, scale, points), (feats,))
    boxes.requires_grad_()
    rotated_feature_align(feats, boxes, scale, points).sum().backward()
    assert boxes.grad is None  # as the official op: no gradient to the boxes


def test_bad_arguments():
    feats, boxes, scale = _random_case(0)
    with pytest.raises(ValueError, match="points"):
        rotated_feature_align(feats, boxes, scale, points=4)
    with pytest.raises(ValueError, match="one .* box per location"):
        rotated_feature_align(feats, boxes[:, :2], scale)
