"""Vector outputs of scene prediction: pixel -> CRS mapping, reprojection to WGS84, GeoJSON / GeoPackage / Shapefile.

Geometries are built in the raster's CRS by mapping continuous pixel coordinates (``(0, 0)`` = top-left corner of the
top-left pixel) through the raster's affine transform. Writers:

- ``geojson``: an RFC 7946 FeatureCollection, coordinates reprojected to WGS84 longitude/latitude (no ``crs`` member;
  exterior rings counter-clockwise, holes clockwise). A raster without a CRS gets pixel coordinates (the caller warns).
- ``gpkg``: a GeoPackage with one layer (``layer``), geometries in the raster's own CRS (through pyogrio / GDAL).
- ``shp``: an ESRI Shapefile (``.shp`` + ``.shx`` + ``.dbf`` + ``.prj``) in the raster's CRS.

Each file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lsknet.errors import LSKNetError

VECTOR_FORMATS = ("geojson", "gpkg", "shp")
_SUFFIX = {"geojson": ".geojson", "gpkg": ".gpkg", "shp": ".shp"}
_DRIVER = {"gpkg": "GPKG", "shp": "ESRI Shapefile"}


def pixel_to_crs(transform: Any, xy: np.ndarray) -> np.ndarray:
    """``(..., 2)`` continuous pixel coordinates ``(x=col, y=row)`` -> ``(..., 2)`` CRS coordinates (affine)."""
    xy = np.asarray(xy, dtype=np.float64)
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    x, y = xy[..., 0], xy[..., 1]
    return np.stack([a * x + b * y + c, d * x + e * y + f], axis=-1)


def to_wgs84(crs: Any, xy: np.ndarray) -> np.ndarray:
    """``(..., 2)`` coordinates in ``crs`` -> ``(..., 2)`` WGS84 ``(longitude, latitude)`` in degrees."""
    from rasterio.warp import transform

    xy = np.asarray(xy, dtype=np.float64)
    flat = xy.reshape(-1, 2)
    if flat.shape[0] == 0:
        return xy.copy()
    lon, lat = transform(crs, "EPSG:4326", flat[:, 0].tolist(), flat[:, 1].tolist())
    return np.stack([np.asarray(lon), np.asarray(lat)], axis=-1).reshape(xy.shape)


def _require_shapely() -> Any:
    try:
        import shapely
    except ImportError:  # pragma: no cover - a core dependency
        raise LSKNetError("vector outputs need shapely (a dependency of lsknet): pip install shapely") from None
    return shapely


def _require_pyogrio() -> Any:
    try:
        import pyogrio
    except ImportError:  # pragma: no cover - a core dependency
        raise LSKNetError(
            "GeoPackage / Shapefile outputs need pyogrio (a dependency of lsknet): pip install pyogrio"
        ) from None
    return pyogrio


def rings_to_polygons(rings: np.ndarray) -> list[Any]:
    """``(N, K, 2)`` corner rings (not closed) -> N shapely Polygons (closed by shapely)."""
    shapely = _require_shapely()
    return [shapely.Polygon(ring) for ring in np.asarray(rings, dtype=np.float64)]


def _reproject(geometries: Sequence[Any], crs: Any) -> list[Any]:
    shapely = _require_shapely()
    from shapely.geometry.polygon import orient

    def fn(coords: np.ndarray) -> np.ndarray:
        return to_wgs84(crs, coords)

    out = []
    for geom in shapely.transform(np.asarray(list(geometries), dtype=object), fn):
        if geom.geom_type == "Polygon":
            geom = orient(geom, 1.0)
        elif geom.geom_type == "MultiPolygon":
            geom = shapely.MultiPolygon([orient(g, 1.0) for g in geom.geoms])
        out.append(geom)
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _geojson_text(geometries: Sequence[Any], columns: dict[str, Sequence[Any]], extra: dict[str, Any]) -> str:
    from shapely.geometry import mapping

    features = []
    names = list(columns)
    for i, geom in enumerate(geometries):
        props = {name: _json_value(columns[name][i]) for name in names}
        features.append({"type": "Feature", "geometry": mapping(geom), "properties": props})
    collection = {"type": "FeatureCollection", **extra, "features": features}
    return json.dumps(collection, separators=(",", ":")) + "\n"


def _ogr_fields(columns: dict[str, Sequence[Any]]) -> tuple[list[str], list[np.ndarray]]:
    names, arrays = [], []
    for name, values in columns.items():
        arr = np.asarray(values)
        if arr.dtype.kind in "US" or arr.dtype == object:
            arr = np.asarray([str(v) for v in values], dtype=object)
        names.append(name)
        arrays.append(arr)
    return names, arrays


def write_vectors(
    stem: str | Path,
    formats: Sequence[str],
    geometries: Sequence[Any],
    columns: dict[str, Sequence[Any]],
    crs: Any,
    layer: str,
    geometry_type: str = "Polygon",
) -> dict[str, str]:
    """Write ``geometries`` (shapely, in ``crs`` coordinates, or pixels when ``crs`` is None) with attribute
    ``columns`` as ``<stem>.geojson`` / ``.gpkg`` / ``.shp`` for each of ``formats``; returns ``{format: path}``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for fmt in formats:
        if fmt not in VECTOR_FORMATS:
            raise LSKNetError(f"unknown vector format {fmt!r}; expected one of {', '.join(VECTOR_FORMATS)}")
        path = stem.with_name(stem.name + _SUFFIX[fmt])
        if fmt == "geojson":
            geoms = _reproject(geometries, crs) if crs is not None and len(geometries) else list(geometries)
            extra = {} if crs is not None else {"lsknet:coordinates": "pixels (the raster has no CRS)"}
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(_geojson_text(geoms, columns, extra))
            os.replace(tmp, path)
        else:
            _write_ogr(path, fmt, geometries, columns, crs, layer, geometry_type)
        written[fmt] = str(path)
    return written


