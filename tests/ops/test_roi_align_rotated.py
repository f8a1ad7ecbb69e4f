"""RoIAlignRotated against a slow per-RoI loop written from MMCV's definition, plus gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align

from lsknet.ops import RoIAlignRotated, roi_align_rotated


def bilinear_mmcv(fmap: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """MMCV's bilinear_interpolate for one point of a (C, H, W) map."""
    _, h, w = fmap.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(fmap.shape[0], dtype=fmap.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * fmap[:, y_low, x_low]
        + hy * lx * fmap[:, y_low, x_high]
        + ly * hx * fmap[:, y_high, x_low]
        + ly * lx * fmap[:, y_high, x_high]
    )


def reference(features, rois, out_size, scale, sampling_ratio, aligned, clockwise):
    ph, pw = out_size
    out = torch.zeros(rois.shape[0], features.shape[1], ph, pw, dtype=features.dtype)
    for n, roi in enumerate(rois.tolist()):
        b, cx, cy, w, h, theta = roi
        off = 0.5 if aligned else 0.0
        cx, cy, w, h = cx * scale - off, cy * scale - off, w * scale, h * scale
        if clockwise:
            theta = -theta
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        bh, bw = h / ph, w / pw
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(h / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(w / pw)
        count = max(gh * gw, 1)
        cos, sin = math.cos(theta), math.sin(theta)
        for i in range(ph):
            for j in range(pw):
                acc = torch.zeros(features.shape[1], dtype=features.dtype)
                for iy in range(gh):
                    yy = -h / 2 + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        xx = -w / 2 + j * bw + (ix + 0.5) * bw / gw
                        y = yy * cos - xx * sin + cy
                        x = yy * sin + xx * cos + cx
                        acc += bilinear_mmcv(features[int(b)], y, x)
                out[n, :, i, j] = acc / count
    return out


def random_rois(n, batch, size, seed, max_wh=12.0):
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, batch, (n, 1), generator=g).double()
    c = torch.rand(n, 2, generator=g, dtype=torch.float64) * (size + 6) - 3  # some RoIs hang over the border
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * max_wh + 0.2
    t = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
    return torch.cat([b, c, wh, t], 1)


@pytest.mark.parametrize(
    "sampling_ratio, aligned, clockwise, scale, out_size",
    [
        (2, True, True, 0.5, (3, 3)),
        (0, True, False, 1.0, (2, 3)),
        (1, False, False, 0.25, (2, 2)),
        (3, True, False, 1.0, 4),
    ],
)
def test_matches_per_roi_reference(sampling_ratio, aligned, clockwise, scale, out_size):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    rois = random_rois(25, 2, 11 / scale, seed=1, max_wh=12.0 / scale)
    rois[:3, 3:5] = 0.0  # zero-size RoIs
    got = roi_align_rotated(feats, rois, out_size, scale, sampling_ratio, aligned, clockwise)
    osz = (out_size, out_size) if isinstance(out_size, int) else out_size
    ref = reference(feats, rois, osz, scale, sampling_ratio, aligned, clockwise)
    assert got.shape == (25, 3, *osz)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
    # float32 gives the same numbers to float32 precision
    got32 = roi_align_rotated(feats.float(), rois.float(), out_size, scale, sampling_ratio, aligned, clockwise)
    torch.testing.assert_close(got32.double(), ref, atol=2e-5, rtol=1e-4)


def test_axis_aligned_matches_torchvision_roi_align():
    """theta = 0 with a fixed sampling grid is torchvision's aligned RoIAlign, except near the border."""
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 4, 32, 32, generator=g, dtype=torch.float64)
    cxcy = torch.rand(40, 2, generator=g, dtype=torch.float64) * 80 + 24  # well inside (image 128 px)
    wh = torch.rand(40, 2, generator=g, dtype=torch.float64) * 30 + 4
    b = torch.randint(0, 2, (40, 1), generator=g).double()
    rois = torch.cat([b, cxcy, wh, torch.zeros(40, 1, dtype=torch.float64)], 1)
    xyxy = torch.cat([b, cxcy - wh / 2, cxcy + wh / 2], 1)
    got = roi_align_rotated(feats, rois, 7, 0.25, 2, aligned=True)
    ref = roi_align(feats, xyxy, 7, spatial_scale=0.25, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)


