"""Split large DOTA images into overlapping patches (the MMRotate ``img_split.py`` / DOTA_devkit semantics).

* Windows: for each (size, gap) and rate, the window side is ``int(size / rate)`` and the step
  ``int(size / rate) - int(gap / rate)`` in **source pixels**; ``n = 1`` if the image fits, else
  ``ceil((W - side) / step + 1)`` starts ``0, step, 2*step, ...``, the last one shifted to end at the border.
  Windows whose part inside the image is ``<= img_rate_thr`` (0.6) of their area are dropped (if all are, the
  best ones are kept). Multi-scale (rates != 1) thus crops bigger/smaller windows of the original image, as
  MMRotate does; the training/inference pipeline resizes patches to the network size.
* Objects: kept in a window when IoF = area(object inside window) / area(object) ``>= iof_thr`` (0.7).
  Objects with IoF < 1 are truncated: marked difficult ``2`` and (``clip_truncated=True``, DOTA_devkit-like)
  replaced by the rectangle in the object's own orientation that covers its visible part.
* Patches: ``<image_id>__<window side>__<x>___<y>`` (e.g. ``P0706__1024__0___824``; x, y = window origin in
  source pixels), PNG, padded to the window side with ``pad_value`` when the image is smaller (MMRotate pads
  with its mean colour). :func:`parse_patch_name` reads the name back.
* Outputs are written atomically; re-running an interrupted split overwrites the same files.
* Sources (``fmt``): ``dota`` (``images/`` + ``labelTxt/*.txt``) or ``fair1m`` (``images/*.tif`` +
  ``labelXml/*.xml``, :mod:`lsknet.data.fair1m`); the patches are always DOTA-format (``labelTxt``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lsknet.data.dota import (
    DOTAAnnotation,
    SkipReport,
    pair_images_and_labels,
    read_labeltxt,
    write_labeltxt,
)
from lsknet.data.imageio import load_rgb
from lsknet.errors import DatasetFormatError

log = logging.getLogger(__name__)

#: Source annotation formats :func:`split_dataset` reads.
SOURCE_FORMATS = ("dota", "fair1m")


def source_format(fmt: str) -> tuple[str, str, Callable[..., DOTAAnnotation]]:
    """``(label folder, label file suffix, reader(path, classes, report))`` of a source format (``dota``,
    ``fair1m``)."""
    if fmt == "dota":
        return "labelTxt", ".txt", read_labeltxt
    if fmt == "fair1m":
        from lsknet.data.fair1m import LABEL_DIR, LABEL_SUFFIX, read_fair1m_xml

        return LABEL_DIR, LABEL_SUFFIX, read_fair1m_xml
    raise DatasetFormatError(f"unknown annotation format {fmt!r}; expected one of {', '.join(SOURCE_FORMATS)}")

#: Official single-scale setting (1024 windows, 200 overlap).
SS_PRESET = {"sizes": (1024,), "gaps": (200,), "rates": (1.0,)}
#: Official multi-scale setting (1024 windows, 500 overlap, rates 0.5/1.0/1.5).
MS_PRESET = {"sizes": (1024,), "gaps": (500,), "rates": (0.5, 1.0, 1.5)}
#: MMRotate's padding colour (its ``[104, 116, 124]`` BGR mean) as RGB.
PAD_VALUE = (124, 116, 104)

_PATCH_RE = re.compile(r"^(?P<src>.+)__(?P<side>\d+)__(?P<x>\d+)___(?P<y>\d+)$")


@dataclass(frozen=True)
class PatchName:
    """Parsed patch name: source image id, window side, window origin (x, y) in source pixels."""

    image_id: str
    side: int
    x: int
    y: int


def patch_name(image_id: str, window: Sequence[int]) -> str:
    """``<image_id>__<side>__<x>___<y>`` for window ``(x0, y0, x1, y1)``."""
    x0, y0, x1, _ = (int(v) for v in window)
    return f"{image_id}__{x1 - x0}__{x0}___{y0}"


def parse_patch_name(name: str) -> PatchName:
    """Inverse of :func:`patch_name` (a file suffix is ignored). The source id may itself contain ``__``.

    Raises :class:`DatasetFormatError` for names that do not end in ``__<int>__<int>___<int>``.
    """
    stem = Path(name).stem if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".txt") else name
    m = _PATCH_RE.match(stem)
    if not m:
        raise DatasetFormatError(f"{name!r} is not a patch name of the form <image>__<size>__<x>___<y>")
    return PatchName(m["src"], int(m["side"]), int(m["x"]), int(m["y"]))


def _starts(length: int, side: int, step: int) -> list[int]:
    n = 1 if length <= side else math.ceil((length - side) / step + 1)
    starts = [step * i for i in range(n)]
    if len(starts) > 1 and starts[-1] + side > length:
        starts[-1] = length - side
    return starts


def compute_windows(
    width: int,
    height: int,
    sizes: Sequence[int] = (1024,),
    gaps: Sequence[int] = (200,),
    rates: Sequence[float] = (1.0,),
    img_rate_thr: float = 0.6,
) -> np.ndarray:
    """Sliding windows ``(K, 4)`` int64 ``(x0, y0, x1, y1)`` in source pixels (see module doc)."""
    if len(sizes) != len(gaps):
        raise DatasetFormatError(f"sizes {list(sizes)} and gaps {list(gaps)} must have the same length")
    windows = []
    for rate in rates:
        if rate <= 0:
            raise DatasetFormatError(f"rates must be positive, got {rate}")
        for size, gap in zip(sizes, gaps):
            side, g = int(size / rate), int(gap / rate)
            if not side > g >= 0:
                raise DatasetFormatError(f"invalid window size/gap pair {size}/{gap} (need size > gap >= 0)")
            xs, ys = _starts(width, side, side - g), _starts(height, side, side - g)
            for x in xs:
                for y in ys:
                    windows.append((x, y, x + side, y + side))
    win = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    inside = (np.minimum(win[:, 2], width) - np.clip(win[:, 0], 0, width)) * (
        np.minimum(win[:, 3], height) - np.clip(win[:, 1], 0, height)
    )
    rate_in = inside / ((win[:, 2] - win[:, 0]) * (win[:, 3] - win[:, 1]))
    if not (rate_in > img_rate_thr).any():
        rate_in[np.abs(rate_in - rate_in.max()) < 0.01] = 1.0
    return win[rate_in > img_rate_thr]


def _window_polys(windows: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (windows[:, i].astype(np.float64) for i in range(4))
    return np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1), np.stack([x0, y1], 1)], 1)


def window_iofs(polys: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(N, K) float64: area of each object polygon inside each window / area of the polygon."""
    from lsknet.ops import poly_iof

    n, k = len(polys), len(windows)
    out = np.zeros((n, k), np.float64)
    if n == 0 or k == 0:
        return out
    lo, hi = polys.min(axis=1), polys.max(axis=1)
    ii, jj = np.nonzero(
        (lo[:, None, 0] < windows[None, :, 2])
        & (hi[:, None, 0] > windows[None, :, 0])
        & (lo[:, None, 1] < windows[None, :, 3])
        & (hi[:, None, 1] > windows[None, :, 1])
    )
    if len(ii):
        a = torch.from_numpy(np.ascontiguousarray(polys[ii]))
        b = torch.from_numpy(_window_polys(windows[jj]))
        out[ii, jj] = poly_iof(a, b, aligned=True).numpy()
    return out


