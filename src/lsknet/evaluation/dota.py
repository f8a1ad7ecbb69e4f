"""DOTA Task1 (oriented boxes) evaluation with the official semantics, vectorised.

Official mode (``DOTA_devkit/dota_evaluation_task1.py``), per class:

* detections of all images are sorted by score (descending; ties keep file order);
* a detection's overlap is the **polygon IoU** with the ground-truth quadrilaterals of its image; its best
  match ``j`` is the object with the largest IoU (first in file order on ties), matched or not;
* IoU ``> iou_thr`` (strictly): if ``j`` is difficult the detection is ignored (neither TP nor FP); else it is
  a TP if ``j`` was not matched before, otherwise a FP (duplicate). IoU ``<= iou_thr``: FP;
* positives = non-difficult objects (difficult 1 and truncated 2 both count as difficult);
* AP = VOC07 11-point (``metric="voc07"``, default) or all-point area under the envelope (``"area"``).

MMRotate mode (``eval_rbbox_map``): polygons are turned into minimum-area rectangles and compared with the
rotated-rectangle IoU, a match needs IoU ``>= iou_thr``, difficult objects are ordinary positives.

Reported: ``per_class`` AP (``None`` for classes without positives in the ground truth), ``mAP`` over classes
with positives, ``mAP_all_classes`` over the full class list (absent classes count 0), and an extra
COCO-style ``mAP_50_95`` (IoU 0.50:0.05:0.95, 101-point interpolated AP, same matching rule per threshold).

Speed: all candidate pairs of one class are found at once (same image, envelopes overlapping as in the
official pre-filter), their exact IoUs are computed in one batched :func:`lsknet.ops.poly_iou` call, and the
greedy matching is vectorised: a detection's best object does not depend on earlier matches, so the TP is the
first detection (in score order) whose best object is ``j``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lsknet.data.dota import (
    DOTAAnnotation,
    SkipReport,
    atomic_write_text,
    get_classes,
    quads_self_intersect,
    read_labeltxt_dir,
)
from lsknet.data.task1 import Task1Detections, read_task1_dir
from lsknet.errors import DatasetFormatError

log = logging.getLogger(__name__)

METRICS = ("voc07", "area")
MODES = ("official", "mmrotate")
COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def average_precision(recall: np.ndarray, precision: np.ndarray, metric: str = "voc07") -> float:
    """AP from cumulative recall/precision arrays: ``voc07`` 11-point, ``area`` all-point, ``coco`` 101-point."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if metric in ("voc07", "coco"):
        points = np.linspace(0.0, 1.0, 11 if metric == "voc07" else 101)
        ap = 0.0
        for t in points:
            sel = precision[recall >= t]
            ap += float(sel.max()) if sel.size else 0.0
        return ap / len(points)
    if metric == "area":
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        i = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    raise ValueError(f"unknown AP metric {metric!r}; expected one of voc07, area, coco")


@dataclass
class ClassMatches:
    """Per-class matching state for one IoU threshold (arrays in score order)."""

    tp: np.ndarray
    fp: np.ndarray
    num_pos: int


