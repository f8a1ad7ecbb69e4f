"""Real GeoTIFFs: Landsat ``RGB.byte.tif`` (EPSG:32618, black nodata borders) and the 16-bit SpaceNet sample. The
outputs of detection, segmentation and the classification grid open through GDAL/OGR (rasterio, pyogrio) with the
raster's CRS and land on the raster's footprint (pyproj as the reprojection oracle)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lsknet.inference.sliding_window import SlidingWindowSegmenter, segment_file
from lsknet.tasks import classification, detection

from .geo_helpers import CentreDetector
from .test_scene_grid import BrightnessClassifier
from .test_scene_segmentation import Threshold
from .test_scenes import _module

rasterio = pytest.importorskip("rasterio")
pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")
pyproj = pytest.importorskip("pyproj")

pytestmark = pytest.mark.realdata


def _footprint(src):
    """The raster's footprint polygon in its CRS and in WGS84 (edges densified to 200 points each through the transform
    by hand, then pyproj: straight edges in the CRS are curved in longitude/latitude)."""
    a, b, c, d, e, f = src.transform[:6]
    t = np.linspace(0, 1, 200, endpoint=False)
    w, h = src.width, src.height
    ring = np.concatenate([np.stack([t * w, 0 * t], 1), np.stack([w + 0 * t, t * h], 1),
                           np.stack([w - t * w, h + 0 * t], 1), np.stack([0 * t, h - t * h], 1)])  # fmt: skip
    xs, ys = a * ring[:, 0] + b * ring[:, 1] + c, d * ring[:, 0] + e * ring[:, 1] + f
    to_ll = pyproj.Transformer.from_crs(src.crs.to_wkt(), 4326, always_xy=True)
    return shapely.Polygon(np.stack([xs, ys], 1)), shapely.Polygon(np.stack(to_ll.transform(xs, ys), 1))


def _check_vectors(path, layer, crs_epsg, native, lonlat, geojson):
    info = pyogrio.read_info(path, layer=layer)
    assert pyproj.CRS(info["crs"]).to_epsg() == crs_epsg and info["features"] > 0
    _, _, wkb, _ = pyogrio.raw.read(path, layer=layer)
    geoms = shapely.from_wkb(wkb)
    assert all(native.buffer(1e-6 * native.length).contains(g) for g in geoms)
    gj = json.loads(open(geojson).read())
    assert len(gj["features"]) == info["features"]
    for feat in gj["features"]:  # vertices (edges are straight in lon/lat, the footprint's are curved)
        vertices = shapely.points(np.asarray(feat["geometry"]["coordinates"][0]))
        assert lonlat.buffer(1e-5).contains(vertices).all()  # 1e-5 deg ~ 1 m: the densified footprint chords


def test_landsat_rgb_byte_detection_segmentation_grid(shared_data, tmp_path):
    path = shared_data / "rasterio_tests" / "RGB.byte.tif"
    with rasterio.open(path) as src:
        native, lonlat = _footprint(src)
        valid = src.dataset_mask() > 0
    summary = detection.predict(_module(tile=128), [path], tmp_path / "det", overlap=0, progress=False,
                                formats="task1,json,png,geojson,gpkg,shp")  # fmt: skip
    assert summary["skipped_windows"] > 0 and summary["dropped_on_nodata"] > 0  # the black corners
    scene = tmp_path / "det" / "scenes" / "RGB.byte"
    _check_vectors(scene / "detections.gpkg", "detections", 32618, native, lonlat, scene / "detections.geojson")
    assert pyogrio.read_info(scene / "detections.shp")["features"] == summary["num_detections"]
    # every kept centre is on a valid pixel
    result = json.loads((scene / "result.json").read_text())
    cx, cy = np.asarray(result["rboxes"])[:, :2].T
    assert valid[np.floor(cy).astype(int), np.floor(cx).astype(int)].all()

    seg = SlidingWindowSegmenter(Threshold(), window=256, overlap=64, batch_size=2)
    written = segment_file(seg, path, tmp_path / "seg", [(0, 0, 0), (255, 255, 255)], ["geotiff", "gpkg", "geojson"],
                           classes=["dark", "bright"], min_area=300.0**2 * 4)  # fmt: skip
    with rasterio.open(written["geotiff"]) as out, rasterio.open(path) as src:
        assert out.crs == src.crs and out.transform == src.transform
        assert (out.read(1)[~valid] == 255).all()
    _check_vectors(written["gpkg"], "segments", 32618, native, lonlat, written["geojson"])

    classification.predict(BrightnessClassifier(), [path], tmp_path / "cls", tile=128, progress=False)
    grid = tmp_path / "cls" / "scenes" / "RGB.byte"
    with rasterio.open(grid / "classes.tif") as out:
        assert out.crs.to_epsg() == 32618 and (out.height, out.width) == (718 // 128, 791 // 128)
    _check_vectors(grid / "cells.gpkg", "cells", 32618, native, lonlat, grid / "cells.geojson")


def test_spacenet_16bit_sample(shared_data, tmp_path):
    path = shared_data / "solaris_spacenet" / "sample_geotiff.tif"
    model = CentreDetector(record=True)
    detection.predict(_module(model, tile=512), [path], tmp_path / "det", overlap=64, progress=False)
    with rasterio.open(path) as src:
        native, lonlat = _footprint(src)
        epsg = src.crs.to_epsg()
        raw = src.read(1)
    # the 16-bit band was stretched by the scene rule and repeated to 3 channels
    low, high = np.percentile(raw[raw != 0].astype(float), [1, 99])
    crop = model.crops[0]
    want = np.clip(np.round((raw[:512, :512].astype(float) - low) * 255 / (high - low)), 0, 255)
    np.testing.assert_array_equal(crop[0].numpy(), want)
    assert crop.shape[0] == 3 and bool((crop[0] == crop[2]).all())
    scene = tmp_path / "det" / "scenes" / "sample_geotiff"
    _check_vectors(scene / "detections.gpkg", "detections", epsg, native, lonlat, scene / "detections.geojson")
