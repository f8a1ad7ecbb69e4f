"""Box coders: hand-computed deltas (MMRotate 0.x semantics), round trips, clamping."""

from __future__ import annotations

import math

import pytest
import torch

from lsknet.ops import DeltaXYWHTCoder, MidpointOffsetCoder, rbox_iou, rbox_to_corners, regularize_rbox

PI = math.pi
F64 = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=F64)


def rand_le90(n, seed, lo=100.0, hi=900.0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g, dtype=F64) * (hi - lo) + lo
    wh = torch.rand(n, 2, generator=g, dtype=F64) * 150 + 4
    th = (torch.rand(n, 1, generator=g, dtype=F64) - 0.5) * 2 * PI
    return regularize_rbox(torch.cat([c, wh, th], 1), "le90")


# ----------------------------------------------------------------------------------------------- DeltaXYWHT
def test_delta_encode_hand_values():
    coder = DeltaXYWHTCoder()  # official: le90, edge_swap, proj_xy, stds (0.1, 0.1, 0.2, 0.2, 0.1)
    p = t([0, 0, 10, 5, 0.0], [0, 0, 10, 5, 0.0], [0, 0, 10, 5, PI / 2])
    g = t([1, 2, 20, 5, 0.1], [0, 0, 20, 5, -PI / 2 + 0.05], [0, 3, 10, 5, PI / 2 - 0.01])
    d = coder.encode(p, g)
    # 1: plain offsets; 2: edge swap (w/h exchanged, angle 0.05 instead of -1.52); 3: offset along a vertical
    #    width axis is dx (proj_xy), angle difference wraps to -0.01
    exp = t(
        [0.1 / 0.1, 0.4 / 0.1, math.log(2) / 0.2, 0.0, 0.1 / 0.1],
        [0.0, 0.0, math.log(0.5) / 0.2, math.log(4) / 0.2, 0.05 / 0.1],
        [0.3 / 0.1, 0.0, 0.0, 0.0, -0.01 / 0.1],
    )
    torch.testing.assert_close(d, exp, atol=1e-9, rtol=0)


def test_delta_without_swap_and_projection_matches_plain_formulas():
    coder = DeltaXYWHTCoder(target_stds=(1, 1, 1, 1, 1), edge_swap=False, proj_xy=False, norm_factor=0.5)
    d = coder.encode(t([0, 0, 10, 5, PI / 2]), t([0, 3, 10, 5, PI / 2 - 0.01]))
    torch.testing.assert_close(d, t([0.0, 0.6, 0.0, 0.0, -0.01 / (0.5 * PI)]), atol=1e-9, rtol=0)


def test_delta_round_trip_and_decode_gives_le90():
    coder = DeltaXYWHTCoder()
    p, g = rand_le90(500, 1), rand_le90(500, 2)
    g[:100, :2] = p[:100, :2] + 3.0  # some close pairs
    out = coder.decode(p, coder.encode(p, g))
    assert bool((out[:, 2] >= out[:, 3]).all()) and bool(((out[:, 4] >= -PI / 2) & (out[:, 4] < PI / 2)).all())
    # same rectangles as the targets (independent check through the exact IoU)
    iou = rbox_iou(out, g, aligned=True)
    assert bool((iou > 1 - 1e-9).all())


def test_delta_decode_clamps_and_multiclass():
    coder = DeltaXYWHTCoder()
    p = t([100, 100, 10, 5, 0.0])
    big = t([0, 0, 100.0, -100.0, 0])
    out = coder.decode(p, big)
    ratio = 1000 / 16
    torch.testing.assert_close(out[0, 2:4], t([10 * ratio, 5 / ratio])[0], rtol=1e-9, atol=0)
    # k = 3 classes at once == one call per class; max_shape clamps centres into the image
    d = torch.randn(4, 15, dtype=F64, generator=torch.Generator().manual_seed(0))
    ps = rand_le90(4, 3)
    many = coder.decode(ps, d, max_shape=(300, 200))
    for c in range(3):
        one = coder.decode(ps, d[:, 5 * c : 5 * c + 5], max_shape=(300, 200))
        torch.testing.assert_close(many[:, 5 * c : 5 * c + 5], one)
    assert bool((many.view(4, 3, 5)[..., 0] <= 199).all()) and bool((many.view(4, 3, 5)[..., 1] <= 299).all())


