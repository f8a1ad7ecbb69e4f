"""Semantic-segmentation metrics from one confusion matrix accumulated over a whole evaluation set.

Conventions: the confusion matrix ``cm`` is ``(K, K)`` int64 with **rows = ground truth, columns = prediction**.
Pixels whose ground truth equals ``ignore_index`` are not counted. For class ``k``: ``TP = cm[k, k]``,
``FP = column sum - TP``, ``FN = row sum - TP``; ``IoU = TP / (TP + FP + FN)``, ``F1 = 2TP / (2TP + FP + FN)``;
both are ``None`` when the class is absent from ground truth and prediction alike (``TP + FP + FN == 0``).
``mIoU`` / ``mF1`` average the defined values of the classes not listed in ``exclude`` (e.g. clutter on ISPRS);
``OA`` (overall accuracy) is ``trace / sum`` over all counted pixels of every class.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lsknet.errors import DatasetFormatError

MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """``(K, K)`` int64 counts of (ground truth row, prediction column) over pixels not ignored.

    ``pred`` and ``target`` are integer arrays (numpy or torch) of the same shape. Target values outside
    ``[0, K)`` other than ``ignore_index``, or predictions outside ``[0, K)``, raise ``ValueError``.
    """
    pred = _as_numpy(pred).astype(np.int64, copy=False).ravel()
    target = _as_numpy(target).astype(np.int64, copy=False).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"prediction and target sizes differ: {pred.size} vs {target.size}")
    keep = target != ignore_index if ignore_index is not None else np.ones_like(target, dtype=bool)
    pred, target = pred[keep], target[keep]
    bad_t = (target < 0) | (target >= num_classes)
    bad_p = (pred < 0) | (pred >= num_classes)
    if bad_t.any():
        raise ValueError(f"target labels out of range [0, {num_classes}): {_value_counts(target[bad_t])}")
    if bad_p.any():
        raise ValueError(f"predicted labels out of range [0, {num_classes}): {_value_counts(pred[bad_p])}")
    return np.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def metrics_from_confusion(
    cm: np.ndarray, class_names: Sequence[str] | None = None, exclude: Sequence[int | str] = ()
) -> dict[str, Any]:
    """Per-class ``IoU`` / ``F1`` / ``precision`` / ``recall`` lists (``None`` = undefined), ``mIoU``, ``mF1``, ``OA``.

    ``exclude`` names classes (index or name) left out of the means; the result states them under ``excluded``.
    Means are ``None`` when no class is defined; values are fractions in [0, 1].
    """
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    excluded = sorted({names.index(e) if isinstance(e, str) else int(e) for e in exclude})
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    union = tp + fp + fn
    iou = [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(k)]
    f1 = [float(2 * tp[i] / (2 * tp[i] + fp[i] + fn[i])) if union[i] > 0 else None for i in range(k)]
    precision = [float(tp[i] / (tp[i] + fp[i])) if tp[i] + fp[i] > 0 else None for i in range(k)]
    recall = [float(tp[i] / (tp[i] + fn[i])) if tp[i] + fn[i] > 0 else None for i in range(k)]

    def mean(values: list[float | None]) -> float | None:
        kept = [v for i, v in enumerate(values) if v is not None and i not in excluded]
        return float(np.mean(kept)) if kept else None

    total = cm.sum()
    return {
        "classes": names,
        "IoU": iou,
        "F1": f1,
        "precision": precision,
        "recall": recall,
        "mIoU": mean(iou),
        "mF1": mean(f1),
        "OA": float(tp.sum() / total) if total > 0 else None,
        "excluded": [names[i] for i in excluded],
        "pixels": int(total),
    }


class ConfusionMatrix:
    """Accumulates a confusion matrix batch after batch (numpy or torch label maps of equal shape)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add the pixels of one prediction / target pair (any shape, same for both)."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        self.matrix[:] = 0

    def compute(self, class_names: Sequence[str] | None = None, exclude: Sequence[int | str] = ()) -> dict[str, Any]:
        """The metrics of :func:`metrics_from_confusion` for everything accumulated so far."""
        return metrics_from_confusion(self.matrix, class_names, exclude)


def write_confusion_csv(cm: np.ndarray, path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    """Write the matrix as CSV: header ``gt\\pred,<names>``, one row per ground-truth class (pixel counts)."""
    path = Path(path)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["gt\\pred", *names])
        for name, row in zip(names, np.asarray(cm)):
            writer.writerow([name, *(int(v) for v in row)])
    os.replace(tmp, path)
    return path