def test_rotation_by_quarter_turn_transposes_the_output():
    """A square RoI rotated by +90 deg (clockwise=True, lsknet convention) reads the map turned by 90 deg."""
    feats = torch.arange(64, dtype=torch.float64).view(1, 1, 8, 8)
    roi0 = torch.tensor([[0, 4.0, 4.0, 8.0, 8.0, 0.0]], dtype=torch.float64)
    roi90 = torch.tensor([[0, 4.0, 4.0, 8.0, 8.0, math.pi / 2]], dtype=torch.float64)
    a = roi_align_rotated(feats, roi0, 8, 1.0, 1, aligned=True, clockwise=True)[0, 0]
    b = roi_align_rotated(feats, roi90, 8, 1.0, 1, aligned=True, clockwise=True)[0, 0]
    torch.testing.assert_close(a, feats[0, 0])
    # the width axis points down the image: output column j reads image row j, output row i reads column 7 - i
    torch.testing.assert_close(b, feats[0, 0].t().flip(0), atol=1e-9, rtol=0)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(6, 2, 7, seed=4, max_wh=6.0)
    assert torch.autograd.gradcheck(lambda f: roi_align_rotated(f, rois, (2, 3), 1.0, 2, True, True), (feats,))
    assert torch.autograd.gradcheck(lambda f: roi_align_rotated(f, rois, 2, 1.0, 0, True, False), (feats,))


def test_module_empty_and_bad_input():
    m = RoIAlignRotated((7, 7), spatial_scale=0.25, sampling_ratio=2, clockwise=True)
    assert "clockwise=True" in repr(m)
    feats = torch.randn(1, 8, 16, 16)
    assert m(feats, torch.zeros(0, 6)).shape == (0, 8, 7, 7)
    assert m(feats, torch.tensor([[0, 30.0, 30.0, 20.0, 10.0, 0.3]])).shape == (1, 8, 7, 7)
    with pytest.raises(ValueError, match=r"\(R, 6\)"):
        m(feats, torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        m(feats[0], torch.zeros(1, 6))
    with pytest.raises(ValueError, match="batch indices"):
        m(feats, torch.tensor([[1, 30.0, 30.0, 20.0, 10.0, 0.3]]))
    with pytest.raises(ValueError, match="NaN"):
        m(feats, torch.tensor([[0, float("nan"), 30.0, 20.0, 10.0, 0.3]]))
    with pytest.raises(ValueError, match="output_size"):
        RoIAlignRotated(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    feats = torch.randn(2, 16, 32, 32)
    rois = random_rois(100, 2, 128, seed=5, max_wh=60).float()
    cpu = roi_align_rotated(feats, rois, 7, 0.25, 0, True, True)
    gpu = roi_align_rotated(feats.cuda(), rois.cuda(), 7, 0.25, 0, True, True)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)


def test_channels_last_output_has_the_same_values_without_a_copy():
    """``channels_last=True`` returns the (R, C, S, S) result in the (R, S, S, C) memory it is computed in."""
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 6, 20, 24, generator=g)
    rois = torch.tensor([[0, 40.0, 30.0, 30.0, 12.0, 0.4], [1, 60.0, 50.0, 18.0, 26.0, -1.1]])
    # torchvision's roi_align on an axis-aligned RoI is the oracle; the rotated RoI is compared with the NCHW result
    want = roi_align(feats, torch.tensor([[0, 25.0, 24.0, 55.0, 36.0]]), 7, 0.5, 2, aligned=True)
    axis_roi = torch.tensor([[0, 40.0, 30.0, 30.0, 12.0, 0.0]])
    got = roi_align_rotated(feats, axis_roi, 7, 0.5, 2, True, channels_last=True)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert torch.allclose(got, want, atol=1e-5)
    nchw = roi_align_rotated(feats, rois, 7, 0.5, 2, True, True)
    nhwc = roi_align_rotated(feats, rois, 7, 0.5, 2, True, True, channels_last=True)
    assert nchw.is_contiguous() and torch.equal(nchw, nhwc)
