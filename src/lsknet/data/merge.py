"""Merge patch-level results back to source images (the inverse of :mod:`lsknet.data.split`).

* Detections: patch name -> source coordinates (add the window origin parsed from the name) -> per-class
  rotated NMS per source image (IoU 0.1 by default, as DOTA_devkit's ResultMerge and MMRotate) -> DOTA
  Task1 files ``Task1_<class>.txt`` (``image score x1 y1 ... x4 y4``) and optionally a zip for the server.
* Ground truth: patch ``labelTxt`` -> source ``labelTxt``: copies of the same object seen whole in several
  windows are de-duplicated, truncated copies (difficult 2) inside a whole copy are dropped, and an object
  never seen whole keeps its largest truncated piece.
"""

from __future__ import annotations

import logging
import zipfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from lsknet.data.dota import DOTAAnnotation, SkipReport, get_classes, read_labeltxt, write_labeltxt
from lsknet.data.split import parse_patch_name
from lsknet.data.task1 import Task1Detections, read_task1_dir, write_task1_dir
from lsknet.errors import DatasetFormatError

log = logging.getLogger(__name__)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _polys_of(result: Mapping) -> np.ndarray:
    from lsknet.ops import rbox_to_corners

    if "polys" in result:
        return _as_numpy(result["polys"]).astype(np.float64).reshape(-1, 4, 2)
    if "rboxes" in result:
        rb = torch.as_tensor(_as_numpy(result["rboxes"]), dtype=torch.float64).reshape(-1, 5)
        return rbox_to_corners(rb).numpy()
    raise DatasetFormatError("a patch result needs 'polys' (N,4,2) or 'rboxes' (N,5)")


def merge_detections(
    patch_results: Mapping[str, Mapping],
    classes: Sequence[str],
    iou_thr: float = 0.1,
    out_dir: str | Path | None = None,
    zip_path: str | Path | None = None,
    score_thr: float = 0.0,
) -> dict[str, Task1Detections]:
    """Merge per-patch detections into per-class source-image detections.

    Args:
        patch_results: ``{patch_name: {"polys": (N,4,2) or "rboxes": (N,5) le90, "scores": (N,),
            "labels": (N,) class indices}}`` in patch pixels (tensors or arrays). A name that is not a patch
            name (no ``__size__x___y`` suffix) is taken as a whole image at offset (0, 0).
        classes: class names indexed by ``labels``.
        iou_thr: rotated-NMS IoU threshold per class and source image.
        out_dir: when given, writes ``Task1_<class>.txt`` files there; ``zip_path`` also zips them.

    Returns ``{class: Task1Detections}`` in source-image pixels, sorted by image then descending score.
    """
    from lsknet.ops import nms_rotated, poly_to_rbox

    classes = tuple(classes)
    ids, scores, polys, labels = [], [], [], []
    for name, result in patch_results.items():
        try:
            pn = parse_patch_name(name)
            image_id, offset = pn.image_id, np.array([pn.x, pn.y], np.float64)
        except DatasetFormatError:
            image_id, offset = str(name), np.zeros(2)
        p = _polys_of(result)
        s = _as_numpy(result["scores"]).astype(np.float64).reshape(-1)
        lab = _as_numpy(result["labels"]).astype(np.int64).reshape(-1)
        if not len(p) == len(s) == len(lab):
            raise DatasetFormatError(
                f"patch {name}: polys/scores/labels lengths differ ({len(p)}, {len(s)}, {len(lab)})"
            )
        if len(lab) and (lab.min() < 0 or lab.max() >= len(classes)):
            raise DatasetFormatError(f"patch {name}: label index outside the {len(classes)} classes")
        keep = s >= score_thr
        ids.extend([image_id] * int(keep.sum()))
        scores.append(s[keep])
        polys.append(p[keep] + offset)
        labels.append(lab[keep])
    merged = {c: Task1Detections() for c in classes}
    if ids:
        ids_arr = np.asarray(ids, dtype=object)
        scores_arr, polys_arr, labels_arr = np.concatenate(scores), np.concatenate(polys), np.concatenate(labels)
        _, image_index = np.unique(ids_arr.astype(str), return_inverse=True)
        group = torch.from_numpy(labels_arr + len(classes) * image_index.astype(np.int64))
        rboxes = poly_to_rbox(torch.from_numpy(polys_arr), method="exact")
        keep = nms_rotated(rboxes, torch.from_numpy(scores_arr), iou_thr, labels=group).numpy()
        order = np.lexsort((-scores_arr[keep], ids_arr[keep].astype(str)))
        keep = keep[order]
        for c_idx, c in enumerate(classes):
            sel = keep[labels_arr[keep] == c_idx]
            merged[c] = Task1Detections(ids_arr[sel], scores_arr[sel], polys_arr[sel])
    if out_dir is not None:
        paths = write_task1_dir(out_dir, merged)
        if zip_path is not None:
            write_zip(zip_path, paths)
    return merged


