"""DOTA evaluation on hand-computed cases: difficult handling, strict threshold, duplicates, 11-point vs area."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lsknet.data.dota import DOTAAnnotation, SkipReport, Task1Detections, read_labeltxt_dir, write_task1_dir
from lsknet.errors import DatasetFormatError, DataSkipWarning
from lsknet.evaluation.dota import average_precision, evaluate_dota


def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def gt_of(*objects: tuple[np.ndarray, str, int], image: str = "img") -> dict[str, DOTAAnnotation]:
    return {
        image: DOTAAnnotation(
            np.stack([o[0] for o in objects]), [o[1] for o in objects], np.array([o[2] for o in objects])
        )
    }


def dets_of(*rows: tuple[str, float, np.ndarray]) -> Task1Detections:
    return Task1Detections(
        np.array([r[0] for r in rows], dtype=object), np.array([r[1] for r in rows]), np.stack([r[2] for r in rows])
    )


CLS = ["a", "b"]


def ap(dets, gt, **kw):
    return evaluate_dota({"a": dets}, gt, CLS, coco=False, **kw).per_class["a"]


def test_ground_truth_as_detections_is_one_and_nothing_is_zero():
    gt = gt_of((box(0, 0, 10, 10), "a", 0), (box(20, 20, 40, 30), "a", 0), (box(50, 0, 60, 10), "b", 0))
    dets = {
        "a": dets_of(("img", 0.9, box(0, 0, 10, 10)), ("img", 0.8, box(20, 20, 40, 30))),
        "b": dets_of(("img", 0.5, box(50, 0, 60, 10))),
    }
    res = evaluate_dota(dets, gt, CLS)
    assert res.per_class == {"a": 1.0, "b": 1.0} and res.mAP == 1.0 and res.mAP_50_95 == pytest.approx(1.0)
    none = evaluate_dota({}, gt, CLS)
    assert none.per_class == {"a": 0.0, "b": 0.0} and none.mAP == 0.0


def test_strict_threshold_official_vs_mmrotate():
    gt = gt_of((box(0, 0, 10, 10), "a", 0))
    half = dets_of(("img", 0.9, box(0, 0, 10, 5)))  # IoU exactly 0.5
    assert ap(half, gt) == 0.0  # official: IoU must be > 0.5
    assert ap(half, gt, mode="mmrotate") == 1.0  # mmrotate: >= 0.5
    assert ap(dets_of(("img", 0.9, box(0, 0, 10, 5.01))), gt) == 1.0
    assert ap(dets_of(("img", 0.9, box(0, 0, 10, 4.99))), gt, mode="mmrotate") == 0.0
    assert ap(dets_of(("img", 0.9, box(0, 0, 10, 5.01))), gt, iou_thr=0.6) == 0.0


def test_difficult_is_ignored_not_false_positive():
    gt = gt_of((box(0, 0, 10, 10), "a", 0), (box(30, 0, 40, 10), "a", 1))
    dets = dets_of(
        ("img", 0.9, box(30, 0, 40, 10)),  # matches the difficult object: ignored
        ("img", 0.85, box(100, 100, 110, 110)),  # false positive
        ("img", 0.8, box(0, 0, 10, 10)),  # true positive
    )
    # official: tp=[0,0,1] fp=[0,1,0], 1 positive -> recall [0,0,1], precision [0,0,.5]
    assert ap(dets, gt) == pytest.approx(0.5)
    assert ap(dets, gt, metric="area") == pytest.approx(0.5)
    # mmrotate: difficult is a positive -> tp=[1,0,1], 2 positives, recall [.5,.5,1], precision [1,.5,2/3]
    assert ap(dets, gt, mode="mmrotate") == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert ap(dets, gt, mode="mmrotate", metric="area") == pytest.approx(0.5 + 0.5 * 2 / 3)
    # truncated objects (difficult 2) are difficult too
    gt2 = gt_of((box(0, 0, 10, 10), "a", 0), (box(30, 0, 40, 10), "a", 2))
    assert ap(dets, gt2) == pytest.approx(0.5)


def test_duplicates_and_eleven_point_vs_area(caplog):
    gt = gt_of((box(0, 0, 10, 10), "a", 0), (box(20, 0, 30, 10), "a", 0), (box(40, 0, 50, 10), "a", 0))
    dets = dets_of(
        ("img", 0.9, box(0, 0, 10, 10)),  # TP
        ("img", 0.8, box(70, 0, 80, 10)),  # FP
        ("img", 0.7, box(20, 0, 30, 10)),  # TP
        ("img", 0.6, box(0, 0, 10, 10)),  # duplicate of the first: FP
    )
    # recall [1/3,1/3,2/3,2/3], precision [1,1/2,2/3,1/2]
    assert ap(dets, gt, metric="voc07") == pytest.approx(6 / 11)
    exact_copy = Task1Detections.concat([dets, dets_of(("img", 0.6, box(0, 0, 10, 10)))])
    with caplog.at_level("WARNING", logger="lsknet.evaluation.dota"):
        ap(exact_copy, gt)
    assert "1 exact duplicate detections" in caplog.text
    assert ap(dets, gt, metric="area") == pytest.approx(1 / 3 + 2 / 9)


def test_best_match_already_taken_is_false_positive():
    gt = gt_of((box(0, 0, 10, 10), "a", 0), (box(1, 0, 11, 10), "a", 0))
    dets = dets_of(("img", 0.9, box(0, 0, 10, 10)), ("img", 0.8, box(0.2, 0, 10.2, 10)))
    # the second detection's best object (IoU .96) is taken; the other one (IoU .85) is not used (VOC rule)
    assert ap(dets, gt) == pytest.approx(6 / 11)
    assert ap(dets, gt, metric="area") == pytest.approx(0.5)


def test_polygon_iou_differs_from_rectangle_iou():
    # a kite-shaped quad: its min-area rectangle is much larger than the polygon
    kite = np.array([[0, 5], [5, 0], [20, 5], [5, 10]], dtype=np.float64)
    gt = gt_of((kite, "a", 0))
    det = dets_of(("img", 0.9, box(0, 0, 20, 10)))  # polygon IoU = 100/200 = 0.5 -> not > 0.5
    assert ap(det, gt) == 0.0
    assert ap(det, gt, mode="mmrotate") == 1.0  # rectangle of the kite ~ the box itself


def test_absent_classes_unknown_images_and_strict():
    gt = gt_of((box(0, 0, 10, 10), "a", 0))
    dets = {"a": dets_of(("img", 0.9, box(0, 0, 10, 10)), ("other", 0.95, box(0, 0, 10, 10)))}
    with pytest.warns(DataSkipWarning, match="images missing from the ground truth"):
        res = evaluate_dota(dets, gt, CLS)
    assert res.per_class == {"a": 1.0, "b": None}
    with pytest.warns(DataSkipWarning, match="outside the class list"):
        evaluate_dota({}, gt_of((box(0, 0, 10, 10), "zzz", 0)), CLS)
    assert res.mAP == 1.0 and res.mAP_all_classes == 0.5
    assert res.skipped == {"detections for images missing from the ground truth": 1}
    with pytest.raises(DatasetFormatError, match="missing from the ground truth"):
        evaluate_dota(dets, gt, CLS, strict=True)


def test_average_precision_edge_cases():
    assert average_precision(np.array([]), np.array([]), "voc07") == 0.0
    assert average_precision(np.array([1.0]), np.array([1.0]), "area") == 1.0
    assert average_precision(np.array([0.5]), np.array([1.0]), "coco") == pytest.approx(51 / 101)
    with pytest.raises(ValueError):
        average_precision(np.array([1.0]), np.array([1.0]), "bogus")


def test_folders_json_csv_and_curves(tmp_path: Path):
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    (gt_dir / "img.txt").write_text("imagesource:x\n0 0 10 0 10 10 0 10 a 0\n20 0 30 0 30 10 20 10 a 0\n")
    (gt_dir / "empty.txt").write_text("")
    write_task1_dir(tmp_path / "det", {"a": dets_of(("img", 0.9, box(0, 0, 10, 10)), ("img", 0.5, box(50, 0, 60, 9)))})
    res = evaluate_dota(tmp_path / "det", gt_dir, CLS)
    assert res.num_images == 2 and res.num_gt == {"a": 2, "b": 0} and res.num_det == {"a": 2, "b": 0}
    assert res.per_class["a"] == pytest.approx(6 / 11)
    res.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["per_class"] == {"a": pytest.approx(6 / 11), "b": None}
    assert {"mAP", "mAP_all_classes", "mAP_50_95"} <= data.keys()
    res.write_csv(tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[1].startswith("a,0.545")
    paths = res.plot_pr_curves(tmp_path / "curves")
    assert [p.name for p in paths] == ["pr_a.png"] and paths[0].stat().st_size > 1000


def test_bad_detection_lines_are_counted(tmp_path: Path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "img.txt").write_text("0 0 10 0 10 10 0 10 a 0\n")
    (tmp_path / "det").mkdir()
    (tmp_path / "det" / "Task1_a.txt").write_text(
        "img 0.9 0 0 10 0 10 10 0 10\nimg 0.8 0 0 10\nimg x 0 0 10 0 10 10 0 10\nimg 0.5 0 0 10 10 10 0 0 20\n"
    )
    (tmp_path / "det" / "Task1_zzz.txt").write_text("")
    report = SkipReport()
    with pytest.warns(DataSkipWarning) as caught:
        res = evaluate_dota(tmp_path / "det", tmp_path / "gt", CLS, report=report)
    assert any("Task1_a.txt:2: malformed detection line" in str(w.message) for w in caught)
    assert res.per_class["a"] == 1.0
    assert report.counts == {
        "malformed detection line": 1,
        "non-numeric detection value": 1,
        "detection file of unknown class": 1,
        "self-intersecting detection polygons": 1,
    }
    with pytest.raises(DatasetFormatError):
        evaluate_dota(tmp_path / "det", tmp_path / "gt", CLS, strict=True)
    with pytest.raises(DatasetFormatError, match="unknown metric"):
        evaluate_dota(tmp_path / "det", tmp_path / "gt", CLS, metric="map")


@pytest.mark.realdata
def test_real_ground_truth_scores_one(shared_data: Path):
    gt = read_labeltxt_dir(shared_data / "dota_devkit_example" / "labelTxt")
    dets = {}
    for image_id, ann in gt.items():
        for name in set(ann.names):
            sel = [i for i, n in enumerate(ann.names) if n == name]
            d = Task1Detections(
                np.array([image_id] * len(sel), dtype=object), np.linspace(1, 0.5, len(sel)), ann.polys[sel]
            )
            dets[name] = Task1Detections.concat([dets.get(name, Task1Detections()), d])
    for mode in ("official", "mmrotate"):
        res = evaluate_dota(dets, gt, "dota1.0", mode=mode)
        present = {c: v for c, v in res.per_class.items() if v is not None}
        assert len(present) == 12 and all(v == pytest.approx(1.0) for v in present.values()), mode
