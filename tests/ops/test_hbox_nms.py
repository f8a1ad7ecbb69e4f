"""batched_nms_hbox keeps exactly what torchvision.ops.batched_nms keeps (same indices, same order)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

from lsknet.ops.hbox_nms import batched_nms_hbox


def _proposals(n_per_class: int, classes: int, seed: int, ties: bool = False):
    """RPN-like proposals: per class (pyramid level) boxes of one scale scattered over a 1024 image, clustered
    around a few centres so that many overlap near the threshold."""
    g = torch.Generator().manual_seed(seed)
    boxes, scores, ids = [], [], []
    for c in range(classes):
        size = 16 * 2**c
        centres = torch.rand(n_per_class // 20 + 1, 2, generator=g) * 1024
        pick = torch.randint(0, centres.shape[0], (n_per_class,), generator=g)
        xy = centres[pick] + torch.randn(n_per_class, 2, generator=g) * size * 0.15
        wh = size * (0.7 + 0.6 * torch.rand(n_per_class, 2, generator=g))
        boxes.append(torch.cat([xy - wh / 2, xy + wh / 2], 1))
        s = torch.rand(n_per_class, generator=g)
        if ties:
            s = (s * 8).round() / 8  # many exactly equal scores
        scores.append(s)
        ids.append(torch.full((n_per_class,), c, dtype=torch.long))
    return torch.cat(boxes), torch.cat(scores), torch.cat(ids)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("n", "classes", "ties"), [(2000, 5, False), (700, 4, True), (300, 3, False), (1500, 1, False)]
)
def test_same_result_as_torchvision(threads, n, classes, ties):
    boxes, scores, ids = _proposals(n, classes, seed=n + classes, ties=ties)
    boxes[7] = boxes[3]  # identical boxes
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for thr in (0.5, 0.7, 0.8):
            got = batched_nms_hbox(boxes, scores, ids, thr)
            want = batched_nms(boxes, scores, ids, thr)
            assert torch.equal(got, want), thr
            assert 0 < got.numel() < boxes.shape[0]  # something is suppressed, something kept
    finally:
        torch.set_num_threads(before)


def test_empty_and_single_class_inputs():
    empty = torch.zeros(0, 4)
    assert batched_nms_hbox(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0
    boxes, scores, ids = _proposals(1200, 1, seed=1)
    assert torch.equal(batched_nms_hbox(boxes, scores, ids, 0.7), batched_nms(boxes, scores, ids, 0.7))
