"""Semantic-segmentation data in the real on-disk formats: image folder + mask folder, paired by file name.

Label codings (:func:`mask_coding`), masks decoded to ``(H, W)`` uint8 class indices with ``ignore_index`` (255):

- ``isprs`` (Potsdam, Vaihingen): RGB colour masks, 6 classes impervious surfaces (255,255,255), building
  (0,0,255), low vegetation (0,255,255), tree (0,255,0), car (255,255,0), clutter (255,0,0); black (0,0,0) is the
  boundary of the eroded ``*_noBoundary`` labels -> ignore. One-channel masks use the mmseg converter coding
  0 = boundary (ignored), 1..6 = the classes (``reduce_zero_label``). ``clutter="ignore"`` drops clutter (5 classes).
- ``loveda``: index masks 0 = no-data (ignored), 1..7 = background, building, road, water, barren, forest,
  agriculture -> 0..6.
- ``uavid``: RGB colour masks, 8 classes (background clutter (0,0,0), building (128,0,0), road (128,64,128),
  tree (0,128,0), low vegetation (128,128,0), moving car (64,0,128), static car (192,0,192), human (64,64,0)).
- ``folder``: index masks ``0..K-1`` (``ignore_index`` allowed), or RGB masks with a given ``palette``.

Colours not in the palette and index values out of range raise :class:`DatasetFormatError` listing them with pixel
counts (``unknown="error"``), or are mapped to ``ignore_index`` with a :class:`DataSkipWarning` (``"ignore"``).
Images are returned as ImageNet-normalised float tensors ``(C, H, W)``; masks as int64 ``(H, W)``.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lsknet.data.imageio import (
    IMAGE_EXTENSIONS,  # noqa: F401  (re-exported)
    to_uint8,
)
from lsknet.data.imageio import read_image as _decode
from lsknet.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD, GeoSegTransform, SegTransform, mosaic, to_tensor
from lsknet.errors import ConfigError, DatasetFormatError, DataSkipWarning

_log = logging.getLogger(__name__)


ISPRS_CLASSES = ("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter")
ISPRS_PALETTE = ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))
LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")
LOVEDA_PALETTE = (
    (255, 255, 255),
    (255, 0, 0),
    (255, 255, 0),
    (0, 0, 255),
    (159, 129, 183),
    (0, 255, 0),
    (255, 195, 128),
)
UAVID_CLASSES = (
    "background_clutter",
    "building",
    "road",
    "tree",
    "low_vegetation",
    "moving_car",
    "static_car",
    "human",
)
UAVID_PALETTE = (
    (0, 0, 0),
    (128, 0, 0),
    (128, 64, 128),
    (0, 128, 0),
    (128, 128, 0),
    (64, 0, 128),
    (192, 0, 192),
    (64, 64, 0),
)
FORMATS = ("isprs", "loveda", "uavid", "folder")


@dataclass
class MaskCoding:
    """How mask files map to class indices (see module doc). ``remap`` maps class -> new class or ignore."""

    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] | None = None  # colour of each raw class (RGB masks, visualisation)
    ignore_index: int = 255
    reduce_zero_label: bool = False  # one-channel masks: 0 -> ignore, k -> k - 1
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    remap: dict[int, int] = field(default_factory=dict)  # after decoding: class -> class (or ignore_index)
    unknown: str = "error"  # "error" | "ignore"

    def decode(self, mask: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
        """Raw mask array ``(H, W)`` or ``(H, W, 3)`` -> ``(H, W)`` uint8 class indices."""
        raw_classes = len(self.palette) if self.palette is not None else self.num_classes
        if mask.ndim == 3:
            out = self._decode_rgb(mask[..., :3], path)
        else:
            m = mask.astype(np.int64)
            lo, hi = (1, raw_classes + 1) if self.reduce_zero_label else (0, raw_classes)
            bad = (m != self.ignore_index) & ((m < lo) | (m >= hi))
            if self.reduce_zero_label:
                bad &= m != 0
            if bad.any():
                self._unknown(path, f"label values out of range [{lo}, {hi})", _counts(m[bad]))
                m = np.where(bad, self.ignore_index, m)
            if self.reduce_zero_label:
                m = np.where(m == 0, self.ignore_index, np.where(m == self.ignore_index, m, m - 1))
            out = m.astype(np.uint8)
        if self.remap:
            lut = np.arange(256, dtype=np.uint8)
            for src, dst in self.remap.items():
                lut[src] = dst
            out = lut[out]
        return out

    def _decode_rgb(self, rgb: np.ndarray, path: str | Path) -> np.ndarray:
        if self.palette is None:
            raise DatasetFormatError(f"{path}: RGB mask but no palette for this dataset; give index masks or a palette")
        code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(self.palette)}
        lut.update({(r << 16) | (g << 8) | b: self.ignore_index for r, g, b in self.ignore_colors})
        uniq, inverse = np.unique(code, return_inverse=True)
        mapped = np.array([lut.get(int(u), -1) for u in uniq], dtype=np.int64)
        if (mapped < 0).any():
            counts = np.bincount(inverse.ravel(), minlength=len(uniq))
            listing = ", ".join(
                f"({u >> 16},{(u >> 8) & 255},{u & 255}): {counts[i]} px" for i, u in enumerate(uniq) if mapped[i] < 0
            )
            self._unknown(path, "colours not in the palette", listing)
            mapped[mapped < 0] = self.ignore_index
        return mapped[inverse].reshape(code.shape).astype(np.uint8)

    def _unknown(self, path: str | Path, what: str, listing: str) -> None:
        if self.unknown == "error":
            raise DatasetFormatError(f"{path}: {what}: {listing}")
        warnings.warn(f"{path}: {what} mapped to ignore ({self.ignore_index}): {listing}", DataSkipWarning, 2)


def mask_coding(
    fmt: str,
    num_classes: int | None = None,
    *,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    clutter: str = "keep",
    reduce_zero_label: bool | None = None,
    ignore_index: int = 255,
    unknown_colors: str = "error",
) -> MaskCoding:
    """The :class:`MaskCoding` of a dataset format (``isprs``, ``loveda``, ``uavid``, ``folder``)."""
    if unknown_colors not in ("error", "ignore"):
        raise ConfigError(f"unknown_colors must be 'error' or 'ignore', not {unknown_colors!r}")
    common = dict(ignore_index=ignore_index, unknown=unknown_colors)
    if fmt == "isprs":
        if clutter not in ("keep", "ignore"):
            raise ConfigError(f"clutter must be 'keep' or 'ignore', not {clutter!r}")
        names = ISPRS_CLASSES if clutter == "keep" else ISPRS_CLASSES[:5]
        remap = {5: ignore_index} if clutter == "ignore" else {}
        rz = True if reduce_zero_label is None else reduce_zero_label
        return MaskCoding(len(names), names, ISPRS_PALETTE, reduce_zero_label=rz, ignore_colors=((0, 0, 0),),
                          remap=remap, **common)  # fmt: skip
    if fmt == "loveda":
        rz = True if reduce_zero_label is None else reduce_zero_label
        return MaskCoding(7, LOVEDA_CLASSES, LOVEDA_PALETTE, reduce_zero_label=rz, **common)
    if fmt == "uavid":
        return MaskCoding(8, UAVID_CLASSES, UAVID_PALETTE, reduce_zero_label=bool(reduce_zero_label), **common)
    if fmt == "folder":
        if palette is not None:
            num_classes = num_classes or len(palette)
        if not num_classes:
            raise ConfigError("a 'folder' dataset needs num_classes (or a palette)")
        names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))
        if len(names) != num_classes:
            raise ConfigError(f"{len(names)} class names for {num_classes} classes")
        pal = tuple(tuple(int(v) for v in c) for c in palette) if palette is not None else None
        return MaskCoding(num_classes, names, pal, reduce_zero_label=bool(reduce_zero_label), **common)
    raise ConfigError(f"unknown segmentation data format {fmt!r}; expected one of {', '.join(FORMATS)}")


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """A fixed, distinct colour per class (for colourised predictions of datasets without a palette)."""
    rng = np.random.default_rng(12345)
    base = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128)]
    extra = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(max(0, num_classes - len(base)))]
    return tuple((base + extra)[:num_classes])


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 RGB; ``ignore_index`` and unknown values are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[ignore_index] = 0
    return lut[labels.astype(np.uint8)]


# ----------------------------------------------------------------------------------------------- files and pairing
def read_image(path: str | Path) -> np.ndarray:
    """An image file as ``(H, W, C)`` uint8, all bands kept: :func:`lsknet.data.imageio.read_image` scaled by the one
    8-bit rule (:func:`lsknet.data.imageio.to_uint8`; 16-bit / float images stretched per image)."""
    return to_uint8(_decode(path))


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as stored: ``(H, W)`` for one-channel / palette PNGs (indices), ``(H, W, 3)`` for RGB.
    Alpha is dropped (LA -> L, PA -> P, RGBA -> RGB), other colour modes (CMYK, YCbCr, ...) become RGB; float masks
    must hold whole numbers. Anything undecodable is a :class:`DatasetFormatError` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("LA", "PA"):
                im = im.convert(im.mode[0])
            elif im.mode not in ("1", "L", "P", "I", "F", "RGB") and not im.mode.startswith("I;"):
                im = im.convert("RGB")
            mask = np.asarray(im)
    except Image.DecompressionBombError as err:
        raise DatasetFormatError(f"{path}: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:  # UnidentifiedImageError is an OSError
        raise DatasetFormatError(f"{path}: cannot decode mask ({err})") from None
    if mask.dtype.kind == "f" and not (np.isfinite(mask).all() and (mask == np.round(mask)).all()):
        raise DatasetFormatError(f"{path}: float mask with non-integer or non-finite values (expected class indices)")
    return mask


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetFormatError(f"{path}: cannot decode image ({err})") from None


def find_pairs(
    image_dir: str | Path,
    mask_dir: str | Path,
    *,
    image_suffix: str = "",
    mask_suffix: str = "",
    replace_parts: dict[str, str] | None = None,
    strict: bool = False,
) -> list[tuple[Path, Path]]:
    """Pair images (searched recursively) with masks: same relative path, stem with ``image_suffix`` replaced by
    ``mask_suffix``, any image extension; ``replace_parts`` renames folders on the way (UAVid ``Images -> Labels``).

    Images without a mask (and masks without an image) are counted and warned about with :class:`DataSkipWarning`,
    or raise :class:`DatasetFormatError` with ``strict``.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for d, what in ((image_dir, "image"), (mask_dir, "mask")):
        if not d.is_dir():
            raise DatasetFormatError(f"{what} folder not found: {d}")
    masks = {p.relative_to(mask_dir).with_suffix(""): p for p in _files(mask_dir)}
    pairs, orphans = [], []
    for img in _files(image_dir):
        rel = img.relative_to(image_dir)
        if mask_dir == image_dir and replace_parts and not set(rel.parts) & set(replace_parts):
            continue  # under a shared root, only folders named in replace_parts hold images
        stem = rel.stem
        if image_suffix and stem.endswith(image_suffix):
            stem = stem[: -len(image_suffix)]
        parts = [(replace_parts or {}).get(p, p) for p in rel.parent.parts]
        key = Path(*parts, stem + mask_suffix)
        if key in masks:
            pairs.append((img, masks.pop(key)))
        else:
            orphans.append(img)
    if mask_dir == image_dir:
        masks = {}  # masks found under a shared root are the other files, not orphans
    problems = []
    if orphans:
        problems.append(f"{len(orphans)} image(s) without a mask in {mask_dir}: {_short([p.name for p in orphans])}")
    if masks:
        problems.append(
            f"{len(masks)} mask(s) without an image in {image_dir}: {_short([p.name for p in masks.values()])}"
        )
    if problems:
        if strict:
            raise DatasetFormatError("; ".join(problems))
        warnings.warn("skipped " + "; ".join(problems), DataSkipWarning, 2)
    if not pairs:
        raise DatasetFormatError(f"no image/mask pairs found in {image_dir} and {mask_dir}")
    return pairs


