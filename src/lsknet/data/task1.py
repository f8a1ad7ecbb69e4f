"""DOTA Task1 detection files (``Task1_<class>.txt``: one line ``image_id score x1 y1 x2 y2 x3 y3 x4 y4`` per
detection, pixels, corners clockwise on screen) and the one conversion of per-image detections into them.

Bad lines are skipped and counted through :class:`lsknet.data.dota.SkipReport` (file:line named).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lsknet.data.dota import SkipReport, atomic_write_text, check_file_name, format_number
from lsknet.errors import DatasetFormatError
from lsknet.ops import rbox_to_corners

log = logging.getLogger(__name__)

__all__ = [
    "Task1Detections",
    "format_task1",
    "parse_task1",
    "read_task1_dir",
    "results_to_task1",
    "write_task1_dir",
]


@dataclass
class Task1Detections:
    """Detections of one class: ``image_ids`` (D,) str array, ``scores`` (D,) float64, ``polys`` (D,4,2) float64."""

    image_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=object))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float64))
    polys: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 2), np.float64))

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def concat(parts: Sequence[Task1Detections]) -> Task1Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Task1Detections()
        return Task1Detections(
            np.concatenate([p.image_ids for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.polys for p in parts]),
        )


def parse_task1(lines: Iterable[str], source: str = "<Task1>", report: SkipReport | None = None) -> Task1Detections:
    """Parse ``image_id score x1 y1 ... x4 y4`` lines; bad lines (count, numbers, NaN) are skipped and counted."""
    report = report if report is not None else SkipReport()
    ids: list[str] = []
    values: list[list[float]] = []
    for lineno, raw in enumerate(lines, start=1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 10:
            report.skip(
                f"{source}:{lineno}",
                "malformed detection line",
                f"expected image score and 8 coordinates: {raw.strip()!r}",
            )
            continue
        try:
            nums = [float(v) for v in parts[1:]]
        except ValueError:
            report.skip(f"{source}:{lineno}", "non-numeric detection value", repr(raw.strip()))
            continue
        if not all(math.isfinite(v) for v in nums):
            report.skip(f"{source}:{lineno}", "non-finite detection value", repr(raw.strip()))
            continue
        ids.append(parts[0])
        values.append(nums)
    arr = np.asarray(values, dtype=np.float64).reshape(-1, 9)
    return Task1Detections(np.asarray(ids, dtype=object), arr[:, 0].copy(), arr[:, 1:].reshape(-1, 4, 2).copy())


def read_task1_dir(
    det_dir: str | Path, classes: Sequence[str], report: SkipReport | None = None, prefix: str = "Task1_"
) -> dict[str, Task1Detections]:
    """Read ``det_dir/Task1_<class>.txt`` for every class in ``classes`` (missing file = no detections).

    Files for classes outside ``classes`` are skipped with a warning.
    """
    det_dir = Path(det_dir)
    if not det_dir.is_dir():
        raise DatasetFormatError(f"{det_dir}: detection folder not found")
    report = report if report is not None else SkipReport()
    wanted = set(classes)
    for path in sorted(det_dir.glob(f"{prefix}*.txt")):
        name = path.stem[len(prefix) :]
        if name not in wanted:
            report.skip(str(path), "detection file of unknown class", name)
    out = {}
    for name in classes:
        path = det_dir / f"{prefix}{name}.txt"
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise DatasetFormatError(f"{path}: not a text detection file ({err})") from None
            out[name] = parse_task1(text.splitlines(), str(path), report)
        else:
            log.info("%s: no detections for class %s", path, name)
            out[name] = Task1Detections()
    return out


def format_task1(dets: Task1Detections, decimals: int = 2) -> str:
    """Text of one ``Task1_<class>.txt`` file (scores with 6 digits, coordinates with ``decimals``)."""
    lines = []
    for image_id, score, quad in zip(dets.image_ids, dets.scores, dets.polys.reshape(-1, 8)):
        coords = " ".join(format_number(float(v), decimals) for v in quad)
        lines.append(f"{image_id} {float(score):.6f} {coords}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_task1_dir(
    out_dir: str | Path, dets_per_class: dict[str, Task1Detections], decimals: int = 2, prefix: str = "Task1_"
) -> list[Path]:
    """Write one ``Task1_<class>.txt`` per class (an empty file for classes without detections); returns paths."""
    for name in dets_per_class:
        check_file_name(f"{prefix}{name}.txt", "class name")
    out_dir = Path(out_dir)
    paths = []
    for name, dets in dets_per_class.items():
        path = out_dir / f"{prefix}{name}.txt"
        atomic_write_text(path, format_task1(dets, decimals))
        paths.append(path)
    return paths


def results_to_task1(results: Mapping[str, Mapping[str, object]], classes: Sequence[str]) -> dict[str, Task1Detections]:
    """The one conversion of per-image detections to Task1 detections per class.

    ``results``: ``{image_id: {"rboxes": (N, 5) (cx, cy, w, h, theta) px/rad, "scores": (N,), "labels": (N,)}}``
    (tensors or arrays). Corners are computed in float64; images keep their order, detections their order within
    an image. Returns ``{class name: Task1Detections}`` for every class (empty ones included).
    """
    ids: list[list[str]] = [[] for _ in classes]
    scores: list[list[np.ndarray]] = [[] for _ in classes]
    polys: list[list[np.ndarray]] = [[] for _ in classes]
    for image_id, res in results.items():
        labels = torch.as_tensor(res["labels"]).reshape(-1).long().cpu()
        if labels.numel() == 0:
            continue
        rboxes = torch.as_tensor(res["rboxes"]).reshape(-1, 5).detach().cpu().double()
        corners = rbox_to_corners(rboxes).numpy()
        score = torch.as_tensor(res["scores"]).reshape(-1).detach().cpu().double().numpy()
        for c_idx in labels.unique().tolist():
            if not 0 <= c_idx < len(classes):
                raise DatasetFormatError(f"{image_id}: label {c_idx} outside the {len(classes)} classes")
            sel = (labels == c_idx).numpy()
            ids[c_idx].extend([str(image_id)] * int(sel.sum()))
            scores[c_idx].append(score[sel])
            polys[c_idx].append(corners[sel])
    return {
        name: Task1Detections(
            np.asarray(ids[c], dtype=object),
            np.concatenate(scores[c]) if scores[c] else np.zeros(0),
            np.concatenate(polys[c]) if polys[c] else np.zeros((0, 4, 2)),
        )
        for c, name in enumerate(classes)
    }
