"""Exact IoU / IoF against shapely (the oracle) on random and hard cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lsknet.ops.iou as iou_mod
from lsknet.ops import poly_iof, poly_iou, rbox_iof, rbox_iou, rbox_to_corners

PI = math.pi


def rand_rboxes(n, seed=0, lo=0.0, hi=100.0, size=(1.0, 40.0), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g, dtype=torch.float64) * (hi - lo) + lo
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * (size[1] - size[0]) + size[0]
    t = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 4 * PI
    return torch.cat([c, wh, t], 1).to(dtype)


def shapely_overlaps(pa: np.ndarray, pb: np.ndarray, mode: str = "iou", aligned: bool = False) -> np.ndarray:
    """Oracle: polygons (N, 4, 2) x (M, 4, 2) in float64 -> IoU / IoF with shapely 2."""
    a = shapely.polygons(np.asarray(pa, dtype=np.float64))
    b = shapely.polygons(np.asarray(pb, dtype=np.float64))
    if not aligned:
        a, b = a[:, None], b[None, :]
    inter = shapely.area(shapely.intersection(a, b))
    aa, ab = shapely.area(a), shapely.area(b)
    denom = aa if mode == "iof" else aa + ab - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, inter / np.where(denom > 0, denom, 1), 0.0)


def corners_np(rb: torch.Tensor) -> np.ndarray:
    return rbox_to_corners(rb.double()).numpy()


# ----------------------------------------------------------------------------------------------- random
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 2e-6)])
def test_rbox_iou_matches_shapely(dtype, atol):
    a, b = rand_rboxes(150, seed=1, dtype=dtype), rand_rboxes(120, seed=2, dtype=dtype)
    got = rbox_iou(a, b)
    assert got.dtype == dtype and got.shape == (150, 120)
    ref = shapely_overlaps(corners_np(a), corners_np(b))  # oracle on the same (rounded) boxes
    assert (ref > 0).mean() > 0.02  # the case is not trivially all-zero
    np.testing.assert_allclose(got.double().numpy(), ref, atol=atol, rtol=0)
    ref_iof = shapely_overlaps(corners_np(a), corners_np(b), "iof")
    np.testing.assert_allclose(rbox_iof(a, b).double().numpy(), ref_iof, atol=atol)


def test_aligned_matches_diagonal():
    a, b = rand_rboxes(200, seed=3, hi=40), rand_rboxes(200, seed=4, hi=40)
    ref = shapely_overlaps(corners_np(a), corners_np(b), aligned=True)
    np.testing.assert_allclose(rbox_iou(a, b, aligned=True).numpy(), ref, atol=1e-10)
    np.testing.assert_allclose(
        rbox_iof(a, b, aligned=True).numpy(), shapely_overlaps(corners_np(a), corners_np(b), "iof", True), atol=1e-10
    )
    with pytest.raises(ValueError, match="same number"):
        rbox_iou(a, b[:5], aligned=True)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(-1.0, 1.0), min_size=10, max_size=10),
    st.sampled_from([1.0, 30.0, 1e4]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_rbox_iou_property(vals, offset, dtype):
    """Overlapping pairs of boxes with arbitrary sizes, angles and positions (incl. 1e4 px)."""
    v = vals
    a = torch.tensor([[offset + v[0] * 5, offset + v[1] * 5, 1 + abs(v[2]) * 20, 1 + abs(v[3]) * 20, v[4] * 4]])
    b = torch.tensor([[offset + v[5] * 5, offset + v[6] * 5, 1 + abs(v[7]) * 20, 0.1 + abs(v[8]) * 20, v[9] * 4]])
    a, b = a.to(dtype), b.to(dtype)
    ref = shapely_overlaps(corners_np(a), corners_np(b))
    got = rbox_iou(a, b).double().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-9 if dtype == torch.float64 else 1e-6)
    np.testing.assert_allclose(rbox_iou(b, a).double().numpy(), ref.T, atol=1e-6)  # symmetric


def test_poly_iou_convex_and_nonconvex_quads():
    g = torch.Generator().manual_seed(5)
    q = torch.rand(250, 4, 2, generator=g, dtype=torch.float64) * 50
    valid = shapely.is_valid(shapely.polygons(q.numpy()))  # drop self-intersecting orders
    q = q[torch.from_numpy(valid)]
    polys = shapely.polygons(q.numpy())
    convex = np.isclose(shapely.area(polys), shapely.area(shapely.convex_hull(polys)))
    assert 15 < (~convex).sum() < len(q) - 15  # both kinds present
    got = poly_iou(q, q[:60])
    np.testing.assert_allclose(got.numpy(), shapely_overlaps(q.numpy(), q[:60].numpy()), atol=1e-10)
    np.testing.assert_allclose(
        poly_iof(q.reshape(-1, 8), q[:60]).numpy(), shapely_overlaps(q.numpy(), q[:60].numpy(), "iof"), atol=1e-10
    )
    # convex only, both orientations
    qc = q[torch.from_numpy(convex)]
    np.testing.assert_allclose(poly_iou(qc, qc.flip(1)).numpy(), shapely_overlaps(qc.numpy(), qc.numpy()), atol=1e-10)


def test_dota_like_quads_at_large_coordinates_float32():
    """Real-looking DOTA quads: perturbed rectangles at 1e4 px in float32."""
    rb = rand_rboxes(300, seed=6, lo=9000, hi=9300, size=(5, 80))
    g = torch.Generator().manual_seed(7)
    q = (rbox_to_corners(rb) + torch.randn(300, 4, 2, generator=g, dtype=torch.float64)).float()
    ref = shapely_overlaps(q.double().numpy(), q.double().numpy())
    np.testing.assert_allclose(poly_iou(q, q).double().numpy(), ref, atol=2e-6)


# ----------------------------------------------------------------------------------------------- hard cases
def rb(*rows):
    return torch.tensor(rows, dtype=torch.float64)


HARD = {
    "identical": (rb([50, 50, 30, 10, 0.3]), rb([50, 50, 30, 10, 0.3]), 1.0),
    "identical_axis": (rb([5, 5, 4, 2, 0.0]), rb([5, 5, 4, 2, 0.0]), 1.0),
    "half_turn": (rb([50, 50, 30, 10, 0.3]), rb([50, 50, 30, 10, 0.3 + PI]), 1.0),
    "quarter_turn_swapped": (rb([50, 50, 30, 10, 0.3]), rb([50, 50, 10, 30, 0.3 + PI / 2]), 1.0),
    "square_quarter_turn": (rb([7, 7, 10, 10, 0.2]), rb([7, 7, 10, 10, 0.2 - PI / 2]), 1.0),
    "disjoint": (rb([0, 0, 2, 2, 0.1]), rb([100, 100, 2, 2, 0.1]), 0.0),
    "disjoint_close_envelopes": (rb([0, 0, 10, 1, PI / 4]), rb([6, 0, 10, 1, PI / 4]), 0.0),
    "nested": (rb([0, 0, 10, 10, 0.7]), rb([0.5, -0.3, 2, 3, -0.2]), 6.0 / 100.0),
    "shared_edge_axis": (rb([0, 0, 2, 2, 0.0]), rb([2, 0, 2, 2, 0.0]), 0.0),
    "shared_edge_rotated": (rb([0, 0, 2, 2, 0.5]), rb([2 * math.cos(0.5), 2 * math.sin(0.5), 2, 2, 0.5]), 0.0),
    "half_overlap_same_lines": (rb([0, 0, 4, 2, 0.0]), rb([2, 0, 4, 2, 0.0]), 1.0 / 3.0),
    "half_overlap_rotated": (rb([0, 0, 4, 2, 1.1]), rb([2 * math.cos(1.1), 2 * math.sin(1.1), 4, 2, 1.1]), 1.0 / 3.0),
    "touching_corners": (rb([0, 0, 2, 2, 0.0]), rb([2, 2, 2, 2, 0.0]), 0.0),
    "touching_corner_rotated": (rb([0, 0, 2, 2, PI / 4]), rb([2 * math.sqrt(2), 0, 2, 2, PI / 4]), 0.0),
    "cross": (rb([0, 0, 10, 2, 0.0]), rb([0, 0, 10, 2, PI / 2]), 4.0 / 36.0),
    "zero_area": (rb([0, 0, 0, 5, 0.3]), rb([0, 0, 3, 5, 0.3]), 0.0),
    "both_zero": (rb([0, 0, 0, 0, 0.0]), rb([0, 0, 0, 0, 0.0]), 0.0),
    "tiny": (rb([1e4, 1e4, 1e-3, 2e-3, 0.4]), rb([1e4, 1e4, 1e-3, 2e-3, 0.4]), 1.0),
    "large_coordinates": (rb([12345.5, 9876.25, 300, 40, 0.123]), rb([12345.5 + 150, 9876.25, 300, 40, 0.123]), None),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", sorted(HARD))
def test_hard_cases(case, dtype):
    a, b, expected = HARD[case]
    a, b = a.to(dtype), b.to(dtype)
    ref = shapely_overlaps(corners_np(a), corners_np(b))[0, 0]
    got = rbox_iou(a, b)
    assert torch.isfinite(got).all()
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    if case == "tiny" and dtype == torch.float32:
        tol = 1e-2  # 1e-3 px boxes at 1e4 px: float32 rounding of the inputs themselves
    if expected is not None:
        assert abs(got.item() - expected) <= tol, (got.item(), expected)
    assert abs(got.item() - ref) <= max(tol, 1e-9), (got.item(), ref)
    assert abs(rbox_iou(b, a).item() - got.item()) <= tol
    assert abs(rbox_iou(a, b, aligned=True).item() - got.item()) <= 1e-12


def test_identical_is_exactly_one_in_float32():
    a = rand_rboxes(500, seed=8, lo=0, hi=1e4, dtype=torch.float32)
    assert torch.equal(rbox_iou(a, a, aligned=True), torch.ones(500))


def test_shared_edges_in_a_tiling_give_zero_and_union_adds_up():
    """A rotated 4x4 tiling: neighbours share edges exactly -> IoU 0; IoF of each tile against the whole is 1."""
    t = 0.37
    f64 = torch.float64
    u, v = torch.tensor([math.cos(t), math.sin(t)], dtype=f64), torch.tensor([-math.sin(t), math.cos(t)], dtype=f64)
    ctr = [(i * 3.0) * u + (j * 2.0) * v + 500.0 for i in range(4) for j in range(4)]
    tiles = torch.stack([torch.cat([c, torch.tensor([3.0, 2.0, t], dtype=f64)]) for c in ctr])
    iou = rbox_iou(tiles, tiles)
    assert torch.allclose(iou, torch.eye(16, dtype=torch.float64), atol=1e-9)
    whole = torch.cat([(1.5 * 3.0) * u + (1.5 * 2.0) * v + 500.0, torch.tensor([12.0, 8.0, t], dtype=f64)])[None]
    assert torch.allclose(rbox_iof(tiles, whole), torch.ones(16, 1, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(rbox_iof(whole, tiles), torch.full((1, 16), 1 / 16, dtype=torch.float64), atol=1e-9)


def test_empty_inputs():
    e, x = torch.zeros(0, 5), rand_rboxes(3).float()
    assert rbox_iou(e, x).shape == (0, 3) and rbox_iou(x, e).shape == (3, 0)
    assert rbox_iou(e, e, aligned=True).shape == (0,)
    assert poly_iou(torch.zeros(0, 8), torch.zeros(2, 4, 2)).shape == (0, 2)
    assert rbox_iof(e, e).shape == (0, 0)


def test_chunking_gives_the_same_answer(monkeypatch):
    a, b = rand_rboxes(60, seed=9, hi=50), rand_rboxes(70, seed=10, hi=50)
    full = rbox_iou(a, b)
    monkeypatch.setattr(iou_mod, "_MAX_PAIRS", 7)
    monkeypatch.setattr(iou_mod, "_RECT_CHUNK", 7)
    monkeypatch.setattr(iou_mod, "_MAX_ENVELOPE", 100)
    assert torch.equal(rbox_iou(a, b), full)
    np.testing.assert_allclose(full.numpy(), shapely_overlaps(corners_np(a), corners_np(b)), atol=1e-10)


@pytest.mark.parametrize(
    "a, match",
    [
        (torch.zeros(2, 4), r"\(N, 5\)"),
        (torch.zeros(2, 5, dtype=torch.int32), "floating"),
        (torch.tensor([[0.0, 0.0, float("inf"), 1.0, 0.0]]), "NaN or inf"),
        (torch.tensor([[0.0, 0.0, 1.0, 1.0, float("nan")]]), "NaN or inf"),
    ],
)
def test_bad_rboxes(a, match):
    with pytest.raises(ValueError, match=match):
        rbox_iou(a, torch.zeros(1, 5))
    with pytest.raises(ValueError, match=match):
        rbox_iof(torch.zeros(1, 5), a)


def test_self_intersecting_quad_is_rejected():
    bowtie = torch.tensor([[[0.0, 0.0], [2.0, 2.0], [2.0, 0.0], [0.0, 2.0]]])
    with pytest.raises(ValueError, match="self-intersecting"):
        poly_iou(bowtie, bowtie)
    with pytest.raises(ValueError, match=r"\(N, 4, 2\)"):
        poly_iou(torch.zeros(2, 3, 2), torch.zeros(1, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    a, b = rand_rboxes(300, seed=11), rand_rboxes(200, seed=12)
    for dtype in (torch.float32, torch.float64):
        cpu = rbox_iou(a.to(dtype), b.to(dtype))
        gpu = rbox_iou(a.to(dtype).cuda(), b.to(dtype).cuda())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-7, rtol=0)