def check_sizes(pairs: Sequence[tuple[Path, Path]]) -> list[tuple[int, int]]:
    """(width, height) of every pair; raises :class:`DatasetFormatError` naming both files when they differ."""
    sizes = []
    for img, mask in pairs:
        si, sm = image_size(img), image_size(mask)
        if si != sm:
            raise DatasetFormatError(
                f"image and mask sizes differ: {img} is {si[0]}x{si[1]}, mask {mask} is {sm[0]}x{sm[1]}"
            )
        sizes.append(si)
    return sizes


def tile_windows(
    height: int, width: int, size: int, stride: int, partial: bool = False
) -> list[tuple[int, int, int, int]]:
    """Windows ``(y0, x0, h, w)`` of at most ``size`` x ``size`` covering the image with the given ``stride``;
    the last row/column of windows is shifted to end at the border (no partial windows unless the image is smaller
    than ``size``). ``partial=True`` instead keeps the grid and lets the last windows end at the border (smaller):
    with ``stride == size`` that is an exact partition (every pixel once, what evaluation needs)."""
    if size <= 0 or stride <= 0:
        raise ConfigError(f"tile size and stride must be positive, got {size} and {stride}")

    if partial:
        return [
            (y, x, min(size, height - y), min(size, width - x))
            for y in range(0, height, stride)
            for x in range(0, width, stride)
            if (y == 0 or y + size - stride < height) and (x == 0 or x + size - stride < width)
        ]

    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        out = list(range(0, n - size + 1, stride))
        if out[-1] + size < n:
            out.append(n - size)
        return out

    return [(y, x, min(size, height), min(size, width)) for y in starts(height) for x in starts(width)]


