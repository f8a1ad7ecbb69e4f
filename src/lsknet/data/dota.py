"""DOTA ``labelTxt`` annotation files: reading, writing, class lists, and counted skips of bad lines.

File format (DOTA v1.0/v1.5/v2.0)::

    imagesource:GoogleEarth          <- optional header lines ``key:value``
    gsd:0.146343590398
    x1 y1 x2 y2 x3 y3 x4 y4 class difficult    <- one object per line, pixels, difficult optional (0)

Polygons are returned as ``(N, 4, 2)`` float64 numpy arrays in pixel coordinates, corners in the file's order
(clockwise on screen for real DOTA files; counter-clockwise polygons are re-ordered to clockwise on reading).
``difficult`` is 0 (normal), 1 (difficult) or 2 (truncated by an image split, see :mod:`lsknet.data.split`).

Bad lines are never dropped silently: :class:`SkipReport` warns with ``file:line`` and a reason
(:class:`lsknet.errors.DataSkipWarning`) and counts them; with ``strict=True`` it raises
:class:`lsknet.errors.DatasetFormatError` instead.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lsknet.atomic import atomic_target
from lsknet.data.imageio import IMAGE_EXTENSIONS
from lsknet.errors import DatasetFormatError, DataSkipWarning

log = logging.getLogger(__name__)

#: DOTA-v1.0 classes in the canonical order (class index = position).
DOTA_V1_CLASSES: tuple[str, ...] = (
    "plane",
    "baseball-diamond",
    "bridge",
    "ground-track-field",
    "small-vehicle",
    "large-vehicle",
    "ship",
    "tennis-court",
    "basketball-court",
    "storage-tank",
    "soccer-ball-field",
    "roundabout",
    "harbor",
    "swimming-pool",
    "helicopter",
)
#: DOTA-v1.5 adds ``container-crane``.
DOTA_V15_CLASSES: tuple[str, ...] = DOTA_V1_CLASSES + ("container-crane",)
#: DOTA-v2.0 adds ``airport`` and ``helipad``.
DOTA_V2_CLASSES: tuple[str, ...] = DOTA_V15_CLASSES + ("airport", "helipad")

CLASS_LISTS: dict[str, tuple[str, ...]] = {
    "dota1.0": DOTA_V1_CLASSES,
    "dota1.5": DOTA_V15_CLASSES,
    "dota2.0": DOTA_V2_CLASSES,
}
_CLASS_ALIASES = {"dota": "dota1.0", "dota1": "dota1.0", "dota10": "dota1.0", "dota15": "dota1.5", "dota2": "dota2.0"}



def get_classes(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Resolve a class list: ``"dota1.0"|"dota1.5"|"dota2.0"|"fair1m"``, a comma-separated list, a text file with
    one class per line, or a sequence of names. ``None`` gives DOTA-v1.0."""
    if spec is None:
        return DOTA_V1_CLASSES
    if not isinstance(spec, str):
        names = tuple(str(s).strip() for s in spec)
    else:
        key = spec.strip().lower()
        key = _CLASS_ALIASES.get(key.replace("v", "").replace("-", ""), key.replace("-v", "").replace("_", ""))
        if key in CLASS_LISTS:
            return CLASS_LISTS[key]
        if key in ("fair1m", "fair1m1.0", "fair1m10"):
            from lsknet.data.fair1m import FAIR1M_CLASSES

            return FAIR1M_CLASSES
        if "," not in spec and Path(spec).is_file():
            names = tuple(line.strip() for line in Path(spec).read_text().splitlines() if line.strip())
        else:
            names = tuple(s.strip() for s in spec.split(",") if s.strip())
    if not names:
        raise DatasetFormatError(f"empty class list: {spec!r}")
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise DatasetFormatError(f"class list has duplicates: {dup}")
    return names


