"""Exact IoU of boxes whose edges lie on (almost) the same line, against shapely.

Quarter-turn angles rounded to float32 (or nudged by 1e-10..1e-6 rad) tilt integer boxes by a hair: edges of
neighbours then lie within the tie tolerance of each other's lines at one end only. Such pairs must still get
their true overlap (the same from both sides), not lose or double the shared piece of boundary.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch

from lsknet.ops import poly_iou, rbox_iou, rbox_to_corners


def _shapely_iou(rb: torch.Tensor) -> np.ndarray:
    p = shapely.polygons(rbox_to_corners(rb.double()).numpy())
    inter = shapely.area(shapely.intersection(p[:, None], p[None]))
    area = shapely.area(p)
    return inter / (area[:, None] + area[None] - inter)


def _grid_boxes(seed: int, tilt: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = 120
    xy = torch.randint(0, 25, (n, 2), generator=g).double()
    wh = torch.randint(1, 11, (n, 2), generator=g).double()
    theta = torch.randint(0, 4, (n, 1), generator=g).double() * (math.pi / 2)
    if tilt == "float32":
        theta = theta.float().double()
    else:
        theta = theta + 10 ** (-torch.rand(n, 1, generator=g) * 4 - 6) * torch.randn(n, 1, generator=g).sign()
    return torch.cat([xy, wh, theta], 1)


@pytest.mark.parametrize("tilt", ["float32", "nudged"])
@pytest.mark.parametrize("seed", [0, 1])
def test_nearly_collinear_edges_match_shapely(seed, tilt):
    rb = _grid_boxes(seed, tilt)
    ref = _shapely_iou(rb)
    got = rbox_iou(rb, rb).numpy()
    assert np.abs(got - ref).max() < 1e-6
    assert np.abs(got - got.T).max() < 1e-6  # the same from both sides
    assert np.abs(poly_iou(rbox_to_corners(rb), rbox_to_corners(rb)).numpy() - ref).max() < 1e-6


def test_float32_right_angle_neighbours():
    """Box 2 (w 11, h 6 at 3/2 pi in float32) shares the line x = 17 with box 1: overlap 2 x 6 of union 76."""
    rb = torch.tensor([[18.0, 19.0, 2.0, 11.0, 0.0], [20.0, 24.0, 11.0, 6.0, 3 * math.pi / 2]], dtype=torch.float32)
    iou = rbox_iou(rb.double(), rb.double())
    assert iou[0, 1].item() == pytest.approx(12 / 76, abs=1e-7)
    assert iou[1, 0].item() == pytest.approx(12 / 76, abs=1e-7)