def cut_tiles(
    pairs: Sequence[tuple[Path, Path]], out_dir: str | Path, coding: MaskCoding, size: int = 1024, stride: int = 512
) -> dict[str, Any]:
    """Cut every pair into ``size`` tiles with ``stride``; writes ``img_dir/<stem>_<y0>_<x0>.png`` and the decoded
    index mask ``ann_dir/<same>.png``. Returns counts."""
    from PIL import Image

    out_dir = Path(out_dir)
    (out_dir / "img_dir").mkdir(parents=True, exist_ok=True)
    (out_dir / "ann_dir").mkdir(parents=True, exist_ok=True)
    check_sizes(pairs)
    count = 0
    for img_path, mask_path in pairs:
        image = read_image(img_path)
        labels = coding.decode(read_mask(mask_path), mask_path)
        for y, x, h, w in tile_windows(*labels.shape, size, stride):
            name = f"{img_path.stem}_{y}_{x}.png"
            tile = image[y : y + h, x : x + w]
            Image.fromarray(tile[..., 0] if tile.shape[-1] == 1 else tile[..., :3]).save(out_dir / "img_dir" / name)
            Image.fromarray(labels[y : y + h, x : x + w]).save(out_dir / "ann_dir" / name)
            count += 1
    return {"images": len(pairs), "tiles": count, "out": str(out_dir)}


