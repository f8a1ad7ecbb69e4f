"""Winograd F(m x m, 3 x 3) convolution against F.conv2d in float64 (the oracle), on odd sizes and paddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lsknet.ops.winograd import winograd_conv3x3, winograd_matrices, winograd_weight


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6])
def test_matrices_compute_1d_correlation_exactly(m):
    at, g, bt = winograd_matrices(m)
    n = m + 2
    assert at.shape == (m, n) and g.shape == (n, 3) and bt.shape == (n, n)
    gen = torch.Generator().manual_seed(m)
    d = torch.randint(-9, 10, (n,), generator=gen).double()
    k = torch.randint(-9, 10, (3,), generator=gen).double()
    want = torch.stack([(d[i : i + 3] * k).sum() for i in range(m)])  # y_i = sum_j d_(i+j) k_j
    got = at @ ((g @ k) * (bt @ d))
    assert torch.allclose(got, want, atol=1e-9, rtol=0)
    assert torch.equal(bt, bt.round())  # integer input transform (the scale sits in G)


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize(("h", "w", "padding"), [(7, 9, 1), (13, 5, 0), (10, 11, 2), (3, 3, 1), (1, 17, 1), (9, 4, 3)])
def test_same_as_conv2d_float64(m, h, w, padding):
    gen = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(2, 5, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(7, 5, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(7, generator=gen, dtype=torch.float64)
    want = F.conv2d(x, weight, bias, padding=padding)
    got = winograd_conv3x3(x, winograd_weight(weight, m), bias, m=m, padding=padding)
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)
    got_relu = winograd_conv3x3(x, winograd_weight(weight, m), None, m=m, padding=padding, relu=True)
    assert torch.allclose(got_relu, F.relu(F.conv2d(x, weight, padding=padding)), atol=1e-10, rtol=0)


@pytest.mark.parametrize(("relu", "with_bias"), [(True, True), (False, True), (True, False)])
def test_per_pixel_head_applied_band_by_band(relu, with_bias):
    """``head`` (a 1x1 conv as a GEMM over channels) on the conv's (ReLU'd) output, several bands, odd size."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 19, 23, generator=gen, dtype=torch.float64)
    weight = torch.randn(8, 6, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(8, generator=gen, dtype=torch.float64) if with_bias else None
    head_w = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    head_b = torch.randn(5, generator=gen, dtype=torch.float64)
    y = F.conv2d(x, weight, bias, padding=1)
    want = F.conv2d(F.relu(y) if relu else y, head_w[:, :, None, None], head_b)
    got = winograd_conv3x3(
        x, winograd_weight(weight, 4), bias, m=4, relu=relu, band_bytes=1, head=lambda t: F.linear(t, head_w, head_b)
    )
    assert got.shape == want.shape == (2, 5, 19, 23)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("m", [2, 4])
def test_float32_rounding_close_to_direct_conv(m):
    """Float32 error against the float64 oracle: a few times direct convolution's (256 channels, as the FPN/RPN),
    with bands smaller than one row of tiles and a channels-last input."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 37, 41, generator=gen, dtype=torch.float64)
    weight = torch.randn(64, 256, 3, 3, generator=gen, dtype=torch.float64) * 0.02
    bias = torch.randn(64, generator=gen, dtype=torch.float64)
    want = F.conv2d(x, weight, bias, padding=1)
    x32 = x.float().contiguous(memory_format=torch.channels_last)
    got = winograd_conv3x3(x32, winograd_weight(weight.float(), m), bias.float(), m=m, padding=1, band_bytes=1)
    direct = F.conv2d(x.float(), weight.float(), bias.float(), padding=1)
    scale = want.abs().max()
    err, err_direct = ((got - want).abs().max() / scale).item(), ((direct - want).abs().max() / scale).item()
    assert err < 2e-5
    assert err < 30 * err_direct + 1e-7


def test_rejects_bad_arguments():
    x = torch.randn(1, 4, 6, 6)
    wt = winograd_weight(torch.randn(3, 4, 3, 3), 4)
    with pytest.raises(ValueError, match="does not fit"):
        winograd_conv3x3(x, wt, m=2)
    with pytest.raises(ValueError, match="too small"):
        winograd_conv3x3(torch.randn(1, 4, 2, 6), wt, m=4, padding=0)
    with pytest.raises(ValueError, match="padding"):
        winograd_conv3x3(x, wt, m=4, padding=-1)
    with pytest.raises(ValueError, match="3, 3"):
        winograd_weight(torch.randn(3, 4, 5, 5), 4)
    with pytest.raises(ValueError, match="m must be"):
        winograd_matrices(9)