def _write_ogr(
    path: Path,
    fmt: str,
    geometries: Sequence[Any],
    columns: dict[str, Sequence[Any]],
    crs: Any,
    layer: str,
    geometry_type: str,
) -> None:
    shapely = _require_shapely()
    pyogrio = _require_pyogrio()
    from pyogrio.raw import write

    names, arrays = _ogr_fields(columns)
    wkb = shapely.to_wkb(np.asarray(list(geometries), dtype=object)) if len(geometries) else np.zeros(0, object)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=path.parent))
    try:
        options: dict[str, Any] = {"layer": layer} if fmt == "gpkg" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "crs was not provided": pixel coordinates, the caller warns
            write(
                str(tmp_dir / path.name),
                wkb,
                field_data=arrays,
                fields=names,
                crs=crs.to_wkt() if crs is not None else None,
                geometry_type=geometry_type,
                driver=_DRIVER[fmt],
                **options,
            )
        for part in sorted(tmp_dir.iterdir()):
            os.replace(part, path.parent / part.name)
    except pyogrio.errors.DataSourceError as err:  # pragma: no cover - GDAL driver failures
        raise LSKNetError(f"{path}: cannot write {fmt} ({err})") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def label_polygons(
    labels: np.ndarray,
    transform: Any,
    classes: Sequence[str],
    min_area: float = 0.0,
    simplify: float = 0.0,
    nodata: int = 255,
) -> tuple[list[Any], dict[str, list[Any]]]:
    """Class regions of an ``(h, w)`` uint8 label map as polygons in the CRS of ``transform`` (rasterio.features
    shapes, 4-connected; ``nodata`` pixels left out); polygons below ``min_area`` (CRS units squared) are dropped,
    ``simplify`` > 0 is a Douglas-Peucker tolerance in CRS units (topology preserved). Columns: ``class``,
    ``class_id``, ``area``."""
    shapely = _require_shapely()
    from rasterio.features import shapes

    geoms: list[Any] = []
    columns: dict[str, list[Any]] = {"class": [], "class_id": [], "area": []}
    for geom, value in shapes(labels, mask=labels != nodata, transform=transform):
        poly = shapely.geometry.shape(geom)
        if poly.area < min_area:
            continue
        if simplify > 0:
            poly = poly.simplify(simplify, preserve_topology=True)
        cid = int(value)
        geoms.append(poly)
        columns["class"].append(classes[cid] if cid < len(classes) else str(cid))
        columns["class_id"].append(cid)
        columns["area"].append(float(poly.area))
    return geoms, columns
