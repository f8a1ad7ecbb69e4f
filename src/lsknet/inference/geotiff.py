"""Raster input/output with rasterio (a core dependency; its wheels bundle GDAL).

- :class:`GeoTiffSource`: windowed reading (``read(y, x, h, w)`` -> ``(h, w, C)``) of any raster rasterio opens
  (GeoTIFF, COG, VRT, JP2 where GDAL has the driver), so a 40000 x 40000 scene is never in memory at once.
  Validity of pixels (:meth:`GeoTiffSource.valid_mask`) follows GDAL's masks: the ``nodata`` value (a pixel is
  invalid when every read band equals it), an alpha band (alpha 0) or an internal / sidecar mask.
- The model-input rule (:meth:`GeoTiffSource.read_uint8`): 8-bit bands are used as stored; any other type is
  stretched per scene with the rule of the scene-folder datasets (:func:`lsknet.data.imageio.stretch`):
  the 1st..99th percentile of the valid pixels of all read bands -> 0..255, the percentiles computed once per scene
  from a decimated read (at most ``stats_size`` pixels a side, GDAL uses overviews when the file has them);
  ``scale=(MIN, MAX)`` fixes the limits instead. One band is repeated to three; three bands are R, G, B.
- :class:`GeoTiffLabelWriter`: a one-band uint8 class map with the input's CRS and transform, ``nodata = 255``,
  the class palette as colour table, written row strip by row strip.

Pixel coordinates are continuous, ``(0, 0)`` the top-left corner of the top-left pixel; ``transform * (x, y)`` is
the point in the raster's CRS (GDAL's convention).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lsknet.errors import DatasetFormatError, LSKNetError

GEOTIFF_SUFFIXES = (".tif", ".tiff")
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".ntf")


def require_rasterio() -> Any:
    """Import rasterio or raise a one-line :class:`LSKNetError` telling how to install it."""
    try:
        import rasterio
    except ImportError:
        raise LSKNetError(
            "GeoTIFF input/output needs rasterio (a dependency of lsknet): pip install rasterio"
        ) from None
    return rasterio


def is_raster_file(path: str | Path) -> bool:
    """True for file names that are read through rasterio window by window (:data:`RASTER_SUFFIXES`)."""
    return Path(path).suffix.lower() in RASTER_SUFFIXES


def is_georeferenced(path: str | Path) -> bool:
    """True for a raster file that rasterio opens and that has a CRS or a non-identity geotransform."""
    if not is_raster_file(path):
        return False
    try:
        import rasterio
    except ImportError:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning
            with rasterio.open(path) as src:
                return src.crs is not None or not src.transform.is_identity
    except rasterio.errors.RasterioError:
        return False


def parse_bands(text: str | Sequence[int] | None) -> list[int] | None:
    """``"3,2,1"`` -> ``[3, 2, 1]`` (1-based band numbers, any order); None stays None."""
    if text is None or text == "":
        return None
    try:
        bands = [int(b) for b in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise LSKNetError(f"--bands: expected 1-based band numbers like 1,2,3, got {text!r}") from None
    if not bands or min(bands) < 1:
        raise LSKNetError(f"--bands: band numbers start at 1, got {text!r}")
    return bands


def parse_scale(text: str | Sequence[float] | None) -> tuple[float, float] | None:
    """``"0,4000"`` -> ``(0.0, 4000.0)``: the raw values mapped to 0 and 255; None stays None."""
    if text is None or text == "":
        return None
    try:
        low, high = (float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise LSKNetError(f"--scale: expected MIN,MAX, got {text!r}") from None
    if not high > low:
        raise LSKNetError(f"--scale: MAX must be greater than MIN, got {text!r}")
    return low, high


class GeoTiffSource:
    """Windowed reader of a raster; ``bands`` are 1-based band numbers (default: the first three, or the first).

    ``scale``: ``(MIN, MAX)`` raw values mapped to 0..255 by :meth:`read_uint8` (default: the per-scene percentile
    stretch for non-8-bit data, see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        bands: Sequence[int] | None = None,
        scale: tuple[float, float] | None = None,
        stats_size: int = 1024,
    ) -> None:
        rasterio = require_rasterio()
        self.path = Path(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NotGeoreferencedWarning: handled by the callers
                self._ds = rasterio.open(self.path)
        except rasterio.errors.RasterioError as err:
            raise DatasetFormatError(f"{self.path}: cannot open raster ({err})") from None
        count = self._ds.count
        self.bands = list(bands) if bands else ([1, 2, 3] if count >= 3 else [1])
        if max(self.bands) > count or min(self.bands) < 1:
            raise DatasetFormatError(f"{self.path}: has {count} band(s), cannot read bands {self.bands}")
        self.height, self.width = self._ds.height, self._ds.width
        self.dtype = np.dtype(self._ds.dtypes[self.bands[0] - 1])
        self.nodata = self._ds.nodata
        self.profile = dict(self._ds.profile)
        self.crs = self._ds.crs
        self.transform = self._ds.transform
        self.georeferenced = self.crs is not None or not self.transform.is_identity
        flags = [set(self._ds.mask_flag_enums[b - 1]) for b in self.bands]
        names = [{f.name for f in fl} for fl in flags]
        self._all_valid = all(n == {"all_valid"} for n in names)
        self._nodata_only = not self._all_valid and all(n == {"nodata"} for n in names)
        self.scale = scale
        self.stats_size = int(stats_size)
        self._limits: tuple[float, float] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[y, y + h) x [x, x + w)`` as ``(h, w, C)`` in the file's dtype."""
        from rasterio.windows import Window

        try:
            data = self._ds.read(self.bands, window=Window(x, y, w, h))
        except Exception as err:  # rasterio raises RasterioIOError for corrupt blocks
            raise DatasetFormatError(f"{self.path}: cannot read window y={y} x={x} {w}x{h} ({err})") from None
        return np.moveaxis(data, 0, -1)

    def valid_mask(self, y: int, x: int, h: int, w: int, data: np.ndarray | None = None) -> np.ndarray | None:
        """``(h, w)`` bool, True where at least one read band is valid (GDAL masks: nodata, alpha, mask band);
        None when the raster declares every pixel valid. ``data``: the ``(h, w, C)`` window if already read."""
        if self._all_valid:
            return None
        if self._nodata_only:
            data = self.read(y, x, h, w) if data is None else data
            if self.nodata is not None and np.isnan(self.nodata):
                return ~np.all(np.isnan(data), axis=-1)
            return ~np.all(data == self.nodata, axis=-1)
        from rasterio.windows import Window

        masks = self._ds.read_masks(self.bands, window=Window(x, y, w, h))
        return np.any(masks > 0, axis=0)

    def nodata_mask(self, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        """``(h, w)`` bool: pixels that are invalid (see :meth:`valid_mask`); None when all pixels are valid."""
        valid = self.valid_mask(y, x, h, w)
        return None if valid is None else ~valid

    def valid_at(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Bool per point: is the pixel containing continuous pixel coordinate ``(x, y)`` valid (inside and
        unmasked)?"""
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        cols, rows = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
        inside = (cols >= 0) & (rows >= 0) & (cols < self.width) & (rows < self.height)
        if self._all_valid:
            return inside
        out = np.zeros(len(xs), dtype=bool)
        for i in np.flatnonzero(inside):
            out[i] = bool(self.valid_mask(int(rows[i]), int(cols[i]), 1, 1)[0, 0])
        return out

    def intensity_limits(self) -> tuple[float, float] | None:
        """Raw values mapped to 0 and 255 (``scale``, or the per-scene percentiles); None for 8-bit data."""
        if self.scale is not None:
            return self.scale
        if self.dtype == np.uint8:
            return None
        if self._limits is None:
            from lsknet.data.imageio import stretch_limits

            step = max(1, -(-max(self.height, self.width) // self.stats_size))
            shape = (max(1, self.height // step), max(1, self.width // step))
            data = self._ds.read(self.bands, out_shape=(len(self.bands), *shape)).astype(np.float64)
            if not self._all_valid:
                valid = np.any(self._ds.read_masks(self.bands, out_shape=(len(self.bands), *shape)) > 0, axis=0)
                data = data[:, valid]
            finite = data.size > 0 and bool(np.isfinite(data).any())
            self._limits = stretch_limits(data) if finite else (0.0, 1.0)
        return self._limits

    def read_uint8(
        self, y: int, x: int, h: int, w: int, data: np.ndarray | None = None, rgb: bool = True
    ) -> np.ndarray:
        """The window as model input: ``(h, w, 3)`` uint8 (the rule in the module docstring); ``rgb=False`` keeps
        the number of bands."""
        from lsknet.data.imageio import stretch

        data = self.read(y, x, h, w) if data is None else data
        limits = self.intensity_limits()
        out = data if limits is None else stretch(data, *limits)
        if not rgb:
            return out
        if out.shape[-1] == 1:
            out = np.repeat(out, 3, axis=-1)
        elif out.shape[-1] != 3:
            raise DatasetFormatError(f"{self.path}: the model reads 1 or 3 bands, got bands {self.bands} (--bands)")
        return np.ascontiguousarray(out)

    def read_model_window(self, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        """The window as model input (:meth:`read_uint8`), or None when it holds no valid pixel (not to be run)."""
        data = self.read(y, x, h, w)
        valid = self.valid_mask(y, x, h, w, data=data)
        if valid is not None and not valid.any():
            return None
        return self.read_uint8(y, x, h, w, data=data)

    def overview(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """A decimated ``(h, w, 3)`` uint8 picture of the whole scene (model-input rule) and its scale factor
        (overview pixels per scene pixel)."""
        step = max(1, -(-max(self.height, self.width) // max_side))
        shape = (max(1, self.height // step), max(1, self.width // step))
        data = np.moveaxis(self._ds.read(self.bands, out_shape=(len(self.bands), *shape)), 0, -1)
        return self.read_uint8(0, 0, *shape, data=data), shape[1] / self.width

    def close(self) -> None:
        self._ds.close()

    def __enter__(self) -> GeoTiffSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GeoTiffLabelWriter:
    """One-band uint8 class-index GeoTIFF with the georeference of ``profile`` (a rasterio profile)."""

    def __init__(
        self,
        path: str | Path,
        profile: dict[str, Any],
        palette: Sequence[Sequence[int]] | None = None,
        nodata: int = 255,
    ) -> None:
        rasterio = require_rasterio()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        out = {
            "driver": "GTiff",
            "height": profile["height"],
            "width": profile["width"],
            "count": 1,
            "dtype": "uint8",
            "crs": profile.get("crs"),
            "transform": profile.get("transform"),
            "nodata": nodata,
            "compress": "deflate",
        }
        if profile["width"] >= 256 and profile["height"] >= 256:
            out.update(tiled=True, blockxsize=256, blockysize=256)
        self._tmp = self.path.with_name(self.path.name + ".tmp.tif")
        self._ds = rasterio.open(self._tmp, "w", **out)
        if palette is not None:
            cmap = {i: (*map(int, c), 255) for i, c in enumerate(palette)}
            cmap[nodata] = (0, 0, 0, 0)
            self._ds.write_colormap(1, cmap)

    def write_rows(self, y: int, labels: np.ndarray) -> None:
        """Write ``labels`` ``(h, W)`` uint8 at rows ``[y, y + h)``."""
        from rasterio.windows import Window

        h, w = labels.shape
        self._ds.write(labels.astype(np.uint8)[None], window=Window(0, y, w, h))

    def close(self) -> Path:
        """Finish the file (atomically renamed into place); returns its path."""
        self._ds.close()
        self._tmp.replace(self.path)
        return self.path