class SkipReport:
    """Counts skipped inputs by reason; warns ``file:line: reason`` (or raises when ``strict``).

    One report may be shared across many files so that a command prints one summary at the end.
    """

    def __init__(self, strict: bool = False, max_warnings: int = 50) -> None:
        self.strict = strict
        self.max_warnings = max_warnings
        self.counts: Counter[str] = Counter()
        self._warned = 0

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        """Record one skipped item at ``where`` (``path`` or ``path:line``) for ``reason``."""
        message = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise DatasetFormatError(message)
        self.counts[reason] += 1
        self._warned += 1
        if self._warned <= self.max_warnings:
            warnings.warn(message, DataSkipWarning, stacklevel=3)
        elif self._warned == self.max_warnings + 1:
            warnings.warn("further skip warnings suppressed; see the summary", DataSkipWarning, stacklevel=3)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line: ``skipped N items: reason1 x3, reason2 x1`` (or ``nothing skipped``)."""
        if not self.counts:
            return "nothing skipped"
        parts = ", ".join(f"{reason} x{n}" for reason, n in sorted(self.counts.items()))
        return f"skipped {self.total} items: {parts}"

    def log_summary(self, logger: logging.Logger | None = None) -> None:
        (logger or log).log(logging.WARNING if self.counts else logging.INFO, self.summary())


@dataclass
class DOTAAnnotation:
    """Objects of one image: ``polys`` (N,4,2) float64 pixels, ``names`` (N class names), ``difficult`` (N,) int
    (0/1/2), ``meta`` header fields (e.g. ``imagesource``, ``gsd``)."""

    polys: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 2), np.float64))
    names: list[str] = field(default_factory=list)
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    meta: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def labels(self, classes: Sequence[str]) -> np.ndarray:
        """Class indices (N,) int64 in ``classes``; names not in the list raise ``KeyError``."""
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[n] for n in self.names], dtype=np.int64)

    def select(self, keep: np.ndarray | Sequence[int] | Sequence[bool]) -> DOTAAnnotation:
        """A new annotation with the objects at ``keep`` (indices or boolean mask)."""
        keep = np.asarray(keep)
        if keep.dtype == bool:
            keep = np.nonzero(keep)[0]
        return DOTAAnnotation(
            self.polys[keep].copy(), [self.names[i] for i in keep], self.difficult[keep].copy(), dict(self.meta)
        )


def polygon_signed_area(polys: np.ndarray) -> np.ndarray:
    """Shoelace area of (N,K,2) polygons in image coordinates (y down): positive = clockwise on screen."""
    x, y = polys[..., 0], polys[..., 1]
    return 0.5 * np.sum(x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y, axis=-1)


def quads_self_intersect(quads: np.ndarray) -> np.ndarray:
    """(N,) bool: True where opposite edges of the (N,4,2) quadrilaterals properly cross (a 'bow-tie')."""
    q = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)

    def orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])

    def cross(p1: np.ndarray, p2: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
        return (orient(r1, r2, p1) * orient(r1, r2, p2) < 0) & (orient(p1, p2, r1) * orient(p1, p2, r2) < 0)

    return cross(q[:, 0], q[:, 1], q[:, 2], q[:, 3]) | cross(q[:, 1], q[:, 2], q[:, 3], q[:, 0])


def parse_labeltxt(
    lines: Iterable[str],
    source: str = "<labelTxt>",
    classes: Sequence[str] | None = None,
    report: SkipReport | None = None,
    image_size: tuple[int, int] | None = None,
    min_area: float = 1e-6,
) -> DOTAAnnotation:
    """Parse DOTA ``labelTxt`` lines (see module doc). ``classes``: names outside it are skipped (warned).

    ``image_size`` = (height, width): objects entirely outside the image are skipped (partly outside is kept,
    DOTA has such objects). Malformed lines, NaN/inf, zero-area (< ``min_area`` px^2) and self-intersecting
    polygons are skipped with a ``source:line`` warning counted in ``report``.
    """
    report = report if report is not None else SkipReport()
    known = set(classes) if classes is not None else None
    meta: dict[str, str] = {}
    polys: list[list[float]] = []
    names: list[str] = []
    diffs: list[int] = []
    where: list[tuple[int, str]] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 9:
            head, sep, value = line.partition(":")
            if sep and head and not any(ch.isspace() for ch in head) and not _is_number(head):
                meta[head.strip().lower()] = value.strip()
                continue
            report.skip(f"{source}:{lineno}", "malformed line", f"expected 8 coordinates and a class name: {line!r}")
            continue
        if len(parts) > 10:
            report.skip(f"{source}:{lineno}", "malformed line", f"too many fields: {line!r}")
            continue
        try:
            coords = [float(v) for v in parts[:8]]
        except ValueError:
            report.skip(f"{source}:{lineno}", "non-numeric coordinate", repr(line))
            continue
        if not all(math.isfinite(v) for v in coords):
            report.skip(f"{source}:{lineno}", "non-finite coordinate", repr(line))
            continue
        name = parts[8]
        difficult = 0
        if len(parts) == 10:
            try:
                difficult = int(float(parts[9]))
            except (ValueError, OverflowError):  # "x", "nan", "1e400"
                report.skip(f"{source}:{lineno}", "bad difficult flag", repr(line))
                continue
            if difficult not in (0, 1, 2):
                report.skip(f"{source}:{lineno}", "bad difficult flag", repr(line))
                continue
        if known is not None and name not in known:
            report.skip(f"{source}:{lineno}", "unknown class", name)
            continue
        polys.append(coords)
        names.append(name)
        diffs.append(difficult)
        where.append((lineno, line))
    quads = np.asarray(polys, dtype=np.float64).reshape(-1, 4, 2)
    areas = polygon_signed_area(quads)
    bowtie = quads_self_intersect(quads)
    flat = np.abs(areas) < min_area
    if image_size is not None:
        h, w = image_size
        outside = (
            (quads[..., 0].max(1) <= 0)
            | (quads[..., 1].max(1) <= 0)
            | (quads[..., 0].min(1) >= w)
            | (quads[..., 1].min(1) >= h)
        )
    else:
        outside = np.zeros(len(quads), bool)
    keep = ~(flat | bowtie | outside)
    for i in np.nonzero(~keep)[0]:
        lineno, line = where[i]
        if flat[i]:
            report.skip(f"{source}:{lineno}", "zero-area polygon", repr(line))
        elif bowtie[i]:
            report.skip(f"{source}:{lineno}", "self-intersecting polygon", repr(line))
        else:
            report.skip(
                f"{source}:{lineno}", "polygon outside the image", f"image {image_size[1]}x{image_size[0]}: {line!r}"
            )
    ccw = areas < 0  # counter-clockwise on screen: keep the first corner, reverse the turning direction
    quads[ccw] = quads[ccw][:, [0, 3, 2, 1]]
    polys = quads[keep]
    names = [n for n, k in zip(names, keep) if k]
    diffs = [d for d, k in zip(diffs, keep) if k]
    return DOTAAnnotation(
        np.asarray(polys, dtype=np.float64).reshape(-1, 4, 2), names, np.asarray(diffs, dtype=np.int64), meta
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_labeltxt(
    path: str | Path,
    classes: Sequence[str] | None = None,
    report: SkipReport | None = None,
    strict: bool = False,
    image_size: tuple[int, int] | None = None,
) -> DOTAAnnotation:
    """Read one DOTA ``labelTxt`` file (see :func:`parse_labeltxt`). An empty file is an image without objects.

    Raises :class:`DatasetFormatError` when the file is missing or not text.
    """
    path = Path(path)
    report = report if report is not None else SkipReport(strict=strict)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{path}: label file not found") from err
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise DatasetFormatError(f"{path}: not a text label file ({err})") from err
    return parse_labeltxt(text.splitlines(), str(path), classes, report, image_size)


def format_number(value: float, decimals: int = 2) -> str:
    """Compact decimal text: integers without a fraction, otherwise up to ``decimals`` digits."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_labeltxt(ann: DOTAAnnotation, decimals: int = 2) -> str:
    """The ``labelTxt`` text of ``ann`` (header lines first, then one object per line)."""
    lines = [f"{k}:{v}" for k, v in ann.meta.items()]
    for quad, name, diff in zip(ann.polys.reshape(-1, 8), ann.names, ann.difficult):
        coords = " ".join(format_number(float(v), decimals) for v in quad)
        lines.append(f"{coords} {name} {int(diff)}")
    return "\n".join(lines) + ("\n" if lines else "")