# ----------------------------------------------------------------------------------------------- midpoint offset
def test_midpoint_encode_hand_values():
    coder = MidpointOffsetCoder(target_stds=(1, 1, 1, 1, 1, 1))
    anchors = t([0, 0, 10, 10], [0, 0, 10, 10])
    # axis-aligned target = the anchor: top vertex (tie) is the top-right corner, right vertex the bottom-right
    # 30-degree box: top vertex = corner 0, right vertex = corner 1 (checked on the corners below)
    gt = t([5, 5, 10, 10, 0.0], [6, 4, 8, 4, PI / 6])
    d = coder.encode(anchors, gt)
    torch.testing.assert_close(d[0], t([0, 0, 0, 0, 0.5, 0.5])[0])
    c, s = math.cos(PI / 6), math.sin(PI / 6)
    ew, eh = 8 * c + 4 * s, 8 * s + 4 * c  # envelope of the 30-degree box
    top_x = 6 - 4 * c + 2 * s  # corner 0 = centre - (w/2) u - (h/2) v, u = (c, s), v = (-s, c)
    right_y = 4 + 4 * s - 2 * c  # corner 1 = centre + (w/2) u - (h/2) v
    exp = t([(6 - 5) / 10, (4 - 5) / 10, math.log(ew / 10), math.log(eh / 10), (top_x - 6) / ew, (right_y - 4) / eh])
    torch.testing.assert_close(d[1], exp[0], atol=1e-9, rtol=0)
    corners = rbox_to_corners(gt[1:])[0]
    assert abs(corners[:, 1].min().item() - corners[0, 1].item()) < 1e-9  # corner 0 is the top one
    assert abs(corners[:, 0].max().item() - corners[1, 0].item()) < 1e-9  # corner 1 the right one


def test_midpoint_round_trip_is_exact_for_rectangles():
    coder = MidpointOffsetCoder()
    g = rand_le90(400, 4)
    g[:20, 4] = 0.0  # axis-aligned ties
    g[20:40, 4] = -PI / 2
    g[40:60, 3] = g[40:60, 2]  # squares
    gen = torch.Generator().manual_seed(5)
    ctr = g[:, :2] + torch.randn(400, 2, generator=gen, dtype=F64) * 10
    wh = torch.rand(400, 2, generator=gen, dtype=F64) * 100 + 10
    anchors = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    out = coder.decode(anchors, coder.encode(anchors, g))
    # MMRotate's 0.1 px rule: a nearly axis-aligned box (two top corners within 0.1 px) is encoded as if
    # axis-aligned, so only those lose a little; all others come back exactly
    c = rbox_to_corners(g)
    ys = c[..., 1].sort(dim=1).values
    xs = c[..., 0].sort(dim=1).values
    near = ((ys[:, 1] - ys[:, 0]) <= 0.1) | ((xs[:, 3] - xs[:, 2]) <= 0.1)
    near &= (ys[:, 1] - ys[:, 0]) > 0  # exactly axis-aligned boxes are exact
    iou = rbox_iou(out, g, aligned=True)
    assert bool((iou[~near] > 1 - 1e-9).all()) and bool((iou[near] > 0.99).all()) and near.sum() < 10
    ok = ((g[:, 2] - g[:, 3]).abs() > 1e-6) & ~near
    torch.testing.assert_close(out[ok, :4], g[ok, :4], atol=1e-7, rtol=1e-9)
    assert bool(((out[:, 4] >= -PI / 2) & (out[:, 4] < PI / 2)).all())


def test_midpoint_decode_parallelogram_becomes_rectangle_and_clamps():
    coder = MidpointOffsetCoder(target_stds=(1, 1, 1, 1, 1, 1))
    anchors = t([0, 0, 20, 10])
    # da = 0.25, db = 0: the quad (5, 0), (20, 5), (-5, 10)->(5... ) is a parallelogram, decoded to a rectangle
    out = coder.decode(anchors, t([0, 0, 0, 0, 0.25, 0.0]))
    assert out.shape == (1, 5)
    assert abs(out[0, 0].item() - 10) < 1e-9 and abs(out[0, 1].item() - 5) < 1e-9
    # half-diagonals stretched to the longest one: |(5, -5)| vs |(10, 0)| -> 10, so the diagonal is 20
    assert abs(math.hypot(out[0, 2].item(), out[0, 3].item()) - 20) < 1e-9
    # clamping: da beyond 0.5 acts as 0.5; dw beyond |log(16/1000)| is clipped
    a = coder.decode(anchors, t([0, 0, 0, 0, 3.0, 0.0]))
    b = coder.decode(anchors, t([0, 0, 0, 0, 0.5, 0.0]))
    torch.testing.assert_close(a, b)
    huge = coder.decode(anchors, t([0, 0, 50.0, 0, 0.5, 0.5]))
    assert abs(huge[0, 2].item() - 20 * 1000 / 16) < 1e-6


def test_coder_bad_input():
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        DeltaXYWHTCoder().encode(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="6 \\* k"):
        MidpointOffsetCoder().decode(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="target_stds"):
        MidpointOffsetCoder(target_stds=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="angle version"):
        DeltaXYWHTCoder(angle_version="le45")
