"""Classification metrics from scores or a confusion matrix, and the CSV / PNG / JSON files a run writes.

Conventions: ``confusion[i, j]`` counts samples of **true** class ``i`` predicted as class ``j`` (rows = truth,
the convention of scikit-learn and torchmetrics). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores; ``scores`` is (N, C)."""
    if scores.ndim != 2 or scores.shape[0] != targets.shape[0]:
        raise ValueError(f"scores must be (N, C) matching targets (N,), got {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        return float("nan")
    k = min(int(k), scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == targets.view(-1, 1)).any(dim=1).float().mean())


def confusion_matrix(predictions: Sequence[int] | np.ndarray, targets: Sequence[int] | np.ndarray, num_classes: int):
    """(C, C) int64 matrix, rows = true class, columns = predicted class."""
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    targets = np.asarray(targets, dtype=np.int64).ravel()
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets, predictions), 1)
    return matrix


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class (diagonal / row sum); NaN for a class with no samples."""
    confusion = np.asarray(confusion, dtype=np.float64)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / np.where(support > 0, support, 1), np.nan)


def summarize_confusion(confusion: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Overall accuracy (micro), mean per-class accuracy (macro, over classes with samples) and per-class values."""
    confusion = np.asarray(confusion)
    total = int(confusion.sum())
    per_class = per_class_accuracy(confusion)
    valid = per_class[~np.isnan(per_class)]
    return {
        "num_samples": total,
        "accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "mean_class_accuracy": float(valid.mean()) if valid.size else float("nan"),
        "per_class_accuracy": {name: _json_float(value) for name, value in zip(classes, per_class)},
        "support": {name: int(n) for name, n in zip(classes, confusion.sum(axis=1))},
    }


def _json_float(value: float) -> float | None:
    return None if math.isnan(float(value)) else float(value)


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    return Path(temp)


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Write ``data`` as indented JSON atomically (temp file + rename); NaN becomes null."""
    path = Path(path)
    temp = _atomic_target(path)
    temp.write_text(json.dumps(_nan_to_none(data), indent=2) + "\n")
    os.replace(temp, path)
    return path


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_confusion_csv(confusion: np.ndarray, classes: Sequence[str], path: str | Path) -> Path:
    """CSV with a header ``true\\predicted,<classes...>,support,accuracy`` and one row per true class."""
    path = Path(path)
    confusion = np.asarray(confusion)
    accuracy = per_class_accuracy(confusion)
    temp = _atomic_target(path)
    with temp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true\\predicted", *classes, "support", "accuracy"])
        for name, row, acc in zip(classes, confusion, accuracy):
            writer.writerow([name, *(int(v) for v in row), int(row.sum()), "" if np.isnan(acc) else f"{acc:.6f}"])
    os.replace(temp, path)
    return path


def read_confusion_csv(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Inverse of :func:`write_confusion_csv`: (matrix, class names)."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.reader(handle))
    classes = rows[0][1:-2]
    matrix = np.array([[int(v) for v in row[1 : 1 + len(classes)]] for row in rows[1:]], dtype=np.int64)
    return matrix, classes


def plot_confusion_matrix(
    confusion: np.ndarray, classes: Sequence[str], path: str | Path, normalize: bool = True, title: str = ""
) -> Path:
    """Save the confusion matrix as a PNG heat map (rows normalised to per-class fractions when ``normalize``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    confusion = np.asarray(confusion, dtype=np.float64)
    shown = confusion
    if normalize:
        support = confusion.sum(axis=1, keepdims=True)
        shown = np.divide(confusion, support, out=np.zeros_like(confusion), where=support > 0)
    n = len(classes)
    side = min(24.0, max(4.0, 0.35 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    ax.set_xticks(range(n), labels=list(classes), rotation=90, fontsize=max(5, 10 - n // 10))
    ax.set_yticks(range(n), labels=list(classes), fontsize=max(5, 10 - n // 10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    colour = "white" if shown[i, j] > 0.5 * (shown.max() or 1) else "black"
                    ax.text(j, i, f"{int(confusion[i, j])}", ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    temp = _atomic_target(path)
    fig.savefig(temp, dpi=100, format="png")
    plt.close(fig)
    os.replace(temp, path)
    return path


def write_classification_report(
    confusion: np.ndarray,
    classes: Sequence[str],
    out_dir: str | Path,
    prefix: str = "",
    extra: dict | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """Write ``<prefix>confusion_matrix.csv``, ``<prefix>confusion_matrix.png`` (if ``plot``), ``<prefix>metrics.json``.

    Returns the summary dict (see :func:`summarize_confusion`) merged with ``extra`` and the file paths.
    """
    out_dir = Path(out_dir)
    summary = summarize_confusion(confusion, classes)
    summary.update(extra or {})
    summary["confusion_matrix_csv"] = str(
        write_confusion_csv(confusion, classes, out_dir / f"{prefix}confusion_matrix.csv")
    )
    if plot:
        png_path = plot_confusion_matrix(confusion, classes, out_dir / f"{prefix}confusion_matrix.png")
        summary["confusion_matrix_png"] = str(png_path)
    write_json(summary, out_dir / f"{prefix}metrics.json")
    return summary