def check_file_name(name: str, what: str = "name") -> str:
    """``name`` if it is one plain file name; a :class:`DatasetFormatError` for names from data or configs that
    would write elsewhere (``..``, a path separator, an absolute path, a NUL byte) or are empty."""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or Path(name).is_absolute()
        or Path(name).name != name
    )
    if bad:
        raise DatasetFormatError(f"unsafe {what} {name!r}: output file names cannot contain '/', '\\', '..' or NUL")
    return name


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_labeltxt(path: str | Path, ann: DOTAAnnotation, decimals: int = 2) -> None:
    """Write ``ann`` as a DOTA ``labelTxt`` file (atomically) that the official DOTA_devkit reads."""
    atomic_write_text(path, format_labeltxt(ann, decimals))


def find_image(images_dir: str | Path, stem: str) -> Path | None:
    """The image file ``images_dir/stem.<ext>`` for the usual extensions, or None."""
    images_dir = Path(images_dir)
    for ext in IMAGE_EXTENSIONS:
        for candidate in (images_dir / f"{stem}{ext}", images_dir / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def list_images(images_dir: str | Path) -> dict[str, Path]:
    """``{stem: path}`` of the image files in ``images_dir`` (sorted by stem)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        return {}
    found = {p.stem: p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
    return dict(sorted(found.items()))


def read_labeltxt_dir(
    label_dir: str | Path,
    classes: Sequence[str] | None = None,
    report: SkipReport | None = None,
    strict: bool = False,
) -> dict[str, DOTAAnnotation]:
    """Read every ``*.txt`` in ``label_dir`` -> ``{image_id: annotation}`` sorted by image id."""
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise DatasetFormatError(f"{label_dir}: label folder not found")
    report = report if report is not None else SkipReport(strict=strict)
    return {p.stem: read_labeltxt(p, classes, report) for p in sorted(label_dir.glob("*.txt"))}


def pair_images_and_labels(
    root: str | Path,
    report: SkipReport | None = None,
    strict: bool = False,
    labels_required: bool = True,
    label_dir: str = "labelTxt",
    label_suffix: str = ".txt",
) -> list[tuple[str, Path, Path | None]]:
    """Match ``root/images/*`` with ``root/<label_dir>/*<label_suffix>`` (DOTA: ``labelTxt/*.txt``; FAIR1M:
    ``labelXml/*.xml``) -> ``[(image_id, image_path, label_path|None)]``.

    Labels without images are skipped (warned). Images without labels are skipped (warned) when
    ``labels_required``; otherwise they are returned with ``None`` (test sets have no labels).
    """
    root = Path(root)
    report = report if report is not None else SkipReport(strict=strict)
    images = list_images(root / "images")
    if not images:
        raise DatasetFormatError(f"{root / 'images'}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
    folder = root / label_dir
    labels = {p.stem: p for p in sorted(folder.glob(f"*{label_suffix}"))} if folder.is_dir() else {}
    if labels_required and not folder.is_dir():
        raise DatasetFormatError(f"{folder}: label folder not found")
    for stem in labels.keys() - images.keys():
        report.skip(str(labels[stem]), "label without image")
    pairs = []
    for stem, image in images.items():
        label = labels.get(stem)
        if label is None and labels_required:
            report.skip(str(image), "image without label file")
            continue
        pairs.append((stem, image, label))
    return pairs


_TASK1_NAMES = ("Task1Detections", "parse_task1", "read_task1_dir", "format_task1", "write_task1_dir")


def __getattr__(name: str):  # Task1 files moved to lsknet.data.task1; the old import path keeps working
    if name in _TASK1_NAMES:
        from lsknet.data import task1

        return getattr(task1, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
