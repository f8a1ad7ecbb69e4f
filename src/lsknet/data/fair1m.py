"""FAIR1M-v1.0 (Gaofen challenge / ISPRS benchmark): XML annotations, class list, and the test-submission writer.

Dataset layout: ``images/<id>.tif`` and ``labelXml/<id>.xml`` (one annotation file per image)::

    <annotation>
      <source><filename>0.tif</filename><origin>GF2/GF3</origin></source>
      <size><width>1000</width><height>1000</height><depth>3</depth></size>
      <objects>
        <object>
          <coordinate>pixel</coordinate><type>rectangle</type><description>None</description>
          <possibleresult><name>Passenger Ship</name></possibleresult>
          <points><point>x,y</point> x 5</points>      <- 4 corners + the first repeated (closed ring)
        </object> ...
      </objects>
    </annotation>

37 fine-grained classes. Inside lsknet (labelTxt after ``lsknet dota split --format fair1m``, class indices, Task1
file names) a class is written with ``_`` for spaces (``Passenger_Ship``: DOTA lines are space separated), in
:data:`FAIR1M_CLASSES`' order, which is the official LSKNet ``FairDataset.CLASSES`` order, so label indices match the
official FAIR1M detector. The XML files (read and written) use the original names with spaces.

The submission (:func:`write_fair1m_submission`) is one XML per test image, ``<id>.xml``, in the annotation layout
with ``<possibleresult><name>`` + ``<probability>`` and the closed 5-point ring per detection.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from lsknet.data.annotations import _parse_xml
from lsknet.data.dota import DOTAAnnotation, SkipReport, Task1Detections, atomic_write_text, parse_labeltxt

#: FAIR1M-v1.0 classes in the official LSKNet ``FairDataset.CLASSES`` order (spaces written as ``_``).
FAIR1M_CLASSES: tuple[str, ...] = (
    "Boeing737",
    "Boeing777",
    "Boeing747",
    "Boeing787",
    "A321",
    "A220",
    "A330",
    "A350",
    "C919",
    "ARJ21",
    "other-airplane",
    "Passenger_Ship",
    "Motorboat",
    "Fishing_Boat",
    "Tugboat",
    "Engineering_Ship",
    "Liquid_Cargo_Ship",
    "Dry_Cargo_Ship",
    "Warship",
    "other-ship",
    "Small_Car",
    "Bus",
    "Cargo_Truck",
    "Dump_Truck",
    "Van",
    "Trailer",
    "Tractor",
    "Truck_Tractor",
    "Excavator",
    "other-vehicle",
    "Baseball_Field",
    "Basketball_Court",
    "Football_Field",
    "Tennis_Court",
    "Roundabout",
    "Intersection",
    "Bridge",
)
#: Annotation folder and file suffix of a FAIR1M source folder (images in ``images/``).
LABEL_DIR, LABEL_SUFFIX = "labelXml", ".xml"


def class_from_xml(name: str) -> str:
    """XML class name -> lsknet class name: ``"Passenger Ship"`` -> ``"Passenger_Ship"`` (whitespace to ``_``)."""
    return "_".join(name.split())


def class_to_xml(name: str) -> str:
    """lsknet class name -> the FAIR1M XML name: ``"Passenger_Ship"`` -> ``"Passenger Ship"``."""
    return name.replace("_", " ")


def _point(text: str | None) -> tuple[float, float]:
    parts = (text or "").replace(" ", "").split(",")
    if len(parts) != 2:
        raise ValueError(f"point {text!r} is not 'x,y'")
    x, y = float(parts[0]), float(parts[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"point {text!r} is not finite")
    return x, y


def read_fair1m_xml(
    path: str | Path,
    classes: Sequence[str] | None = FAIR1M_CLASSES,
    report: SkipReport | None = None,
    strict: bool = False,
) -> DOTAAnnotation:
    """One FAIR1M XML -> :class:`DOTAAnnotation` (polygons (N, 4, 2) in pixels, clockwise; names with ``_``;
    difficult 0). Objects with a bad ``<points>`` list (not 4 corners, or 5 with the ring closed), non-numeric
    points or an unknown class (``classes``; None accepts any) are skipped and counted in ``report``."""
    report = report if report is not None else SkipReport(strict=strict)
    root = _parse_xml(path)
    known = set(classes) if classes is not None else None
    lines = []  # one per object ("" for a skipped one), so parse_labeltxt's line k is object k
    for k, obj in enumerate(root.iter("object")):
        where = f"{path}:object {k + 1}"
        lines.append("")
        name = class_from_xml(obj.findtext("possibleresult/name") or "")
        if not name:
            report.skip(where, "bad FAIR1M object", "missing <possibleresult><name>")
            continue
        if known is not None and name not in known:
            report.skip(where, "unknown class", name)
            continue
        try:
            points = [_point(p.text) for p in obj.findall("points/point")]
        except ValueError as err:
            report.skip(where, "bad FAIR1M object", str(err))
            continue
        if len(points) == 5 and np.allclose(points[0], points[4]):
            points = points[:4]
        if len(points) != 4:
            report.skip(where, "bad FAIR1M object", f"expected 4 corners (+ the first repeated), got {len(points)}")
            continue
        lines[-1] = " ".join(repr(v) for xy in points for v in xy) + f" {name} 0"
    ann = parse_labeltxt(lines, f"{path}:object", classes, report)  # zero-area / self-intersecting: "object:k"
    for key, tag in (("image", "source/filename"), ("origin", "source/origin"), ("width", "size/width"),
                     ("height", "size/height")):  # fmt: skip
        if (root.findtext(tag) or "").strip():
            ann.meta[key] = root.findtext(tag).strip()
    return ann


def format_fair1m_xml(
    image_name: str,
    names: Sequence[str],
    polys: np.ndarray,
    scores: Sequence[float] | None = None,
    size: tuple[int, int, int] | None = None,
    origin: str = "GF2/GF3",
    decimals: int = 6,
) -> str:
    """The FAIR1M XML text for one image: objects ``names`` (lsknet names; written with spaces), ``polys``
    (N, 4, 2) pixels written as the closed 5-point ring, and with ``scores`` a ``<probability>`` each (the
    submission format). ``size`` = (width, height, depth) adds a ``<size>`` block."""
    root = ET.Element("annotation")
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "filename").text = image_name
    ET.SubElement(source, "origin").text = origin
    research = ET.SubElement(root, "research")
    for tag, text in (("version", "1.0"), ("provider", "lsknet"), ("author", "lsknet"), ("pluginname", "FAIR1M"),
                      ("pluginclass", "object detection"), ("time", "")):  # fmt: skip
        ET.SubElement(research, tag).text = text
    if size is not None:
        size_el = ET.SubElement(root, "size")
        for tag, value in zip(("width", "height", "depth"), size):
            ET.SubElement(size_el, tag).text = str(int(value))
    objects = ET.SubElement(root, "objects")
    polys = np.asarray(polys, dtype=np.float64).reshape(-1, 4, 2)
    for k, name in enumerate(names):
        obj = ET.SubElement(objects, "object")
        ET.SubElement(obj, "coordinate").text = "pixel"
        ET.SubElement(obj, "type").text = "rectangle"
        ET.SubElement(obj, "description").text = "None"
        result = ET.SubElement(obj, "possibleresult")
        ET.SubElement(result, "name").text = class_to_xml(name)
        if scores is not None:
            ET.SubElement(result, "probability").text = f"{float(scores[k]):.6f}"
        points = ET.SubElement(obj, "points")
        for x, y in list(polys[k]) + [polys[k][0]]:
            ET.SubElement(points, "point").text = f"{x:.{decimals}f},{y:.{decimals}f}"
    ET.indent(root, space="\t")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_fair1m_submission(
    out_dir: str | Path,
    dets_per_class: Mapping[str, Task1Detections],
    image_ids: Iterable[str] | None = None,
    image_suffix: str = ".tif",
    score_thr: float = 0.0,
) -> list[Path]:
    """Write the FAIR1M test submission: ``out_dir/<image_id>.xml`` per image with every detection of every class
    (class names with spaces, ``<probability>`` = score, 5-point closed rings), highest score first.

    ``dets_per_class``: ``{class: Task1Detections}`` in source-image pixels (e.g. from ``lsknet dota merge``);
    ``image_ids``: every test image (images without detections get a file with empty ``<objects>``); default the
    images that have detections. Returns the written paths (sorted by image id)."""
    out_dir = Path(out_dir)
    per_image: dict[str, list[tuple[float, str, np.ndarray]]] = {str(i): [] for i in (image_ids or ())}
    for name, dets in dets_per_class.items():
        for image_id, score, poly in zip(dets.image_ids, dets.scores, dets.polys):
            if float(score) >= score_thr:
                per_image.setdefault(str(image_id), []).append((float(score), name, poly))
    paths = []
    for image_id in sorted(per_image):
        objs = sorted(per_image[image_id], key=lambda t: -t[0])
        text = format_fair1m_xml(
            f"{image_id}{image_suffix}",
            [o[1] for o in objs],
            np.asarray([o[2] for o in objs], dtype=np.float64).reshape(-1, 4, 2),
            scores=[o[0] for o in objs],
        )
        path = out_dir / f"{image_id}.xml"
        atomic_write_text(path, text)
        paths.append(path)
    return paths


__all__ = [
    "FAIR1M_CLASSES",
    "LABEL_DIR",
    "LABEL_SUFFIX",
    "class_from_xml",
    "class_to_xml",
    "format_fair1m_xml",
    "read_fair1m_xml",
    "write_fair1m_submission",
]
