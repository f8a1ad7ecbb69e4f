"""S2A-Net's oriented ops against slow direct loops written from their definitions (ORN paper / S2A-Net paper), plus
float64 gradient checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from lsknet.models.s2anet_parts import AlignConv, ORConv2d
from lsknet.ops.orconv import (
    active_rotated_filter,
    align_conv_offsets,
    arf_indices,
    rotation_invariant_encoding,
    rotation_invariant_pool,
)


def _rotate_filter_by_geometry(weight: torch.Tensor, n_rotation: int) -> torch.Tensor:
    """Definition of an active rotating filter: copy r turns the kernel by r * 360 / n_rotation degrees clockwise on
    screen (y down) about its centre (a 3x3 border tap moves to the ring point at the turned angle) and moves
    orientation channel o to o + r * n_orientation / n_rotation."""
    out_c, in_c, n_or, k, _ = weight.shape
    c = (k - 1) // 2
    out = weight.new_zeros(out_c * n_rotation, in_c * n_or, k, k)
    for r in range(n_rotation):
        angle = 2 * math.pi * r / n_rotation
        for o_out in range(out_c):
            for i in range(in_c):
                for o in range(n_or):
                    o_new = (o + (r * n_or) // n_rotation) % n_or
                    for y in range(k):
                        for x in range(k):
                            dy, dx = y - c, x - c
                            if dy == 0 and dx == 0:
                                ny, nx = y, x
                            else:
                                phi = math.atan2(dy, dx) + angle
                                ny, nx = c + round(math.sin(phi)), c + round(math.cos(phi))
                            out[o_out * n_rotation + r, i * n_or + o_new, ny, nx] = weight[o_out, i, o, y, x]
    return out


@pytest.mark.parametrize("n_or,n_rot,k", [(1, 8, 3), (8, 8, 3), (4, 8, 3), (2, 4, 3), (1, 4, 1), (4, 4, 1)])
def test_arf_equals_geometric_rotation(n_or, n_rot, k):
    torch.manual_seed(0)
    w = torch.randn(3, 2, n_or, k, k, dtype=torch.float64)
    got = active_rotated_filter(w, arf_indices(n_or, n_rot, k))
    assert torch.equal(got, _rotate_filter_by_geometry(w, n_rot))


def test_arf_copy_two_of_eight_is_a_quarter_turn():
    w = torch.arange(9.0).view(1, 1, 1, 3, 3)
    rotated = active_rotated_filter(w, arf_indices(1, 8, 3))
    quarter = torch.rot90(w[0, 0, 0], k=-1)  # clockwise on screen
    assert torch.equal(rotated[2, 0], quarter)
    assert torch.equal(rotated[4, 0], torch.rot90(w[0, 0, 0], k=2))
    assert torch.equal(rotated[0, 0], w[0, 0, 0])


def test_arf_gradient_sums_over_rotations_and_gradcheck():
    w = torch.randn(2, 2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    idx = arf_indices(1, 8, 3)
    active_rotated_filter(w, idx).sum().backward()
    assert torch.allclose(w.grad, torch.full_like(w, 8.0))  # every tap appears once in each of the 8 copies
    w2 = torch.randn(2, 1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: active_rotated_filter(t, arf_indices(2, 4, 3)), (w2,))


def test_arf_rejects_a_table_that_is_not_a_permutation():
    idx = arf_indices(1, 8, 3).clone()
    idx[0, 0, 0, 1] = idx[0, 0, 1, 1]
    with pytest.raises(ValueError, match="distinct"):
        active_rotated_filter(torch.randn(1, 1, 1, 3, 3), idx)


def _conv_loop(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, pad: int) -> torch.Tensor:
    bsz, cin, h, wd = x.shape
    cout, _, k, _ = w.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    out = x.new_zeros(bsz, cout, h + 2 * pad - k + 1, wd + 2 * pad - k + 1)
    for n in range(bsz):
        for co in range(cout):
            for y in range(out.shape[2]):
                for xx in range(out.shape[3]):
                    out[n, co, y, xx] = b[co] + (xp[n, :, y : y + k, xx : xx + k] * w[co]).sum()
    return out


def test_orconv_equals_direct_convolution_with_rotated_filters():
    torch.manual_seed(1)
    conv = ORConv2d(3, 2, 3, arf_config=(1, 8), padding=1).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64)
    expected = _conv_loop(x, _rotate_filter_by_geometry(conv.weight.detach(), 8), conv.bias.detach(), 1)
    assert torch.allclose(conv(x), expected, atol=1e-12)
    assert conv.indices.dtype == torch.int32 and tuple(conv.indices.shape) == (1, 3, 3, 8)


def test_orconv_is_rotation_equivariant_for_quarter_turns():
    """Turning the input by 90 degrees turns the output maps and moves every feature's rotation channel by 2 of 8."""
    torch.manual_seed(2)
    conv = ORConv2d(2, 3, 3, arf_config=(1, 8), padding=1).double()
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    out = conv(x).view(1, 3, 8, 6, 6)
    out_rot = conv(torch.rot90(x, k=-1, dims=(2, 3))).view(1, 3, 8, 6, 6)
    expected = torch.rot90(out, k=-1, dims=(3, 4)).roll(2, dims=2)
    assert torch.allclose(out_rot, expected, atol=1e-12)
    pooled = rotation_invariant_pool(conv(x))
    pooled_rot = rotation_invariant_pool(conv(torch.rot90(x, k=-1, dims=(2, 3))))
    assert torch.allclose(pooled_rot, torch.rot90(pooled, k=-1, dims=(2, 3)), atol=1e-12)


