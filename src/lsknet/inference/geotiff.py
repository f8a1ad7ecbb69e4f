"""GeoTIFF input/output for segmentation (rasterio is an optional extra: ``pip install lsknet[geo]``).

- :class:`GeoTiffSource`: windowed reading (``read(y, x, h, w)`` -> ``(h, w, C)``) of a georeferenced raster, so a
  10000 x 10000 scene never has to be in memory at once; pixels whose bands all equal the file's ``nodata`` value
  are reported by :meth:`GeoTiffSource.nodata_mask`.
- :class:`GeoTiffLabelWriter`: a one-band uint8 class map with the input's CRS and transform, ``nodata = 255``,
  the class palette as colour table, written row strip by row strip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lsknet.errors import DatasetFormatError, LSKNetError

GEOTIFF_SUFFIXES = (".tif", ".tiff")


def require_rasterio() -> Any:
    """Import rasterio or raise a one-line :class:`LSKNetError` telling how to install it."""
    try:
        import rasterio
    except ImportError:
        raise LSKNetError(
            "GeoTIFF input/output needs rasterio: pip install 'lsknet[geo]' (or pip install rasterio)"
        ) from None
    return rasterio


def is_georeferenced(path: str | Path) -> bool:
    """True for a TIFF that rasterio opens and that has a CRS or a non-identity geotransform."""
    if Path(path).suffix.lower() not in GEOTIFF_SUFFIXES:
        return False
    try:
        import rasterio
    except ImportError:
        return False
    try:
        with rasterio.open(path) as src:
            return src.crs is not None or not src.transform.is_identity
    except rasterio.errors.RasterioError:
        return False


class GeoTiffSource:
    """Windowed reader of a GeoTIFF; ``bands`` are 1-based band numbers (default: the first three, or the one)."""

    def __init__(self, path: str | Path, bands: Sequence[int] | None = None) -> None:
        rasterio = require_rasterio()
        self.path = Path(path)
        try:
            self._ds = rasterio.open(self.path)
        except rasterio.errors.RasterioError as err:
            raise DatasetFormatError(f"{self.path}: cannot open raster ({err})") from None
        count = self._ds.count
        self.bands = list(bands) if bands else ([1, 2, 3] if count >= 3 else [1])
        if max(self.bands) > count:
            raise DatasetFormatError(f"{self.path}: has {count} band(s), cannot read bands {self.bands}")
        self.height, self.width = self._ds.height, self._ds.width
        self.dtype = np.dtype(self._ds.dtypes[0])
        self.nodata = self._ds.nodata
        self.profile = dict(self._ds.profile)

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

    def nodata_mask(self, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        """``(h, w)`` bool: every band equals ``nodata`` (None when the file declares no nodata value)."""
        if self.nodata is None:
            return None
        from rasterio.windows import Window

        data = self._ds.read(window=Window(x, y, w, h))
        return np.all(data == self.nodata, axis=0)

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
