"""Readers for other oriented-box annotation formats, returned as :class:`lsknet.data.dota.DOTAAnnotation`.

* HRSC2016 XML (``HRSC_Objects/HRSC_Object`` with ``mbox_cx, mbox_cy, mbox_w, mbox_h, mbox_ang``): the
  rotated box is read as ``(cx, cy, w, h, theta)`` pixels/radians in the library convention (MMRotate reads
  it the same way); one class ``ship`` unless ``classwise`` (then ``Class_ID``).
* DIOR-R XML (``object/robndbox`` with the four corners ``x_left_top ... y_left_bottom``): class names are
  lower-cased (``Expressway-Service-area`` -> ``expressway-service-area``, as MMRotate).
* YOLO-OBB text (``class_index x1 y1 x2 y2 x3 y3 x4 y4`` normalised by the image size).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lsknet.data.dota import DOTAAnnotation, SkipReport, parse_labeltxt
from lsknet.errors import DatasetFormatError

#: DIOR-R classes (MMRotate's order, lower case).
DIOR_CLASSES: tuple[str, ...] = (
    "airplane",
    "airport",
    "baseballfield",
    "basketballcourt",
    "bridge",
    "chimney",
    "expressway-service-area",
    "expressway-toll-station",
    "dam",
    "golffield",
    "groundtrackfield",
    "harbor",
    "overpass",
    "ship",
    "stadium",
    "storagetank",
    "tenniscourt",
    "trainstation",
    "vehicle",
    "windmill",
)
HRSC_CLASSES: tuple[str, ...] = ("ship",)


def _parse_xml(path: str | Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{path}: annotation file not found") from err
    except ET.ParseError as err:
        raise DatasetFormatError(f"{path}: not valid XML ({err})") from err


def _float(elem: ET.Element, tag: str, where: str) -> float:
    node = elem.find(tag)
    if node is None or node.text is None:
        raise ValueError(f"missing <{tag}>")
    try:
        value = float(node.text)
    except ValueError as err:
        raise ValueError(f"<{tag}> is not a number: {node.text!r}") from err
    if not math.isfinite(value):
        raise ValueError(f"<{tag}> is not finite")
    return value


def _difficult(obj: ET.Element) -> int:
    """The ``<difficult>`` flag (0 when absent); ValueError for anything but a finite number."""
    text = (obj.findtext("difficult") or "0").strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"<difficult> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"<difficult> is not finite: {text!r}")
    return int(value)


def _lines_from(polys: list[list[float]], names: list[str], diffs: list[int]) -> list[str]:
    return [" ".join(repr(float(v)) for v in p) + f" {n} {d}" for p, n, d in zip(polys, names, diffs)]


def read_hrsc_xml(
    path: str | Path, classwise: bool = False, report: SkipReport | None = None, strict: bool = False
) -> DOTAAnnotation:
    """One HRSC2016 annotation file -> polygons (clockwise) of the ``mbox`` rotated boxes."""
    from lsknet.ops import rbox_to_corners

    report = report if report is not None else SkipReport(strict=strict)
    root = _parse_xml(path)
    polys, names, diffs = [], [], []
    for k, obj in enumerate(root.iter("HRSC_Object")):
        try:
            rbox = [_float(obj, t, str(path)) for t in ("mbox_cx", "mbox_cy", "mbox_w", "mbox_h", "mbox_ang")]
            difficult = _difficult(obj)
        except ValueError as err:
            report.skip(f"{path}:object {k + 1}", "bad HRSC object", str(err))
            continue
        corners = rbox_to_corners(torch.tensor([rbox], dtype=torch.float64))[0].numpy()
        polys.append(corners.reshape(-1).tolist())
        names.append((obj.findtext("Class_ID") or "ship").strip() if classwise else "ship")
        diffs.append(difficult)
    ann = parse_labeltxt(_lines_from(polys, names, diffs), str(path), None, report)
    for key, tag in (("width", "Img_SizeWidth"), ("height", "Img_SizeHeight"), ("image", "Img_FileName")):
        if root.findtext(tag):
            ann.meta[key] = root.findtext(tag).strip()
    return ann


def read_dior_xml(
    path: str | Path,
    classes: Sequence[str] | None = DIOR_CLASSES,
    report: SkipReport | None = None,
    strict: bool = False,
) -> DOTAAnnotation:
    """One DIOR-R ``Oriented Bounding Boxes`` XML -> polygons (left-top, right-top, right-bottom, left-bottom)."""
    report = report if report is not None else SkipReport(strict=strict)
    root = _parse_xml(path)
    tags = [f"{c}_{s}" for s in ("left_top", "right_top", "right_bottom", "left_bottom") for c in ("x", "y")]
    polys, names, diffs = [], [], []
    for k, obj in enumerate(root.iter("object")):
        box = obj.find("robndbox")
        if box is None:
            report.skip(f"{path}:object {k + 1}", "bad DIOR-R object", "missing <robndbox>")
            continue
        try:
            poly = [_float(box, t, str(path)) for t in tags]
            difficult = _difficult(obj)
        except ValueError as err:
            report.skip(f"{path}:object {k + 1}", "bad DIOR-R object", str(err))
            continue
        polys.append(poly)
        names.append((obj.findtext("name") or "").strip().lower())
        diffs.append(difficult)
    ann = parse_labeltxt(_lines_from(polys, names, diffs), str(path), classes, report)
    size = root.find("size")
    if size is not None:
        ann.meta.update({k: (size.findtext(k) or "").strip() for k in ("width", "height")})
    if root.findtext("filename"):
        ann.meta["image"] = root.findtext("filename").strip()
    return ann


def read_yolo_obb(
    path: str | Path,
    image_size: tuple[int, int],
    classes: Sequence[str],
    report: SkipReport | None = None,
    strict: bool = False,
) -> DOTAAnnotation:
    """YOLO-OBB label file -> pixel polygons. ``image_size`` = (height, width); ``classes`` maps the indices.

    Values slightly outside [0, 1] are kept (Ultralytics files have them); difficult is 0 (the format has none).
    """
    report = report if report is not None else SkipReport(strict=strict)
    h, w = image_size
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{path}: label file not found") from err
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise DatasetFormatError(f"{path}: not a text label file ({err})") from None
    lines = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        parts = raw.split()
        if not parts:
            lines.append("")
            continue
        if len(parts) != 9:
            report.skip(f"{path}:{lineno}", "malformed line", f"expected class index and 8 values: {raw.strip()!r}")
            lines.append("")
            continue
        try:
            idx = int(parts[0])
            vals = np.array([float(v) for v in parts[1:]], dtype=np.float64)
        except ValueError:
            report.skip(f"{path}:{lineno}", "non-numeric value", repr(raw.strip()))
            lines.append("")
            continue
        if not 0 <= idx < len(classes):
            report.skip(f"{path}:{lineno}", "unknown class", f"index {idx} of {len(classes)} classes")
            lines.append("")
            continue
        vals = vals * np.array([w, h] * 4, dtype=np.float64)
        lines.append(" ".join(repr(float(v)) for v in vals) + f" {classes[idx]} 0")
    return parse_labeltxt(lines, str(path), classes, report)