def test_orconv_gradcheck():
    torch.manual_seed(3)
    conv = ORConv2d(2, 1, 3, arf_config=(2, 4), padding=1).double()
    x = torch.randn(1, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, w, b: F.conv2d(t, active_rotated_filter(w, conv.indices), b, padding=1),
                                    (x, conv.weight, conv.bias))  # fmt: skip


def test_rotation_invariant_pool_and_encoding_against_loops():
    torch.manual_seed(4)
    n = 4
    x = torch.randn(2, 3 * n, 2, 3, dtype=torch.float64)
    pooled = rotation_invariant_pool(x, n)
    aligned, main = rotation_invariant_encoding(x, n)
    for b in range(2):
        for f in range(3):
            for y in range(2):
                for xx in range(3):
                    vals = [float(x[b, f * n + o, y, xx]) for o in range(n)]
                    best = max(range(n), key=lambda o: (vals[o], -o))  # first maximum
                    assert float(pooled[b, f, y, xx]) == max(vals)
                    assert int(main[b, f, y, xx]) == best
                    for m in range(n):
                        assert float(aligned[b, f * n + m, y, xx]) == vals[(m + best) % n]


def test_rotation_invariant_ops_gradcheck():
    torch.manual_seed(5)
    x = torch.randn(1, 16, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rotation_invariant_pool(t, 8), (x,))
    assert torch.autograd.gradcheck(lambda t: rotation_invariant_encoding(t, 8)[0], (x,))


def _bilinear_zero_outside(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """(C, H, W) sampled at (y, x); each of the 4 neighbours outside the map contributes zero."""
    _, h, w = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = img.new_zeros(img.shape[0])
    for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        if 0 <= yy < h and 0 <= xx < w:
            out = out + img[:, yy, xx] * (1 - abs(y - yy)) * (1 - abs(x - xx))
    return out


def test_align_conv_samples_the_grid_of_each_box():
    """Definition (S2A-Net, eq. 4): the 3x3 kernel at a position samples the centres of the 3x3 split of that
    position's rotated box, in feature-map units (pixels / stride)."""
    torch.manual_seed(6)
    stride, h, w = 8.0, 3, 4
    ac = AlignConv(2, 3, 3, stride=stride).double()
    with torch.no_grad():
        ac.deform_conv.weight.normal_()
    x = torch.randn(2, 2, h, w, dtype=torch.float64)
    boxes = torch.rand(2, h * w, 5, dtype=torch.float64) * torch.tensor([32.0, 24.0, 40.0, 20.0, 2 * math.pi])
    boxes[..., 4] -= math.pi
    got = ac(x, boxes)
    weight = ac.deform_conv.weight.detach()
    expected = torch.zeros_like(got)
    for b in range(2):
        for y in range(h):
            for xx in range(w):
                cx, cy, bw, bh, t = boxes[b, y * w + xx].tolist()
                for i in range(3):
                    for j in range(3):
                        u, v = (j - 1) * bw / 3 / stride, (i - 1) * bh / 3 / stride  # along the box's axes
                        sx = cx / stride + u * math.cos(t) - v * math.sin(t)
                        sy = cy / stride + u * math.sin(t) + v * math.cos(t)
                        expected[b, :, y, xx] += weight[:, :, i, j] @ _bilinear_zero_outside(x[b], sy, sx)
    assert torch.allclose(got, expected.clamp_min(0), atol=1e-10)


def test_align_conv_offsets_of_an_anchor_grid_are_a_dilation():
    """A horizontal 3*stride box centred on every position samples the plain 3x3 grid: zero offsets."""
    h, w, stride = 2, 3, 16.0
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    boxes = torch.stack([xs.flatten() * stride, ys.flatten() * stride, torch.full((h * w,), 3 * stride),
                         torch.full((h * w,), 3 * stride), torch.zeros(h * w)], dim=1)[None].double()  # fmt: skip
    assert torch.allclose(align_conv_offsets(boxes, (h, w), stride), torch.zeros(1, 18, h, w, dtype=torch.float64))


def test_align_conv_gradcheck():
    torch.manual_seed(7)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    boxes = torch.rand(1, 9, 5, dtype=torch.float64) * torch.tensor([24.0, 24.0, 30.0, 20.0, 3.0])
    offset = align_conv_offsets(boxes, (3, 3), 8.0)
    assert torch.autograd.gradcheck(lambda t, wt: deform_conv2d(t, offset, wt, padding=(1, 1)), (x, weight))