@dataclass
class DOTAEvalResult:
    """Result of :func:`evaluate_dota` (JSON via :meth:`to_dict`)."""

    classes: tuple[str, ...]
    per_class: dict[str, float | None]
    mAP: float
    mAP_all_classes: float
    num_gt: dict[str, int]
    num_det: dict[str, int]
    metric: str
    iou_thr: float
    mode: str
    mAP_50_95: float | None = None
    per_class_50_95: dict[str, float | None] = field(default_factory=dict)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    num_images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "per_class": self.per_class,
            "mAP": self.mAP,
            "mAP_all_classes": self.mAP_all_classes,
            "mAP_50_95": self.mAP_50_95,
            "per_class_50_95": self.per_class_50_95,
            "num_gt": self.num_gt,
            "num_det": self.num_det,
            "num_images": self.num_images,
            "metric": self.metric,
            "iou_thr": self.iou_thr,
            "mode": self.mode,
            "classes": list(self.classes),
            "skipped": self.skipped,
            "notes": {
                "mAP": "mean AP over classes with at least one non-difficult ground-truth object",
                "mAP_all_classes": "mean AP over the full class list; classes absent from the ground truth count 0",
                "mAP_50_95": "COCO-style: mean over IoU 0.50:0.05:0.95 of 101-point AP, same matching rule",
            },
        }

    def write_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def write_csv(self, path: str | Path) -> None:
        """CSV rows: class, AP, AP50:95, num_gt, num_det (then the mAP rows)."""
        rows = [["class", f"AP@{self.iou_thr}", "AP50:95", "num_gt", "num_det"]]
        for c in self.classes:
            rows.append(
                [c, _fmt(self.per_class[c]), _fmt(self.per_class_50_95.get(c)), self.num_gt[c], self.num_det[c]]
            )
        rows.append(["mAP (classes present)", _fmt(self.mAP), _fmt(self.mAP_50_95), "", ""])
        rows.append(["mAP (all classes)", _fmt(self.mAP_all_classes), "", "", ""])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    def plot_pr_curves(self, out_dir: str | Path) -> list[Path]:
        """One PNG precision-recall curve per class with positives: ``out_dir/pr_<class>.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for c, (rec, prec) in self.curves.items():
            fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
            ax.plot(rec, prec, lw=1.5)
            ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
            ax.set_title(f"{c}  AP={self.per_class[c] or 0.0:.3f} ({self.metric}, IoU {self.iou_thr})", fontsize=9)
            ax.grid(alpha=0.3)
            path = out_dir / f"pr_{c}.png"
            fig.tight_layout()
            fig.savefig(path)
            plt.close(fig)
            paths.append(path)
        return paths


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"


def _envelopes(polys: np.ndarray) -> np.ndarray:
    return np.concatenate([polys.min(axis=1), polys.max(axis=1)], axis=1)  # (N, 4) x1 y1 x2 y2


def _candidate_pairs(
    det_img: np.ndarray, det_env: np.ndarray, gt_img: np.ndarray, gt_env: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """All (det, gt) pairs in the same image whose envelopes overlap with DOTA's ``+1`` pixel convention."""
    order = np.argsort(gt_img, kind="stable")
    sorted_img = gt_img[order]
    start = np.searchsorted(sorted_img, det_img, side="left")
    count = np.searchsorted(sorted_img, det_img, side="right") - start
    total = int(count.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    di = np.repeat(np.arange(len(det_img)), count)
    offsets = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    gi = order[np.repeat(start, count) + offsets]
    a, b = det_env[di], gt_env[gi]
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1.0
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1.0
    keep = (iw > 0) & (ih > 0)
    return di[keep], gi[keep]


def _pair_ious(det_polys: np.ndarray, gt_polys: np.ndarray, di: np.ndarray, gi: np.ndarray, mode: str) -> np.ndarray:
    """Exact IoU of the listed pairs: polygon IoU (official) or min-area-rectangle IoU (mmrotate)."""
    from lsknet.ops import poly_iou, poly_to_rbox, rbox_iou

    if len(di) == 0:
        return np.zeros(0, np.float64)
    a = torch.from_numpy(np.ascontiguousarray(det_polys[di]))
    b = torch.from_numpy(np.ascontiguousarray(gt_polys[gi]))
    if mode == "official":
        return poly_iou(a, b, aligned=True).numpy().astype(np.float64)
    # ground truth as MMRotate loads it (cv2.minAreaRect choice); detections are rectangles already (their
    # polygons are rbox corners), so the exact float64 inverse recovers them best
    return rbox_iou(poly_to_rbox(a, method="exact"), poly_to_rbox(b), aligned=True).numpy().astype(np.float64)


def _best_match(num_det: int, di: np.ndarray, gi: np.ndarray, ious: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per detection: max IoU (-inf without candidates) and its object (first object index on ties)."""
    ovmax = np.full(num_det, -np.inf)
    jmax = np.full(num_det, -1, np.int64)
    if len(di):
        order = np.lexsort((gi, -ious, di))  # by det, then IoU descending, then object index
        first = np.ones(len(order), bool)
        first[1:] = di[order][1:] != di[order][:-1]
        sel = order[first]
        ovmax[di[sel]] = ious[sel]
        jmax[di[sel]] = gi[sel]
    return ovmax, jmax


def _match(
    ovmax: np.ndarray, jmax: np.ndarray, gt_difficult: np.ndarray, thr: float, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised greedy matching of score-sorted detections -> (tp, fp) 0/1 arrays."""
    hit = ovmax > thr if mode == "official" else ovmax >= thr
    ignore_difficult = mode == "official"
    tp = np.zeros(len(ovmax), np.float64)
    fp = np.zeros(len(ovmax), np.float64)
    fp[~hit] = 1.0
    idx = np.nonzero(hit)[0]
    if len(idx):
        j = jmax[idx]
        if ignore_difficult:
            normal = ~gt_difficult[j]
            idx, j = idx[normal], j[normal]
        _, first = np.unique(j, return_index=True)  # idx is increasing, so this is the earliest detection
        is_first = np.zeros(len(idx), bool)
        is_first[first] = True
        tp[idx[is_first]] = 1.0
        fp[idx[~is_first]] = 1.0
    return tp, fp


def _curve(tp: np.ndarray, fp: np.ndarray, num_pos: int) -> tuple[np.ndarray, np.ndarray]:
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = ctp / float(num_pos)
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return rec, prec


def _gt_table(gt: Mapping[str, DOTAAnnotation], class_list: Sequence[str]):
    """All ground truth at once: polys (G,4,2), image index (G,), class index (G,, -1 = not listed), difficult."""
    cls_index = {c: i for i, c in enumerate(class_list)}
    polys = [a.polys.reshape(-1, 4, 2) for a in gt.values()]
    imgs = [np.full(len(a), i, np.int64) for i, a in enumerate(gt.values())]
    names = [np.array([cls_index.get(n, -1) for n in a.names], np.int64) for a in gt.values()]
    diffs = [np.asarray(a.difficult).reshape(-1) > 0 for a in gt.values()]
    if not polys:
        return np.zeros((0, 4, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(polys), np.concatenate(imgs), np.concatenate(names), np.concatenate(diffs)


def evaluate_dota(
    detections: str | Path | Mapping[str, Task1Detections],
    ground_truth: str | Path | Mapping[str, DOTAAnnotation],
    classes: str | Sequence[str] | None = "dota1.0",
    metric: str = "voc07",
    iou_thr: float = 0.5,
    mode: str = "official",
    coco: bool = True,
    strict: bool = False,
    report: SkipReport | None = None,
) -> DOTAEvalResult:
    """Evaluate oriented detections with the DOTA Task1 protocol (see the module docstring).

    Args:
        detections: folder of ``Task1_<class>.txt`` files, or ``{class: Task1Detections}`` (polygons in pixels).
        ground_truth: folder of ``labelTxt`` files (every file is an evaluated image), or ``{image_id: annotation}``.
        classes: class list (``dota1.0|dota1.5|dota2.0``, names, or a file); GT objects of other classes are
            skipped with a warning.
        metric: ``voc07`` (11-point, official default) or ``area``.
        mode: ``official`` (polygon IoU, ``>``, difficult ignored) or ``mmrotate`` (rectangle IoU, ``>=``,
            difficult counted).
        coco: also compute the COCO-style mAP over IoU 0.50:0.05:0.95.
        strict: raise :class:`DatasetFormatError` on the first bad line instead of skipping it.

    Detections for images absent from the ground truth are skipped with a warning (the official script
    crashes on them), and so are self-intersecting detection polygons (their IoU is undefined). Exact
    duplicate detections are evaluated like the official script (the later copy is a false positive) and
    reported in the log.
    """
    if metric not in METRICS:
        raise DatasetFormatError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if mode not in MODES:
        raise DatasetFormatError(f"unknown evaluation mode {mode!r}; expected one of {MODES}")
    if not 0.0 <= iou_thr < 1.0:
        raise DatasetFormatError(f"iou_thr must be in [0, 1), got {iou_thr}")
    class_list = get_classes(classes)
    report = report if report is not None else SkipReport(strict=strict)
    if isinstance(ground_truth, (str, Path)):
        gt = read_labeltxt_dir(ground_truth, class_list, report)
        if not gt:
            raise DatasetFormatError(f"{ground_truth}: no labelTxt files (*.txt) found")
    else:
        gt = dict(ground_truth)
    if isinstance(detections, (str, Path)):
        dets = read_task1_dir(detections, class_list, report)
    else:
        dets = {c: detections.get(c, Task1Detections()) for c in class_list}
        for c in detections:
            if c not in class_list:
                report.skip(f"detections[{c!r}]", "detections of unknown class")
    image_index = {image_id: i for i, image_id in enumerate(gt)}

    per_class: dict[str, float | None] = {}
    per_class_coco: dict[str, float | None] = {}
    num_gt: dict[str, int] = {}
    num_det: dict[str, int] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    all_polys, all_img, all_cls, all_diff = _gt_table(gt, class_list)
    if (all_cls < 0).any():
        report.skip("ground truth", "objects of classes outside the class list", f"{int((all_cls < 0).sum())} objects")
    for c_idx, name in enumerate(class_list):
        sel = all_cls == c_idx
        gt_polys, gt_img, gt_diff = all_polys[sel], all_img[sel], all_diff[sel]
        num_pos = int(len(gt_diff) if mode == "mmrotate" else (~gt_diff).sum())
        d = dets.get(name, Task1Detections())
        det_img = np.fromiter((image_index.get(str(i), -1) for i in d.image_ids), dtype=np.int64, count=len(d))
        missing = det_img < 0
        if missing.any():
            unknown_ids = sorted({str(i) for i in d.image_ids[missing]})
            report.skip(
                f"Task1_{name}",
                "detections for images missing from the ground truth",
                f"{int(missing.sum())} detections, images {unknown_ids[:5]}{' ...' if len(unknown_ids) > 5 else ''}",
            )
        bad = quads_self_intersect(d.polys) & ~missing
        if bad.any():
            report.skip(f"Task1_{name}", "self-intersecting detection polygons", f"{int(bad.sum())} detections skipped")
        keep = ~missing & ~bad
        scores, det_polys, det_img = d.scores[keep], d.polys[keep], det_img[keep]
        order = np.argsort(-scores, kind="stable")
        scores, det_polys, det_img = scores[order], det_polys[order], det_img[order]
        num_det[name] = len(scores)
        num_gt[name] = num_pos
        if len(scores) > 1:
            _warn_duplicates(name, det_img, scores, det_polys)
        if num_pos == 0:
            per_class[name] = None
            per_class_coco[name] = None
            continue
        di, gi = _candidate_pairs(det_img, _envelopes(det_polys), gt_img, _envelopes(gt_polys))
        ious = _pair_ious(det_polys, gt_polys, di, gi, mode)
        ovmax, jmax = _best_match(len(scores), di, gi, ious)
        tp, fp = _match(ovmax, jmax, gt_diff, iou_thr, mode)
        rec, prec = _curve(tp, fp, num_pos)
        per_class[name] = average_precision(rec, prec, metric) if len(scores) else 0.0
        curves[name] = (rec, prec)
        if coco:
            aps = []
            for t in COCO_THRESHOLDS:
                r, p = _curve(*_match(ovmax, jmax, gt_diff, t, mode), num_pos)
                aps.append(average_precision(r, p, "coco") if len(scores) else 0.0)
            per_class_coco[name] = float(np.mean(aps))
    present = [v for v in per_class.values() if v is not None]
    present_coco = [v for v in per_class_coco.values() if v is not None]
    result = DOTAEvalResult(
        classes=class_list,
        per_class=per_class,
        mAP=float(np.mean(present)) if present else 0.0,
        mAP_all_classes=float(sum(present) / len(class_list)),
        num_gt=num_gt,
        num_det=num_det,
        metric=metric,
        iou_thr=iou_thr,
        mode=mode,
        mAP_50_95=(float(np.mean(present_coco)) if present_coco else 0.0) if coco else None,
        per_class_50_95=per_class_coco if coco else {},
        curves=curves,
        num_images=len(gt),
        skipped=dict(report.counts),
    )
    if report.counts:
        report.log_summary(log)
    return result


def _warn_duplicates(name: str, det_img: np.ndarray, scores: np.ndarray, polys: np.ndarray) -> None:
    rows = np.concatenate([det_img[:, None].astype(np.float64), scores[:, None], polys.reshape(-1, 8)], axis=1)
    order = np.lexsort((rows[:, 3], rows[:, 2], rows[:, 1], rows[:, 0]))
    rows = rows[order]
    n_dup = int(np.all(rows[1:] == rows[:-1], axis=1).sum())
    if n_dup:
        log.warning(
            "Task1_%s: %d exact duplicate detections; evaluated as the official script does "
            "(each later copy is a false positive)",
            name,
            n_dup,
        )