# ----------------------------------------------------------------------------------------------- dataset
class SegmentationDataset(Dataset):
    """Image/mask pairs as samples ``{"image": (C,H,W) float, "mask": (H,W) int64, "name": str}``.

    ``tile_size``/``tile_stride`` turn each large image into overlapping windows (cut on the fly; ``tile_partial``:
    smaller windows at the border instead of shifted ones, see :func:`tile_windows`); otherwise each
    image is one sample, repeated ``repeats`` times (random crops come from ``transform``). Decoded images are
    kept in a small LRU cache (``cache_size`` images) so consecutive windows of one tile decode it once.
    ``mosaic_ratio``: with this probability a sample is GeoSeg's mosaic of itself and three random samples on a
    ``mosaic_size`` canvas (default: the sample's size), before ``transform``. A :class:`GeoSegTransform` runs on
    the uint8 arrays before normalisation; a :class:`SegTransform` on the normalised tensors. GeoSeg's offline
    patch split: ``flip_copies`` adds a horizontally and a vertically flipped copy of every image (3x the items);
    ``tile_pad`` pads each image bottom/right (image 0, mask ignore) to a multiple of ``tile_size`` and keeps the
    full tiles of the ``tile_stride`` grid instead of shifting the last ones.
    """

    # Optional (H, W, C) uint8 -> same-shape uint8 function applied after decoding, before caching
    # (lsknet.analysis.robustness; clear ``_cache`` when changing it).
    image_hook = None

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        coding: MaskCoding,
        transform: SegTransform | GeoSegTransform | None = None,
        *,
        tile_size: int | None = None,
        tile_stride: int | None = None,
        tile_partial: bool = False,
        repeats: int = 1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cache_size: int = 2,
        mosaic_ratio: float = 0.0,
        mosaic_size: int | None = None,
        flip_copies: bool = False,
        tile_pad: bool = False,
    ) -> None:
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.mosaic_ratio, self.mosaic_size = float(mosaic_ratio), mosaic_size
        self.coding = coding
        self.transform = transform
        self.mean, self.std = mean, std
        sizes = check_sizes(self.pairs)
        flips = (None, "h", "v") if flip_copies else (None,)
        if tile_size and tile_pad:  # GeoSeg's patch split: pad bottom/right to a multiple of the tile, full tiles only
            stride = tile_stride or tile_size
            self.items = [
                (i, (y, x, tile_size, tile_size), f)
                for i, (w, h) in enumerate(sizes)
                for f in flips
                for y in range(0, -(-h // tile_size) * tile_size - tile_size + 1, stride)
                for x in range(0, -(-w // tile_size) * tile_size - tile_size + 1, stride)
            ]
        elif tile_size:
            stride = tile_stride or tile_size
            self.items = [
                (i, win, f)
                for i, (w, h) in enumerate(sizes)
                for f in flips
                for win in tile_windows(h, w, tile_size, stride, tile_partial)
            ]
        else:
            self.items = [(i, None, f) for _ in range(max(1, repeats)) for i in range(len(self.pairs)) for f in flips]
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_size = cache_size

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded (image ``(H,W,C)`` uint8, mask ``(H,W)`` uint8 class indices) of pair ``index``."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        img_path, mask_path = self.pairs[index]
        image = read_image(img_path)
        if self.image_hook is not None:
            image = self.image_hook(image)
        labels = self.coding.decode(read_mask(mask_path), mask_path)
        if image.shape[:2] != labels.shape:
            raise DatasetFormatError(
                f"image and mask sizes differ: {img_path} {image.shape[:2]}, {mask_path} {labels.shape}"
            )
        self._cache[index] = (image, labels)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return image, labels

    def sample(self, idx: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Item ``idx`` before any augmentation: image ``(h, w, C)`` uint8, mask ``(h, w)`` uint8, name."""
        index, win, flip = self.items[idx]
        image, labels = self.load(index)
        name = self.pairs[index][0].stem
        if flip:
            axis = 1 if flip == "h" else 0
            image, labels, name = np.flip(image, axis), np.flip(labels, axis), f"{name}_{flip}flip"
        if win is not None:
            y, x, h, w = win
            image, labels = image[y : y + h, x : x + w], labels[y : y + h, x : x + w]
            ph, pw = h - labels.shape[0], w - labels.shape[1]
            if ph or pw:  # tile_pad: the part beyond the image
                image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
                labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=self.coding.ignore_index)
            name = f"{name}_{y}_{x}"
        return np.ascontiguousarray(image), np.ascontiguousarray(labels), name

    def __getitem__(self, idx: int) -> dict[str, Any]:
        image, labels, name = self.sample(idx)
        if self.mosaic_ratio and random.random() < self.mosaic_ratio:
            others = [self.sample(random.randrange(len(self.items)))[:2] for _ in range(3)]
            size = (self.mosaic_size,) * 2 if self.mosaic_size else labels.shape
            image, labels = mosaic([(image, labels), *others], size, ignore_index=self.coding.ignore_index)
        if isinstance(self.transform, GeoSegTransform):
            image, labels = self.transform(image, labels)
        img = to_tensor(image, self.mean, self.std)
        mask = torch.from_numpy(labels.astype(np.int64))
        if isinstance(self.transform, SegTransform):
            img, mask = self.transform(img, mask)
        return {"image": img, "mask": mask, "name": name}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _short(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _counts(values: np.ndarray, limit: int = 10) -> str:
    uniq, counts = np.unique(values, return_counts=True)
    return ", ".join(f"{int(u)}: {int(c)} px" for u, c in zip(uniq[:limit], counts[:limit]))
