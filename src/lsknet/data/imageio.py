"""The one image decoder and source lister of lsknet: every task, training and prediction alike, reads images here.

API (what the readers of all three tasks and the predictors build on)::

    IMAGE_EXTENSIONS                      # the one list of image suffixes
    list_images(sources)                  # files and folders (recursive, sorted) -> [Path]
    read_image(path, bands=None)          # (H, W, C) array in the file's stored type, bands 1-based (GDAL order)
    stretch_limits(array)                 # (low, high) of the 8-bit scaling rule for this array
    stretch(array, low, high)             # [low, high] -> 0..255 (the rule's core, limits given)
    to_uint8(array, high_bit=..., limits=None)   # the scaling rule: any numeric (H, W, C) -> uint8
    colour_channels(array, source)        # channel rule: grey (+alpha) -> 1 channel, RGB(A) -> 3
    to_rgb(array, source)                 # the channel rule, then grey repeated to 3 channels
    load_rgb(path)                        # read_image + colour_channels + to_uint8 + to_rgb: the model input

**The scaling rule** (:func:`to_uint8`): 8-bit data is used as stored; ``bool`` becomes 0/255; anything else
(16-bit PNG/TIFF, 32-bit integers, floats) is mapped to 0..255 **per image** by one of:

- ``high_bit="percentile"`` (default): the 1st..99th percentile of all finite values (all channels together, so
  colours keep their balance) maps linearly to 0..255, clipped: the usual display stretch for 11-/12-bit sensors
  stored in 16 bits. NaN becomes the low limit. A flat image stays flat (0, or 128 when it is not zero).
- ``high_bit="range"``: integers divided by their type's range (65535 for values that fit 16 bits), so 65535 -> 255.
  Floats always use the percentile stretch.

Windowed readers (large GeoTIFFs) compute :func:`stretch_limits` once (e.g. on an overview) and pass them as
``limits`` so every window is scaled alike. Percentiles of arrays above 4M values are taken on a fixed strided
subsample (deterministic; memory stays bounded for 20000 x 20000 px scenes).

**The channel rule** (:func:`to_rgb`): 1 channel (grey) or 2 (grey + alpha) -> the grey repeated 3 times; 4 (RGBA)
-> alpha dropped (not composited); 3 kept; more channels need ``bands`` (a :class:`DatasetFormatError` otherwise).

Decoding: Pillow for PNG/JPEG/BMP/WebP/TIFF (palette, CMYK, YCbCr, 1-bit converted to RGB; palette with
transparency to RGBA); TIFFs Pillow cannot read (multi-band 16-bit, float) and 16-bit colour PNGs (Pillow keeps only
their high byte) with ``rasterio`` when installed (``pip install 'lsknet[geo]'``; without it such PNGs are read at
8 bits with a warning). Unreadable files raise :class:`~lsknet.errors.DatasetFormatError` naming the file.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lsknet.errors import DatasetFormatError

_log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "is_image_file",
    "list_images",
    "load_rgb",
    "read_image",
    "stretch",
    "stretch_limits",
    "colour_channels",
    "to_rgb",
    "to_uint8",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".vrt", ".jp2")
RASTER_ONLY_EXTENSIONS = (".vrt", ".jp2")  # GDAL formats: read with rasterio
HIGH_BIT_RULES = ("percentile", "range")
_PERCENTILES = (1.0, 99.0)
_MAX_STAT_VALUES = 1 << 22  # percentiles of larger arrays come from a strided subsample


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(sources: str | Path | Iterable[str | Path]) -> list[Path]:
    """Image files named by ``sources``: files as given (in order), folders searched recursively (sorted; hidden
    files skipped). A missing path or a folder without images is a :class:`DatasetFormatError`."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith(".")
            )
            if not files:
                raise DatasetFormatError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise DatasetFormatError(f"{path}: not found (no such file or folder)")
    return found


# ---------------------------------------------------------------------------------------------------------------------
# decoding


