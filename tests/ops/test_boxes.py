"""Box conventions and converters, checked against hand values, shapely and torchvision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsknet.ops import (
    hbox_to_rbox,
    poly_to_rbox,
    rbox_to_corners,
    rbox_to_hbox,
    rbox_to_tv_boxes,
    regularize_rbox,
    tv_boxes_to_rbox,
)

PI = math.pi


def rand_rboxes(n: int, seed: int = 0, lo: float = 0.0, hi: float = 100.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g, dtype=torch.float64) * (hi - lo) + lo
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40 + 1
    t = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 4 * PI
    return torch.cat([c, wh, t], 1).to(dtype)


def same_rectangles(c1: torch.Tensor, c2: torch.Tensor, atol: float = 1e-6) -> bool:
    """Corner sets (N, 4, 2) equal up to a cyclic shift of the vertex order (orientation kept)."""
    ok = torch.zeros(c1.shape[0], dtype=torch.bool)
    for s in range(4):
        ok |= ((c1 - c2.roll(s, dims=1)).abs() <= atol).flatten(1).all(1)
    return bool(ok.all())


def signed_area_ydown(c: torch.Tensor) -> torch.Tensor:
    x, y = c[..., 0], c[..., 1]
    return (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1) / 2


# ----------------------------------------------------------------------------------------------- corners
def test_corners_hand_values():
    rb = torch.tensor([[10.0, 20.0, 4.0, 2.0, 0.0], [0.0, 0.0, 4.0, 2.0, PI / 2]])
    c = rbox_to_corners(rb)
    assert torch.allclose(c[0], torch.tensor([[8.0, 19.0], [12.0, 19.0], [12.0, 21.0], [8.0, 21.0]]))
    # theta = +90 deg: the width axis points down the image (+y)
    assert torch.allclose(c[1], torch.tensor([[1.0, -2.0], [1.0, 2.0], [-1.0, 2.0], [-1.0, -2.0]]), atol=1e-6)


def test_corners_are_clockwise_on_screen_and_match_shapely_area():
    rb = rand_rboxes(200)
    c = rbox_to_corners(rb)
    # clockwise on screen with y down == positive shoelace sum in (x, y) coordinates
    assert bool((signed_area_ydown(c) > 0).all())
    areas = shapely.area(shapely.polygons(c.numpy()))
    np.testing.assert_allclose(areas, (rb[:, 2] * rb[:, 3]).numpy(), rtol=1e-12)


def test_hbox_envelope_matches_shapely_bounds():
    rb = rand_rboxes(100, seed=1)
    bounds = shapely.bounds(shapely.polygons(rbox_to_corners(rb).numpy()))
    np.testing.assert_allclose(rbox_to_hbox(rb).numpy(), bounds, atol=1e-9)


def test_hbox_to_rbox_le90_and_oc():
    hb = torch.tensor([[0.0, 0.0, 10.0, 4.0], [0.0, 0.0, 4.0, 10.0]])
    le90 = hbox_to_rbox(hb)
    assert torch.allclose(le90, torch.tensor([[5.0, 2.0, 10.0, 4.0, 0.0], [2.0, 5.0, 10.0, 4.0, -PI / 2]]))
    oc = hbox_to_rbox(hb, "oc")
    assert torch.allclose(oc, torch.tensor([[5.0, 2.0, 4.0, 10.0, PI / 2], [2.0, 5.0, 10.0, 4.0, PI / 2]]))
    assert same_rectangles(rbox_to_corners(le90), rbox_to_corners(oc))


# ----------------------------------------------------------------------------------------------- regularize
@pytest.mark.parametrize("version", ["le90", "le135", "oc"])
def test_regularize_ranges_keep_the_rectangle(version):
    rb = rand_rboxes(500, seed=2)
    rb[:50, 2] = rb[:50, 3]  # squares
    rb[50:60, 4] = torch.tensor([-PI, -PI / 2, 0.0, PI / 2, PI, 3 * PI / 2, -3 * PI / 4, 3 * PI / 4, PI / 4, -PI / 4])
    out = regularize_rbox(rb, version)
    t = out[:, 4]
    if version == "le90":
        assert bool(((t >= -PI / 2) & (t < PI / 2)).all()) and bool((out[:, 2] >= out[:, 3]).all())
    elif version == "le135":
        assert bool(((t >= -PI / 4) & (t < 3 * PI / 4)).all()) and bool((out[:, 2] >= out[:, 3]).all())
    else:
        assert bool(((t > 0) & (t <= PI / 2)).all())
    assert same_rectangles(rbox_to_corners(out), rbox_to_corners(rb), atol=1e-9)
    assert torch.allclose(regularize_rbox(out, version), out, atol=1e-12)  # idempotent


def test_regularize_hand_values_follow_mmrotate():
    # MMRotate le90: swap when w < h, theta + pi/2, then (theta + pi/2) % pi - pi/2
    rb = torch.tensor([[0.0, 0.0, 4.0, 5.0, 0.5]], dtype=torch.float64)
    assert torch.allclose(regularize_rbox(rb, "le90"), torch.tensor([[0.0, 0.0, 5.0, 4.0, 0.5 + PI / 2 - PI]]).double())
    assert torch.allclose(regularize_rbox(rb, "le135"), torch.tensor([[0.0, 0.0, 5.0, 4.0, 0.5 + PI / 2]]).double())
    assert torch.allclose(regularize_rbox(rb, "oc"), rb)
    # oc: -90 deg is +90 deg without swapping (half turn); -30 deg -> 60 deg with w/h swapped
    rb = torch.tensor([[0.0, 0.0, 4.0, 5.0, -PI / 2], [0.0, 0.0, 4.0, 5.0, -PI / 6]], dtype=torch.float64)
    exp = torch.tensor([[0.0, 0.0, 4.0, 5.0, PI / 2], [0.0, 0.0, 5.0, 4.0, PI / 3]], dtype=torch.float64)
    assert torch.allclose(regularize_rbox(rb, "oc"), exp)
    # le90 boundary: +pi/2 wraps to -pi/2
    rb = torch.tensor([[0.0, 0.0, 5.0, 4.0, PI / 2]], dtype=torch.float64)
    assert torch.allclose(regularize_rbox(rb, "le90")[0, 4], torch.tensor(-PI / 2, dtype=torch.float64))


def test_regularize_bad_version():
    with pytest.raises(ValueError, match="le90"):
        regularize_rbox(torch.zeros(1, 5), "le180")


# ----------------------------------------------------------------------------------------------- poly_to_rbox
@settings(max_examples=60, deadline=None)
@given(
    cx=st.floats(-1e4, 1e4),
    cy=st.floats(-1e4, 1e4),
    w=st.floats(0.5, 500),
    h=st.floats(0.5, 500),
    t=st.floats(-10, 10),
    shift=st.integers(0, 3),
    reverse=st.booleans(),
    version=st.sampled_from(["le90", "le135", "oc"]),
)
def test_poly_to_rbox_round_trip(cx, cy, w, h, t, shift, reverse, version):
    rb = torch.tensor([[cx, cy, w, h, t]], dtype=torch.float64)
    c = rbox_to_corners(rb).roll(shift, dims=1)
    if reverse:
        c = c.flip(1)
    out = poly_to_rbox(c.reshape(1, 8), version, method="exact")
    exp = regularize_rbox(rb, version)
    t_exp = exp[0, 4].item()
    bounds = {"le90": (-PI / 2, PI / 2), "le135": (-PI / 4, 3 * PI / 4), "oc": (0.0, PI / 2)}[version]
    ambiguous = abs(w - h) < 1e-6 * (w + h) or min(abs(t_exp - x) for x in bounds) < 1e-6
    if not ambiguous:  # the parameters are unique away from the interval ends and for non-squares
        assert torch.allclose(out, exp, atol=1e-6 * (1 + abs(cx) + abs(cy)))
    assert same_rectangles(rbox_to_corners(out), rbox_to_corners(rb), atol=1e-6 * (1 + abs(cx) + abs(cy) + w + h))


def test_poly_to_rbox_is_the_minimum_area_rectangle():
    g = torch.Generator().manual_seed(3)
    q = torch.rand(300, 4, 2, generator=g, dtype=torch.float64) * 100
    ref = shapely.minimum_rotated_rectangle(shapely.multipoints(q.numpy()))
    # OpenCV's float32 calipers (default) find the minimum area up to float32 rounding
    cv = poly_to_rbox(q)
    np.testing.assert_allclose((cv[:, 2] * cv[:, 3]).numpy(), shapely.area(ref), rtol=1e-5)
    out = poly_to_rbox(q, method="exact")
    np.testing.assert_allclose((out[:, 2] * out[:, 3]).numpy(), shapely.area(ref), rtol=1e-9, atol=1e-9)
    rect = shapely.polygons(rbox_to_corners(out).numpy())
    hull = shapely.convex_hull(shapely.multipoints(q.numpy()))
    # the rectangle contains the quad (up to rounding)
    np.testing.assert_allclose(shapely.area(shapely.intersection(rect, hull)), shapely.area(hull), rtol=1e-9)
    assert bool((out[:, 2] >= out[:, 3]).all())


def test_poly_to_rbox_degenerate_and_axis_aligned():
    polys = torch.tensor(
        [
            [[0, 0], [10, 0], [10, 4], [0, 4]],  # axis aligned
            [[3, 3], [3, 3], [3, 3], [3, 3]],  # a point
            [[0, 0], [5, 0], [10, 0], [5, 0]],  # a segment
            [[0, 0], [4, 0], [4, 4], [0, 4]],  # a square
        ],
        dtype=torch.float32,
    )
    out = poly_to_rbox(polys)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], torch.tensor([5.0, 2.0, 10.0, 4.0, 0.0]))
    assert torch.allclose(out[1, :4], torch.tensor([3.0, 3.0, 0.0, 0.0]))
    assert torch.allclose(out[2, :4], torch.tensor([5.0, 0.0, 10.0, 0.0]), atol=1e-6)
    assert torch.allclose(out[2, 4].abs(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(out[3, :4], torch.tensor([2.0, 2.0, 4.0, 4.0]))
    assert out.dtype == torch.float32 and poly_to_rbox(torch.zeros(0, 8)).shape == (0, 5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(3, 6), r"\(N, 4, 2\)"),
        (torch.zeros(3, 4, 2, dtype=torch.int64), "floating"),
        (torch.tensor([[0.0, 0, 1, 0, 1, 1, float("nan"), 1]]), "NaN"),
        ([[0, 0, 1, 0, 1, 1, 0, 1]], "torch.Tensor"),
    ],
)
def test_poly_to_rbox_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        poly_to_rbox(bad)


# ----------------------------------------------------------------------------------------------- torchvision
def test_tv_boxes_conventions_agree_with_torchvision():
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    rb = rand_rboxes(50, seed=4, lo=100, hi=400)
    tvb = rbox_to_tv_boxes(rb, canvas_size=(500, 600))
    assert tvb.format == tv_tensors.BoundingBoxFormat.CXCYWHR
    # torchvision's own corner conversion must give our corners (same rectangles, same orientation)
    corners_tv = F.convert_bounding_box_format(tvb, new_format=tv_tensors.BoundingBoxFormat.XYXYXYXY)
    assert same_rectangles(corners_tv.as_subclass(torch.Tensor).reshape(-1, 4, 2), rbox_to_corners(rb), atol=1e-9)
    # round trips through both formats
    assert torch.allclose(tv_boxes_to_rbox(tvb), regularize_rbox(rb), atol=1e-9)
    tv8 = rbox_to_tv_boxes(rb, canvas_size=(500, 600), fmt="XYXYXYXY")
    assert torch.allclose(tv_boxes_to_rbox(tv8), regularize_rbox(rb), atol=1e-6)


def test_tv_horizontal_flip_mirrors_the_rectangles():
    from torchvision.transforms.v2 import functional as F

    rb = rand_rboxes(30, seed=5, lo=100, hi=400)
    flipped = tv_boxes_to_rbox(F.horizontal_flip(rbox_to_tv_boxes(rb, canvas_size=(500, 600))))
    c = rbox_to_corners(rb)
    mirrored = torch.stack([600 - c[..., 0], c[..., 1]], dim=-1).flip(1)  # mirror and keep clockwise order
    assert same_rectangles(rbox_to_corners(flipped), mirrored, atol=1e-6)


def test_tv_bad_input():
    with pytest.raises(ValueError, match="BoundingBoxes"):
        tv_boxes_to_rbox(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="fmt"):
        rbox_to_tv_boxes(torch.zeros(2, 5), canvas_size=(10, 10), fmt="XYXY")
