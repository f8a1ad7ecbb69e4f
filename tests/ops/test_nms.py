"""Rotated NMS against a straightforward greedy loop over shapely IoU."""

from __future__ import annotations

import math

import pytest
import shapely
import torch

from lsknet.ops import nms_rotated, rbox_to_corners


def greedy_reference(rboxes, scores, thr, labels=None, max_dets=None, score_threshold=None):
    """Textbook greedy NMS with shapely polygons (the oracle)."""
    polys = shapely.polygons(rbox_to_corners(rboxes.double()).numpy())
    s = scores.double().numpy()
    idx = [i for i in range(len(s)) if score_threshold is None or s[i] > score_threshold]
    idx.sort(key=lambda i: -s[i])  # stable: equal scores keep input order
    keep = []
    for i in idx:
        ok = True
        for k in keep:
            if labels is not None and int(labels[k]) != int(labels[i]):
                continue
            inter = shapely.area(shapely.intersection(polys[i], polys[k]))
            union = shapely.area(polys[i]) + shapely.area(polys[k]) - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep[:max_dets] if max_dets is not None else keep


def clustered_rboxes(n, seed, n_centres=40, size=200.0, dtype=torch.float32):
    """Detections as a detector makes them: jittered copies around a few objects."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_centres, 2, generator=g) * size
    base_wh = torch.rand(n_centres, 2, generator=g) * 30 + 5
    base_t = (torch.rand(n_centres, generator=g) - 0.5) * math.pi
    k = torch.randint(0, n_centres, (n,), generator=g)
    c = centres[k] + torch.randn(n, 2, generator=g) * 3
    wh = base_wh[k] * (1 + 0.2 * torch.randn(n, 2, generator=g)).clamp(0.5, 1.5)
    t = base_t[k] + 0.2 * torch.randn(n, generator=g)
    rb = torch.cat([c, wh, t[:, None]], 1).to(dtype)
    return rb, torch.rand(n, generator=g).to(dtype)


@pytest.mark.parametrize("thr", [0.1, 0.5, 0.8])
def test_matches_greedy_reference(thr):
    rb, sc = clustered_rboxes(300, seed=1)
    got = nms_rotated(rb, sc, thr)
    assert got.dtype == torch.int64
    assert got.tolist() == greedy_reference(rb, sc, thr)
    assert (sc[got][1:] <= sc[got][:-1]).all()


def test_batched_by_class_score_threshold_and_max_dets():
    rb, sc = clustered_rboxes(400, seed=2)
    labels = torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(3))
    got = nms_rotated(rb, sc, 0.3, labels=labels, max_dets=50, score_threshold=0.2)
    assert got.tolist() == greedy_reference(rb, sc, 0.3, labels, max_dets=50, score_threshold=0.2)
    # class-agnostic keeps fewer than per-class
    assert len(nms_rotated(rb, sc, 0.3)) < len(nms_rotated(rb, sc, 0.3, labels=labels))
    # per class == running each class separately
    per_class = set()
    for c in range(5):
        m = torch.nonzero(labels == c).flatten()
        per_class |= set(m[nms_rotated(rb[m], sc[m], 0.3)].tolist())
    assert set(nms_rotated(rb, sc, 0.3, labels=labels).tolist()) == per_class


def test_long_suppression_chain():
    """Boxes sliding by 3 px: neighbours overlap 7/13 > 0.5, every other one 4/16 -> keep, drop, keep, ..."""
    n = 60
    rb = torch.tensor([[i * 3.0, 0.0, 10.0, 10.0, 0.0] for i in range(n)], dtype=torch.float64)
    sc = torch.linspace(1, 0.1, n, dtype=torch.float64)
    got = nms_rotated(rb, sc, 0.5)
    assert got.tolist() == list(range(0, n, 2)) == greedy_reference(rb, sc, 0.5)
    # reversed scores: the chain resolves from the other end
    got = nms_rotated(rb, sc.flip(0), 0.5)
    assert got.tolist() == list(range(n - 1, -1, -2)) == greedy_reference(rb, sc.flip(0), 0.5)


def test_ties_duplicates_and_rotation_symmetry():
    b = [50.0, 50.0, 30.0, 10.0, 0.3]
    rb = torch.tensor(
        [b, [50, 50, 30, 10, 0.3 + math.pi], [50, 50, 10, 30, 0.3 + math.pi / 2], [200, 200, 5, 5, 0], b],
        dtype=torch.float64,
    )
    sc = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.5], dtype=torch.float64)
    assert nms_rotated(rb, sc, 0.99).tolist() == [1, 3]
    assert nms_rotated(rb, sc, 1.0).tolist() == [1, 0, 2, 4, 3]  # nothing is > 1: equal scores in input order


def test_empty_and_bad_input():
    assert nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5).shape == (0,)
    rb, sc = clustered_rboxes(20, seed=4)
    assert nms_rotated(rb, sc, 0.5, score_threshold=2.0).shape == (0,)
    assert nms_rotated(rb, sc, 0.5, max_dets=0).shape == (0,)
    with pytest.raises(ValueError, match="length 20"):
        nms_rotated(rb, sc[:5], 0.5)
    with pytest.raises(ValueError, match="integer"):
        nms_rotated(rb, sc, 0.5, labels=sc)
    with pytest.raises(ValueError, match="NaN"):
        nms_rotated(rb, torch.full((20,), float("nan")), 0.5)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        nms_rotated(rb[:, :4], sc, 0.5)


def test_degenerate_boxes_do_not_suppress():
    rb = torch.tensor([[0, 0, 0, 0, 0.0], [0, 0, 0, 5, 0.2], [0, 0, 4, 4, 0.0]])
    sc = torch.tensor([0.9, 0.8, 0.7])
    assert nms_rotated(rb, sc, 0.0).tolist() == [0, 1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rb, sc = clustered_rboxes(500, seed=5)
    labels = torch.randint(0, 3, (500,))
    cpu = nms_rotated(rb, sc, 0.4, labels=labels)
    gpu = nms_rotated(rb.cuda(), sc.cuda(), 0.4, labels=labels.cuda())
    assert gpu.device.type == "cuda" and gpu.cpu().tolist() == cpu.tolist()


def test_reference_sanity():
    """The oracle itself: two identical boxes -> one kept; far apart -> both kept."""
    rb = torch.tensor([[0, 0, 4, 4, 0.0], [0, 0, 4, 4, 0.0], [50, 50, 4, 4, 0.0]])
    assert greedy_reference(rb, torch.tensor([0.9, 0.8, 0.7]), 0.5) == [0, 2]