def _read_with_rasterio(path: Path, bands: Sequence[int] | None) -> np.ndarray:
    try:
        import rasterio
    except ImportError:
        raise DatasetFormatError(
            f"{path}: Pillow cannot read this file (multi-band 16-bit or float TIFF, VRT, JPEG 2000?); install "
            "rasterio (pip install 'lsknet[geo]') to read it"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning on plain images
            with rasterio.open(path) as src:
                if bands is not None:
                    _check_bands(bands, src.count, path)
                return np.moveaxis(src.read(list(bands) if bands is not None else None), 0, -1)
    except DatasetFormatError:
        raise
    except Exception as err:  # rasterio raises its own error types for corrupt files
        raise DatasetFormatError(f"{path}: cannot decode image: {err}") from None


def _check_bands(bands: Sequence[int], count: int, path: Path) -> None:
    bad = [b for b in bands if not isinstance(b, (int, np.integer)) or not 1 <= int(b) <= count]
    if not bands or bad:
        raise DatasetFormatError(f"{path}: bands {list(bands)} out of range: the file has bands 1..{count}")


def _is_16bit_colour_png(path: Path) -> bool:
    """A PNG with 16 bits per sample and colour or alpha (IHDR colour type 2, 4 or 6): Pillow keeps only the high
    byte of those, so they are read with rasterio when it is installed."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(26)
    except OSError:
        return False
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 4, 6)


_warned_16bit_png = False


def _read_16bit_colour_png(path: Path, bands: Sequence[int] | None) -> np.ndarray:
    global _warned_16bit_png
    try:
        import rasterio  # noqa: F401
    except ImportError:
        if not _warned_16bit_png:
            _log.warning(
                "%s: 16-bit colour PNG read with Pillow, which keeps only the high byte of each sample; install "
                "rasterio (pip install 'lsknet[geo]') to read it at full depth",
                path,
            )
            _warned_16bit_png = True
        with Image.open(path) as image:
            array = np.array(image.convert("RGBA" if "A" in image.mode else "RGB"))
        if bands is not None:
            _check_bands(bands, array.shape[2], path)
            array = np.ascontiguousarray(array[:, :, [int(b) - 1 for b in bands]])
        return array
    return _read_with_rasterio(path, bands)


def read_image(path: str | Path, bands: Sequence[int] | None = None) -> np.ndarray:
    """Decode an image file to an ``(H, W, C)`` array in its stored type (uint8, uint16, int32, float32, ...).

    ``bands``: 1-based band numbers to keep, in this order (GDAL / rasterio numbering), e.g. ``(4, 3, 2)``.
    Raises :class:`DatasetFormatError` naming the file when it cannot be decoded or a band does not exist.
    """
    path = Path(path)
    if path.suffix.lower() in RASTER_ONLY_EXTENSIONS:
        if not path.is_file():
            raise DatasetFormatError(f"{path}: not found")
        return _read_with_rasterio(path, bands)
    if _is_16bit_colour_png(path):
        return _read_16bit_colour_png(path, bands)
    try:
        with Image.open(path) as image:
            image.load()  # full decode: truncated files fail here, not later in a worker
            if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                rgba = image.mode in ("P", "PA") and ("transparency" in image.info or image.mode == "PA")
                image = image.convert("RGBA" if rgba else "RGB")
            array = np.array(image)  # a writable copy
    except UnidentifiedImageError:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise DatasetFormatError(f"{path}: not a readable image file") from None
        return _read_with_rasterio(path, bands)
    except (OSError, ValueError, SyntaxError) as err:
        if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
            return _read_with_rasterio(path, bands)
        raise DatasetFormatError(f"{path}: cannot decode image: {err}") from None
    except Image.DecompressionBombError as err:
        raise DatasetFormatError(f"{path}: {err}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DatasetFormatError(f"{path}: unexpected image shape {array.shape}")
    if bands is not None:
        _check_bands(bands, array.shape[2], path)
        array = np.ascontiguousarray(array[:, :, [int(b) - 1 for b in bands]])
    return array


# ---------------------------------------------------------------------------------------------------------------------
# the scaling rule and the channel rule


def stretch_limits(array: np.ndarray) -> tuple[float, float]:
    """``(low, high)``: the 1st and 99th percentile of the finite values of ``array`` (all channels together), the
    limits :func:`to_uint8` maps to 0 and 255. ``(0, 0)`` for an array without finite values."""
    flat = np.asarray(array).reshape(-1)
    if flat.size > _MAX_STAT_VALUES:
        flat = flat[:: -(-flat.size // _MAX_STAT_VALUES)]
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(flat.astype(np.float64), _PERCENTILES)
    return float(low), float(high)


def to_uint8(
    array: np.ndarray, high_bit: str = "percentile", limits: tuple[float, float] | None = None
) -> np.ndarray:
    """Scale an array of any numeric type to uint8 with the one scaling rule (module docstring); shape kept.

    ``limits``: precomputed :func:`stretch_limits` (windowed reading); ignored for uint8/bool and for ``"range"``.
    """
    if high_bit not in HIGH_BIT_RULES:
        raise DatasetFormatError(f"unknown high_bit scaling {high_bit!r}; expected one of {', '.join(HIGH_BIT_RULES)}")
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype.kind in "iu" and high_bit == "range":
        # Pillow hands 16-bit files over as int32 ("I" mode): values that fit 16 bits are scaled as 16-bit.
        top = 65535.0 if int(array.max(initial=0)) <= 65535 else float(np.iinfo(array.dtype).max)
        data = array.astype(np.float32) * np.float32(255.0 / top)
        return np.clip(np.rint(data), 0, 255).astype(np.uint8)
    low, high = limits if limits is not None else stretch_limits(array)
    return stretch(array, low, high)


def stretch(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly to 0..255, round and clip, whatever the type (NaN -> ``low``, +inf -> ``high``);
    flat (``high <= low``): 0, or 128 when ``high > 0``. The core of :func:`to_uint8`; windowed readers call it with
    limits fixed per scene (``--scale`` or :func:`stretch_limits`)."""
    array = np.asarray(array)
    if high <= low:  # flat image: keep it flat, mid-grey if it is not zero
        return np.full(array.shape, 0 if high <= 0 else 128, dtype=np.uint8)
    out = np.empty(array.shape, dtype=np.uint8)
    span = high - low
    rows = max(1, _MAX_STAT_VALUES // max(1, array[:1].size))  # float64 in row blocks: bounded memory
    for start in range(0, array.shape[0], rows):
        data = array[start : start + rows].astype(np.float64)
        if array.dtype.kind == "f":
            data = np.nan_to_num(data, nan=low, posinf=high, neginf=low, copy=False)
        data -= low  # (x - low) * 255 / (high - low), in this order (the reference's rounding)
        data *= 255.0
        data /= span
        out[start : start + rows] = np.clip(np.rint(data, out=data), 0, 255)
    return out


def colour_channels(array: np.ndarray, source: str | Path = "image") -> np.ndarray:
    """``(H, W, C)`` -> its colour channels: ``(H, W, 1)`` for grey (+ alpha), ``(H, W, 3)`` for RGB(A); alpha
    dropped. More channels are a :class:`DatasetFormatError` (choose three with ``bands``)."""
    channels = array.shape[2]
    if channels in (1, 2):
        return array[:, :, :1]
    if channels in (3, 4):
        return array[:, :, :3]
    raise DatasetFormatError(
        f"{source}: {channels} channels; RGB models take 1-4 channels (grey/RGB/RGBA): choose three with bands="
    )


def to_rgb(array: np.ndarray, source: str | Path = "image") -> np.ndarray:
    """``(H, W, C)`` -> ``(H, W, 3)`` with the channel rule (module docstring); ``source`` names it in errors.
    Scale with :func:`to_uint8` *before* repeating a grey channel (the percentiles are those of the grey values)."""
    array = colour_channels(array, source)
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def load_rgb(path: str | Path, high_bit: str = "percentile", bands: Sequence[int] | None = None) -> np.ndarray:
    """Decode an image to the ``(H, W, 3)`` uint8 RGB array every RGB model of lsknet takes (training datasets,
    predictors, split tools alike): :func:`read_image`, :func:`colour_channels`, :func:`to_uint8`, grey repeated."""
    return np.ascontiguousarray(to_rgb(to_uint8(colour_channels(read_image(path, bands), path), high_bit)))