def _clip_polygon(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon (K, 2) to the axis-aligned window; returns (M, 2)."""
    pts = [tuple(p) for p in points]
    for axis, bound, keep_greater in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if not pts:
            break
        out = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            cur_in = cur[axis] >= bound if keep_greater else cur[axis] <= bound
            prev_in = prev[axis] >= bound if keep_greater else prev[axis] <= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(tuple(prev[d] + t * (cur[d] - prev[d]) for d in range(2)))
            if cur_in:
                out.append(cur)
        pts = out
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def clip_to_window(polys: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """(N,4,2) polygons -> the rectangles, in each object's own orientation (its minimum-area rectangle), that
    cover the part of the polygon inside ``window`` ``(x0, y0, x1, y1)``; DOTA clockwise corner order."""
    from lsknet.ops import poly_to_rbox, rbox_to_corners

    if len(polys) == 0:
        return polys.copy()
    rboxes = poly_to_rbox(torch.from_numpy(np.ascontiguousarray(polys, dtype=np.float64)), method="exact").numpy()
    out = np.empty_like(polys, dtype=np.float64)
    for i, (poly, rb) in enumerate(zip(polys, rboxes)):
        visible = _clip_polygon(poly, *window)
        if len(visible) < 3:
            out[i] = poly
            continue
        c, s = math.cos(rb[4]), math.sin(rb[4])
        rel = visible - rb[:2]
        u = rel[:, 0] * c + rel[:, 1] * s  # along the width axis
        v = -rel[:, 0] * s + rel[:, 1] * c
        cu, cv = (u.min() + u.max()) / 2, (v.min() + v.max()) / 2
        centre = rb[:2] + np.array([cu * c - cv * s, cu * s + cv * c])
        box = np.array([[centre[0], centre[1], u.max() - u.min(), v.max() - v.min(), rb[4]]])
        out[i] = rbox_to_corners(torch.from_numpy(box)).numpy()[0]
    return out


def split_annotation(
    ann: DOTAAnnotation, windows: np.ndarray, iof_thr: float = 0.7, clip_truncated: bool = True
) -> list[DOTAAnnotation]:
    """Per window: the objects with IoF >= ``iof_thr``, translated to window coordinates; truncated ones
    (IoF < 1) get difficult 2 and, with ``clip_truncated``, their visible rectangle."""
    iofs = window_iofs(ann.polys, windows)
    out = []
    for k, win in enumerate(windows):
        idx = np.nonzero(iofs[:, k] >= iof_thr)[0]
        sub = ann.select(idx)
        trunc = iofs[idx, k] < 1.0 - 1e-9
        if trunc.any():
            sub.difficult[trunc] = 2
            if clip_truncated:
                sub.polys[trunc] = clip_to_window(sub.polys[trunc], win)
        sub.polys = sub.polys - np.array([win[0], win[1]], dtype=np.float64)
        out.append(sub)
    return out


def split_image(
    image_path: str | Path,
    ann: DOTAAnnotation | None,
    out_dir: str | Path,
    sizes: Sequence[int] = (1024,),
    gaps: Sequence[int] = (200,),
    rates: Sequence[float] = (1.0,),
    img_rate_thr: float = 0.6,
    iof_thr: float = 0.7,
    clip_truncated: bool = True,
    pad: bool = True,
    pad_value: Sequence[int] = PAD_VALUE,
    image_id: str | None = None,
    ext: str = ".png",
) -> list[str]:
    """Split one image (and its annotation, or ``None`` for unlabeled test images) into
    ``out_dir/images/<patch>.png`` (+ ``out_dir/labelTxt/<patch>.txt``). Returns the patch names."""
    image_path, out_dir = Path(image_path), Path(out_dir)
    image_id = image_id or image_path.stem
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # DOTA images reach 20000 x 20000 px
    try:
        # The one decoder and 8-bit rule (lsknet.data.imageio): 16-bit sources become the same patches the predictor
        # sees when it reads the whole image.
        array = load_rgb(image_path)
    except DatasetFormatError as err:
        raise OSError(str(err)) from None  # undecodable image: the caller counts it as a skip
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    height, width = array.shape[:2]
    windows = compute_windows(width, height, sizes, gaps, rates, img_rate_thr)
    anns = split_annotation(ann, windows, iof_thr, clip_truncated) if ann is not None else None
    names = []
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for k, win in enumerate(windows):
        name = patch_name(image_id, win)
        x0, y0, x1, y1 = (int(v) for v in win)
        crop = array[y0:y1, x0:x1]
        if pad and crop.shape[:2] != (y1 - y0, x1 - x0):
            canvas = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
            canvas[:] = np.asarray([int(v) for v in pad_value], dtype=np.uint8)
            canvas[: crop.shape[0], : crop.shape[1]] = crop
            crop = canvas
        target = out_dir / "images" / f"{name}{ext}"
        tmp = target.with_name(f".{target.stem}.tmp{ext}")
        Image.fromarray(np.ascontiguousarray(crop), "RGB").save(tmp)
        tmp.replace(target)
        if anns is not None:
            write_labeltxt(out_dir / "labelTxt" / f"{name}.txt", anns[k])
        names.append(name)
    return names


def _split_one(
    item: tuple[str, Path, Path | None], options: dict, classes, strict: bool, fmt: str = "dota"
) -> tuple[str, list, dict]:
    image_id, image_path, label_path = item
    report = SkipReport(strict=strict)
    reader = source_format(fmt)[2]
    ann = reader(label_path, classes, report) if label_path is not None else None
    try:
        names = split_image(image_path, ann, image_id=image_id, **options)
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises these for undecodable images
        if isinstance(err, DatasetFormatError):
            raise
        report.skip(str(image_path), "undecodable image", str(err))
        names = []
    return image_id, names, dict(report.counts)


def split_dataset(
    src: str | Path,
    dst: str | Path,
    sizes: Sequence[int] = (1024,),
    gaps: Sequence[int] = (200,),
    rates: Sequence[float] = (1.0,),
    img_rate_thr: float = 0.6,
    iof_thr: float = 0.7,
    clip_truncated: bool = True,
    pad: bool = True,
    labels: bool | None = None,
    classes: Sequence[str] | None = None,
    workers: int = 1,
    strict: bool = False,
    progress: bool = True,
    fmt: str = "dota",
) -> dict:
    """Split ``src/images`` (+ ``src/labelTxt``, or ``src/labelXml`` with ``fmt="fair1m"``) into ``dst/images``
    (+ ``dst/labelTxt``).

    ``labels``: None = use labels when the source label folder exists, False = images only (test sets).
    ``classes``: objects of other classes are skipped and counted (None: all; FAIR1M default: its 37 classes).
    ``workers`` > 1 splits images in parallel processes; one source image is in memory per worker.
    Returns a summary: ``images``, ``patches``, ``skipped`` counts by reason.
    """
    src, dst = Path(src), Path(dst)
    label_dir, label_suffix, _ = source_format(fmt)
    if fmt == "fair1m" and classes is None:
        from lsknet.data.fair1m import FAIR1M_CLASSES

        classes = FAIR1M_CLASSES
    if labels is None:
        labels = (src / label_dir).is_dir()
    report = SkipReport(strict=strict)
    items = pair_images_and_labels(src, report, labels_required=bool(labels), label_dir=label_dir,
                                   label_suffix=label_suffix)  # fmt: skip
    if not labels:
        items = [(i, p, None) for i, p, _ in items]
    options = dict(
        out_dir=dst,
        sizes=tuple(sizes),
        gaps=tuple(gaps),
        rates=tuple(rates),
        img_rate_thr=img_rate_thr,
        iof_thr=iof_thr,
        clip_truncated=clip_truncated,
        pad=pad,
    )
    compute_windows(64, 64, sizes, gaps, rates)  # validate the settings before starting workers
    (dst / "images").mkdir(parents=True, exist_ok=True)
    if labels:
        (dst / "labelTxt").mkdir(parents=True, exist_ok=True)
    work = partial(_split_one, options=options, classes=classes, strict=strict, fmt=fmt)
    bar = _progress(len(items), "split", progress)
    n_patches = 0
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(work, items)
            for _, names, counts in results:
                n_patches += len(names)
                report.counts.update(counts)
                bar.update(1)
    else:
        for item in items:
            _, names, counts = work(item)
            n_patches += len(names)
            report.counts.update(counts)
            bar.update(1)
    bar.close()
    report.log_summary(log)
    return {"images": len(items), "patches": n_patches, "skipped": dict(report.counts)}


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with lightning
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="img", leave=False)
