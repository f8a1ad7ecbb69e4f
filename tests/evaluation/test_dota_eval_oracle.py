"""The vectorised DOTA evaluator against a straightforward per-detection loop over shapely polygons.

``reference_eval`` follows DOTA_devkit's ``voc_eval`` line by line (numpy + shapely instead of the compiled
polyiou); ``benchmarks/bench_dota_eval.py`` times it as the baseline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsknet.data.dota import DOTAAnnotation, Task1Detections, read_labeltxt_dir
from lsknet.data.synthetic import SYNTH_CLASSES, generate_dota_scenes
from lsknet.evaluation.dota import evaluate_dota

shapely = pytest.importorskip("shapely")


def _ap(rec: np.ndarray, prec: np.ndarray, use_07: bool) -> float:
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap += p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def reference_eval(
    dets: dict[str, Task1Detections],
    gt: dict[str, DOTAAnnotation],
    classes,
    iou_thr: float = 0.5,
    use_07: bool = True,
    mode: str = "official",
) -> dict[str, float | None]:
    """Per-class AP by a per-detection loop (DOTA_devkit voc_eval semantics; mmrotate variant on request)."""
    from shapely.geometry import Polygon

    def shape(quad):
        poly = Polygon(quad)
        return poly.minimum_rotated_rectangle if mode == "mmrotate" else poly

    out: dict[str, float | None] = {}
    for name in classes:
        recs = {}
        npos = 0
        for image_id, ann in gt.items():
            sel = [i for i, n in enumerate(ann.names) if n == name]
            diff = ann.difficult[sel] > 0
            if mode == "mmrotate":
                diff = np.zeros_like(diff)
            recs[image_id] = {"polys": ann.polys[sel], "difficult": diff, "det": [False] * len(sel)}
            npos += int((~diff).sum())
        d = dets.get(name, Task1Detections())
        order = np.argsort(-d.scores, kind="stable")
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for k, idx in enumerate(order):
            r = recs[str(d.image_ids[idx])]
            bb = shape(d.polys[idx])
            ovmax, jmax = -np.inf, -1
            for j, quad in enumerate(r["polys"]):
                g = shape(quad)
                inter = bb.intersection(g).area
                ov = inter / (bb.area + g.area - inter)
                if ov > ovmax:
                    ovmax, jmax = ov, j
            hit = ovmax > iou_thr if mode == "official" else ovmax >= iou_thr
            if hit:
                if not r["difficult"][jmax]:
                    if not r["det"][jmax]:
                        tp[k] = 1
                        r["det"][jmax] = True
                    else:
                        fp[k] = 1
            else:
                fp[k] = 1
        if npos == 0:
            out[name] = None
            continue
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        out[name] = _ap(rec, prec, use_07) if len(order) else 0.0
    return out


def perturbed_detections(
    gt: dict[str, DOTAAnnotation], classes, rng: np.random.Generator, copies: int = 2, jitter: float = 3.0
) -> dict[str, Task1Detections]:
    """Noisy copies of the ground truth (shifted corners, random scores, some class confusion and false alarms)."""
    per: dict[str, list] = {c: [] for c in classes}
    for image_id, ann in gt.items():
        for quad, name in zip(ann.polys, ann.names):
            for _ in range(copies):
                side = min(np.linalg.norm(quad[1] - quad[0]), np.linalg.norm(quad[2] - quad[1]))
                q = quad + rng.normal(0, 1, (4, 2)) * min(jitter, 0.12 * side)
                c = name if rng.random() > 0.1 else classes[int(rng.integers(len(classes)))]
                per[c].append((image_id, float(np.round(rng.random(), 3)), q))
        for _ in range(3):  # false alarms
            centre = rng.uniform(0, 500, 2)
            q = centre + rng.uniform(-15, 15, (1, 2)) + np.array([[-10, -5], [10, -5], [10, 5], [-10, 5]])
            per[classes[int(rng.integers(len(classes)))]].append((image_id, float(rng.random()), q))
    out = {}
    for c, rows in per.items():
        if rows:
            out[c] = Task1Detections(
                np.array([r[0] for r in rows], dtype=object),
                np.array([r[1] for r in rows]),
                np.stack([r[2] for r in rows]),
            )
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, DOTAAnnotation]:
    root = tmp_path_factory.mktemp("evalscenes")
    generate_dota_scenes(root, num_images=6, size=384, seed=11, difficult_fraction=0.15)
    return read_labeltxt_dir(root / "labelTxt", SYNTH_CLASSES)


@pytest.mark.parametrize("mode", ["official", "mmrotate"])
@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_matches_reference_loop_on_noisy_detections(scenes, mode: str, metric: str):
    rng = np.random.default_rng(0)
    dets = perturbed_detections(scenes, SYNTH_CLASSES, rng)
    ours = evaluate_dota(dets, scenes, SYNTH_CLASSES, metric=metric, mode=mode, coco=False)
    ref = reference_eval(dets, scenes, SYNTH_CLASSES, use_07=metric == "voc07", mode=mode)
    assert ours.per_class.keys() == ref.keys()
    for c in SYNTH_CLASSES:
        assert ours.per_class[c] == pytest.approx(ref[c], abs=1e-9), c
    assert 0.2 < ours.mAP < 0.999  # the noise makes it a non-trivial case


@pytest.mark.realdata
def test_matches_reference_on_real_dota_labels(shared_data: Path):
    from lsknet.data.dota import DOTA_V1_CLASSES

    gt = read_labeltxt_dir(shared_data / "dota_devkit_example" / "labelTxt", DOTA_V1_CLASSES)
    rng = np.random.default_rng(1)
    dets = perturbed_detections(gt, DOTA_V1_CLASSES, rng, copies=1, jitter=2.0)
    # keep a quarter of the detections: the reference loop is quadratic on P0706's 536 ships
    dets = {c: Task1Detections(d.image_ids[::4], d.scores[::4], d.polys[::4]) for c, d in dets.items()}
    ours = evaluate_dota(dets, gt, DOTA_V1_CLASSES, coco=False)
    ref = reference_eval(dets, gt, DOTA_V1_CLASSES)
    for c in DOTA_V1_CLASSES:
        assert ours.per_class[c] == pytest.approx(ref[c], abs=1e-9), c
