"""Rotated NMS on dense clusters, ties and degenerate boxes against the shapely greedy oracle, through both of
``nms_rotated``'s strategies (block-wise greedy for small sets, parallel rounds over all candidate pairs for large
ones, each with the dense-matrix and the sweep-and-prune pair search)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import lsknet.ops.nms as nms_mod
from lsknet.ops import nms_rotated

from .test_nms import clustered_rboxes, greedy_reference


@pytest.fixture(params=["blocks", "small_blocks", "blocks_sweep", "rounds"])
def strategy(request, monkeypatch):
    """Force one strategy: blocks of the default size, tiny blocks (many block boundaries), blocks whose pairs are
    found by sweep and prune in many small chunks instead of the dense matrix, or rounds (small chunks)."""
    monkeypatch.setattr(nms_mod, "_DENSE", math.inf if request.param == "rounds" else -1.0)
    if request.param == "small_blocks":
        monkeypatch.setattr(nms_mod, "_BLOCK", 4)
        monkeypatch.setattr(nms_mod, "_BLOCK_MAX", 16)
    if request.param in ("blocks_sweep", "rounds"):
        monkeypatch.setattr(nms_mod, "_DENSE_PAIRS", 0)
        monkeypatch.setattr(nms_mod, "_MAX_CANDIDATES_CPU", 300)
    return request.param


def dense_cluster(n, n_objects, seed, dtype=torch.float32, square=60.0):
    """``n`` detections jittered around ``n_objects`` objects crowded into a small square (many overlap)."""
    return clustered_rboxes(n, seed, n_centres=n_objects, size=square, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("thr", [0.1, 0.7])
def test_dense_clusters_match_oracle(strategy, dtype, thr):
    rb, sc = dense_cluster(150, n_objects=5, seed=int(thr * 10), dtype=dtype)
    assert nms_rotated(rb, sc, thr).tolist() == greedy_reference(rb, sc, thr)


def test_dense_multiclass_score_threshold_max_dets(strategy):
    rb, sc = dense_cluster(250, n_objects=8, seed=3)
    labels = torch.randint(0, 4, (250,), generator=torch.Generator().manual_seed(4))
    got = nms_rotated(rb, sc, 0.3, labels=labels, max_dets=60, score_threshold=0.15)
    assert got.tolist() == greedy_reference(rb, sc, 0.3, labels, max_dets=60, score_threshold=0.15)


@pytest.mark.parametrize("thr", [0.1, 0.2, 0.25])
def test_grid_boxes_with_exact_iou_ties(strategy, thr):
    """Axis-aligned integer boxes (every corner, area and overlap exact, so shapely's IoU is exact too): many pairs
    have IoU exactly 0.1, 0.2 or 0.25, which is not > thr; many scores tie (input order decides)."""
    g = torch.Generator().manual_seed(5)
    n = 200
    xy = torch.randint(0, 25, (n, 2), generator=g)
    wh = torch.randint(1, 11, (n, 2), generator=g)
    rb = torch.cat([xy, wh, torch.zeros(n, 1)], 1).double()
    sc = torch.randint(0, 4, (n,), generator=g).double()
    # exact tie count by integer arithmetic (doubled coordinates): 4 * inter / (4 * union) == thr
    lo, hi = 2 * xy - wh, 2 * xy + wh
    ov = (torch.minimum(hi[:, None], hi[None]) - torch.maximum(lo[:, None], lo[None])).clamp_min(0).prod(-1)
    area = (2 * wh).prod(-1)
    union = area[:, None] + area[None] - ov
    num, den = Fraction(thr).limit_denominator(100).as_integer_ratio()
    assert int((ov * den == union * num).triu(1).sum()) > 10
    assert nms_rotated(rb, sc, thr).tolist() == greedy_reference(rb, sc, thr)


@pytest.mark.parametrize("thr", [0.0, 0.5])
def test_duplicates_and_degenerate_boxes_in_a_cluster(strategy, thr):
    rb, sc = dense_cluster(150, n_objects=4, seed=6, dtype=torch.float64)
    rb[10:20] = rb[0]  # exact duplicates of the first box (equal scores keep input order)
    sc[10:20] = sc[0]
    rb[30:40, 2] = 0.0  # zero width
    rb[40:45, 2:4] = 0.0  # points
    assert nms_rotated(rb, sc, thr).tolist() == greedy_reference(rb, sc, thr)


@pytest.mark.parametrize("thr", [0.1, 0.7])
def test_negative_sizes_are_rectangles_too(strategy, thr):
    """A negative width or height describes the same rectangle (shapely sees the same corners)."""
    rb, sc = dense_cluster(200, n_objects=6, seed=9, dtype=torch.float64)
    rb[::3, 2] *= -1
    rb[1::4, 3] *= -1
    assert nms_rotated(rb, sc, thr).tolist() == greedy_reference(rb, sc, thr)


def test_long_chain_across_blocks(strategy):
    """300 boxes sliding by 3 px (neighbours IoU 7/13, next-but-one 4/16): keep, drop, keep, ... across blocks."""
    n = 300
    rb = torch.tensor([[i * 3.0, 0.0, 10.0, 10.0, 0.0] for i in range(n)], dtype=torch.float64)
    sc = torch.linspace(1, 0.1, n, dtype=torch.float64)
    assert nms_rotated(rb, sc, 0.5).tolist() == list(range(0, n, 2))


def test_right_angle_float32_boxes_sharing_an_edge_line():
    """Quarter-turn angles rounded to float32 tilt boxes by ~1e-8 rad; neighbours sharing an edge line must still be
    judged by their true overlap (IoU 12 / 76 = 0.158 here), as shapely does."""
    rb = torch.tensor([[18.0, 19.0, 2.0, 11.0, 0.0], [20.0, 24.0, 11.0, 6.0, 3 * math.pi / 2]], dtype=torch.float32)
    sc = torch.tensor([0.9, 0.8])
    for thr in (0.1, 0.15, 0.16):
        assert nms_rotated(rb, sc, thr).tolist() == greedy_reference(rb, sc, thr), thr