def write_zip(zip_path: str | Path, files: Sequence[Path]) -> Path:
    """Zip ``files`` (flat, as the DOTA evaluation server expects) atomically."""
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(f".{zip_path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, arcname=Path(f).name)
    tmp.replace(zip_path)
    return zip_path


def merge_task1_dir(
    src: str | Path,
    dst: str | Path,
    classes: str | Sequence[str] | None = "dota1.0",
    iou_thr: float = 0.1,
    zip_path: str | Path | None = None,
    strict: bool = False,
    fmt: str = "dota",
    image_ids: Sequence[str] | None = None,
) -> dict[str, Task1Detections]:
    """``src/Task1_<class>.txt`` with patch names as image ids -> merged ``dst/Task1_<class>.txt`` (+ zip).

    ``fmt="fair1m"`` writes the FAIR1M submission instead: ``dst/<image>.xml`` per source image
    (:func:`lsknet.data.fair1m.write_fair1m_submission`; ``image_ids`` adds files for images without
    detections), ``zip_path`` zips those files."""
    if fmt not in ("dota", "fair1m"):
        raise DatasetFormatError(f"unknown result format {fmt!r}; expected dota or fair1m")
    class_list = get_classes(classes)
    report = SkipReport(strict=strict)
    dets = read_task1_dir(src, class_list, report)
    patch_results: dict[str, dict[str, list]] = defaultdict(lambda: {"polys": [], "scores": [], "labels": []})
    for c_idx, c in enumerate(class_list):
        d = dets[c]
        for image_id, score, poly in zip(d.image_ids, d.scores, d.polys):
            r = patch_results[str(image_id)]
            r["polys"].append(poly)
            r["scores"].append(score)
            r["labels"].append(c_idx)
    arrays = {
        k: {"polys": np.asarray(v["polys"]).reshape(-1, 4, 2), "scores": v["scores"], "labels": v["labels"]}
        for k, v in patch_results.items()
    }
    report.log_summary(log)
    if fmt == "fair1m":
        from lsknet.data.fair1m import write_fair1m_submission

        merged = merge_detections(arrays, class_list, iou_thr)
        paths = write_fair1m_submission(dst, merged, image_ids=image_ids)
        if zip_path is not None:
            write_zip(zip_path, paths)
        return merged
    return merge_detections(arrays, class_list, iou_thr, out_dir=dst, zip_path=zip_path)


def merge_annotations(
    patch_anns: Mapping[str, DOTAAnnotation], dedup_iou: float = 0.95, cover_iof: float = 0.9
) -> dict[str, DOTAAnnotation]:
    """Patch ground truth ``{patch_name: annotation}`` -> ``{source image id: annotation}`` (see module doc)."""
    from lsknet.ops import poly_to_rbox, rbox_iof, rbox_iou

    per_image: dict[str, list[tuple[np.ndarray, list[str], np.ndarray, dict]]] = defaultdict(list)
    for name, ann in patch_anns.items():
        pn = parse_patch_name(name)
        per_image[pn.image_id].append(
            (ann.polys + np.array([pn.x, pn.y], np.float64), ann.names, ann.difficult, ann.meta)
        )
    out = {}
    for image_id in sorted(per_image):
        parts = per_image[image_id]
        polys = np.concatenate([p[0] for p in parts]).reshape(-1, 4, 2)
        names = [n for p in parts for n in p[1]]
        diffs = np.concatenate([p[2] for p in parts]).astype(np.int64)
        meta = next((p[3] for p in parts if p[3]), {})
        keep_all: list[int] = []
        for c in sorted(set(names)):
            idx = np.array([i for i, n in enumerate(names) if n == c])
            rb = poly_to_rbox(torch.from_numpy(np.ascontiguousarray(polys[idx])), method="exact")
            whole = diffs[idx] != 2
            kept: list[int] = []  # positions in idx
            iou = rbox_iou(rb, rb).numpy()
            for i in np.nonzero(whole)[0]:
                if all(iou[i, j] <= dedup_iou for j in kept):
                    kept.append(int(i))
            trunc = np.nonzero(~whole)[0]
            if len(trunc):
                areas = (rb[:, 2] * rb[:, 3]).numpy()
                iof = rbox_iof(rb, rb).numpy()  # iof[i, j] = area(i & j) / area(i)
                for i in trunc[np.argsort(-areas[trunc], kind="stable")]:
                    if all(iof[i, j] < cover_iof and iou[i, j] <= 0.1 for j in kept):
                        kept.append(int(i))
            keep_all.extend(idx[kept].tolist())
        keep_all.sort()
        merged = DOTAAnnotation(polys[keep_all], [names[i] for i in keep_all], diffs[keep_all], dict(meta))
        out[image_id] = merged
    return out


def merge_labeltxt_dir(src: str | Path, dst: str | Path, strict: bool = False) -> dict[str, DOTAAnnotation]:
    """Patch ``labelTxt`` folder -> source-image ``labelTxt`` files in ``dst`` (see :func:`merge_annotations`)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DatasetFormatError(f"{src}: label folder not found")
    report = SkipReport(strict=strict)
    anns = {}
    for p in sorted(src.glob("*.txt")):
        try:
            parse_patch_name(p.stem)
        except DatasetFormatError:
            report.skip(str(p), "not a patch name", "expected <image>__<size>__<x>___<y>.txt")
            continue
        anns[p.stem] = read_labeltxt(p, report=report)
    merged = merge_annotations(anns)
    for image_id, ann in merged.items():
        write_labeltxt(dst / f"{image_id}.txt", ann)
    report.log_summary(log)
    return merged