def plot_confusion_png(cm: np.ndarray, path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    """Row-normalized confusion matrix (recall per ground-truth class) as a PNG heat map."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "k")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(metrics: dict[str, Any], cm: np.ndarray, out_dir: str | Path, prefix: str = "") -> dict[str, Path]:
    """Write ``<prefix>metrics.json``, ``<prefix>confusion.csv`` and ``<prefix>confusion.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json(metrics, out_dir / f"{prefix}metrics.json"),
        "csv": write_confusion_csv(cm, out_dir / f"{prefix}confusion.csv", metrics.get("classes")),
        "png": plot_confusion_png(cm, out_dir / f"{prefix}confusion.png", metrics.get("classes")),
    }
    return paths


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``data`` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path


def read_index_mask(path: str | Path) -> np.ndarray:
    """An index-mask image (PNG/TIFF, one channel or palette mode) as an ``(H, W)`` int64 array."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise DatasetFormatError(f"{path}: expected a one-channel index mask, got image mode {im.mode}")
            return np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetFormatError(f"{path}: cannot decode image ({err})") from None


def score_directories(
    pred_dir: str | Path,
    gt_dir: str | Path,
    num_classes: int,
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
    class_names: Sequence[str] | None = None,
    exclude: Sequence[int | str] = (),
) -> tuple[dict[str, Any], np.ndarray]:
    """Score index-mask predictions against ground-truth masks paired by file stem.

    ``reduce_zero_label`` maps raw ground-truth 0 to ``ignore_index`` and ``k`` to ``k - 1`` (ISPRS eroded-boundary
    and LoveDA no-data conventions); predictions are taken as they are. A prediction without ground truth, a
    ground truth without prediction, different sizes or out-of-range values raise :class:`DatasetFormatError`.
    Returns (metrics, confusion matrix); metrics add ``images`` (number of pairs).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not d.is_dir():
            raise DatasetFormatError(f"{what} directory not found: {d}")
    preds = _masks_by_stem(pred_dir)
    gts = _masks_by_stem(gt_dir)
    missing_gt = sorted(set(preds) - set(gts))
    missing_pred = sorted(set(gts) - set(preds))
    if missing_gt or missing_pred:
        parts = []
        if missing_gt:
            parts.append(f"{len(missing_gt)} predictions without ground truth in {gt_dir}: {_names(missing_gt)}")
        if missing_pred:
            parts.append(f"{len(missing_pred)} ground truths without prediction in {pred_dir}: {_names(missing_pred)}")
        raise DatasetFormatError("; ".join(parts))
    if not preds:
        raise DatasetFormatError(f"no mask images ({', '.join(MASK_EXTENSIONS)}) in {pred_dir}")
    acc = ConfusionMatrix(num_classes, ignore_index)
    for stem in sorted(preds):
        pred = read_index_mask(preds[stem])
        gt = read_index_mask(gts[stem])
        if pred.shape != gt.shape:
            raise DatasetFormatError(
                f"size mismatch: prediction {preds[stem]} is {pred.shape[1]}x{pred.shape[0]}, "
                f"ground truth {gts[stem]} is {gt.shape[1]}x{gt.shape[0]}"
            )
        if reduce_zero_label:
            gt = np.where(gt == 0, ignore_index, np.where(gt == ignore_index, ignore_index, gt - 1))
        bad_gt = (gt != ignore_index) & ((gt < 0) | (gt >= num_classes))
        if bad_gt.any():
            raise DatasetFormatError(
                f"{gts[stem]}: ground-truth values out of range [0, {num_classes}) "
                f"(after reduce-zero-label: {reduce_zero_label}): {_value_counts(gt[bad_gt])}"
            )
        bad_pred = (pred < 0) | (pred >= num_classes)
        if bad_pred.any():
            raise DatasetFormatError(
                f"{preds[stem]}: predicted values out of range [0, {num_classes}): {_value_counts(pred[bad_pred])}"
            )
        acc.update(pred, gt)
    metrics = acc.compute(class_names, exclude)
    metrics["images"] = len(preds)
    return metrics, acc.matrix


def _masks_by_stem(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in MASK_EXTENSIONS:
            if p.stem in out:
                raise DatasetFormatError(
                    f"two masks with the same name {p.stem!r} in {folder}: {out[p.stem].name}, {p.name}"
                )
            out[p.stem] = p
    return out


def _names(stems: list[str], limit: int = 5) -> str:
    more = f" (+{len(stems) - limit} more)" if len(stems) > limit else ""
    return ", ".join(stems[:limit]) + more


def _value_counts(values: np.ndarray, limit: int = 10) -> str:
    uniq, counts = np.unique(values, return_counts=True)
    items = [f"{int(u)} ({int(c)} px)" for u, c in zip(uniq[:limit], counts[:limit])]
    more = f", +{len(uniq) - limit} more values" if len(uniq) > limit else ""
    return ", ".join(items) + more


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
