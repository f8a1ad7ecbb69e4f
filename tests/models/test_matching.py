"""The shared assigner / sampler (lsknet.models.matching) against a loop re-derivation of MMDetection's
MaxIoUAssigner (gt_max_assign_all=True) and RandomSampler, and hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from lsknet.models.matching import IGNORED, NEGATIVE, MaxIoUAssigner, RandomSampler


def _reference(iou: torch.Tensor, pos_thr: float, neg_thr: float, min_pos: float, low_quality: bool) -> list[int]:
    """The reference loop over boxes and ground truths, in the module's encoding (gt index / NEGATIVE / IGNORED)."""
    num_gt, num_boxes = iou.shape
    # thresholds compared in the overlaps' float32, as the tensor comparisons of the reference do
    pos_thr, neg_thr, min_pos = (float(torch.tensor(t, dtype=iou.dtype)) for t in (pos_thr, neg_thr, min_pos))
    out = []
    for j in range(num_boxes):
        column = iou[:, j].tolist()
        best = max(column)
        value = IGNORED
        if 0 <= best < neg_thr:
            value = NEGATIVE
        if best >= pos_thr:
            value = column.index(best)  # first maximum, as argmax
        out.append(value)
    if low_quality:
        for i in range(num_gt):
            gt_best = max(iou[i].tolist())
            if gt_best >= min_pos:
                for j in range(num_boxes):
                    if iou[i, j] == gt_best:
                        out[j] = i
    return out


def _by_index(iou: torch.Tensor):
    return lambda a, b: iou[a.long()][:, b.long()]


def test_hand_computed_case():
    iou = torch.tensor([[0.8, 0.2, 0.25, 0.0, 0.35], [0.1, 0.6, 0.2, 0.0, 0.3]])
    gts, boxes = torch.arange(2.0), torch.arange(5.0)
    strict = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=False)
    matches, max_iou = strict(_by_index(iou), gts, boxes)
    assert matches.tolist() == [0, IGNORED, NEGATIVE, NEGATIVE, IGNORED]
    torch.testing.assert_close(max_iou, torch.tensor([0.8, 0.6, 0.25, 0.0, 0.35]))
    low = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
    assert low(_by_index(iou), gts, boxes)[0].tolist() == [0, 1, NEGATIVE, NEGATIVE, IGNORED]
    assert low(_by_index(iou), gts[:0], boxes)[0].tolist() == [NEGATIVE] * 5  # no ground truth


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk", [1 << 22, 3])
def test_random_overlaps_match_the_reference_loop(seed, chunk):
    gen = torch.Generator().manual_seed(seed)
    num_gt, num_boxes = 1 + seed % 4, 40
    iou = (torch.rand(num_gt, num_boxes, generator=gen) * 10).round() / 10  # ties on purpose
    assigner = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, chunk_size=chunk)
    matches, _ = assigner(_by_index(iou), torch.arange(float(num_gt)), torch.arange(float(num_boxes)))
    assert matches.tolist() == _reference(iou, 0.7, 0.3, 0.3, True)


def test_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        MaxIoUAssigner(0.7, 0.3, 0.3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        RandomSampler(256, 0.5)  # type: ignore[misc]


def test_random_sampler_respects_budget_and_fraction():
    matches = torch.tensor([0] * 30 + [NEGATIVE] * 100 + [IGNORED] * 10)
    pos, neg = RandomSampler(num=64, pos_fraction=0.25)(matches, generator=torch.Generator().manual_seed(0))
    assert pos.numel() == 16 and neg.numel() == 48 and len(set(pos.tolist())) == 16
    assert bool((matches[pos] >= 0).all()) and bool((matches[neg] == NEGATIVE).all())
    pos, neg = RandomSampler(num=8, pos_fraction=0.5)(torch.tensor([NEGATIVE, NEGATIVE, 1]))  # too few: all
    assert pos.tolist() == [2] and sorted(neg.tolist()) == [0, 1]
