"""Segmentation of GeoTIFFs into class polygons: regions == the rectangles the test painted, mapped through the
transform by hand (shapely areas as the oracle); --min-area, nodata windows skipped and counted, 16-bit input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lsknet.data.segmentation import tile_windows
from lsknet.inference.sliding_window import SlidingWindowSegmenter, segment_file

from .geo_helpers import write_geotiff

rasterio = pytest.importorskip("rasterio")
pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")
pyproj = pytest.importorskip("pyproj")

TRANSFORM = rasterio.Affine(2.0, 0.3, 600000.0, 0.1, -2.0, 5200000.0)
PALETTE = [(0, 0, 0), (255, 255, 255)]


class Threshold(torch.nn.Module):
    """Class 1 where the normalised first channel is positive (input value above ~124 of 255), else class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        one = 100.0 * x[:, :1]
        return torch.cat([torch.zeros_like(one), one], 1)


def _hand_polygon(x0, y0, x1, y1):
    a, b, c, d, e, f = TRANSFORM[:6]
    corners = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
    return shapely.Polygon([(a * x + b * y + c, d * x + e * y + f) for x, y in corners])


def _scene(tmp_path, dtype=np.uint8, bright=220, dark=40, nodata=0):
    data = np.full((3, 200, 260), dark, dtype)
    data[:, :, :120] = nodata  # nodata columns: the first windows hold no valid pixel
    data[:, 20:70, 150:230] = bright  # rectangle A (x 150..230, y 20..70)
    data[:, 120:180, 130:200] = bright  # rectangle B
    data[:, 100:102, 240:242] = bright  # a 2 x 2 speck, below --min-area
    return write_geotiff(tmp_path / "seg.tif", data, "EPSG:32632", TRANSFORM, nodata=nodata), data


def test_class_polygons_are_the_painted_regions(tmp_path):
    path, data = _scene(tmp_path)
    seg = SlidingWindowSegmenter(Threshold(), window=64, overlap=16, batch_size=4)
    pixel_area = abs(TRANSFORM.determinant)
    written = segment_file(seg, path, tmp_path / "out", PALETTE, ["geotiff", "gpkg", "geojson"], classes=["bg", "roof"],
                           min_area=10 * pixel_area)  # fmt: skip
    # windows without a valid pixel: by hand from the layout
    valid = data[0] != 0
    want_skipped = sum(1 for y, x, h, w in tile_windows(200, 260, 64, 48) if not valid[y : y + h, x : x + w].any())
    assert written["skipped_windows"] == want_skipped > 0

    info = pyogrio.read_info(written["gpkg"], layer="segments")
    assert pyproj.CRS(info["crs"]).to_epsg() == 32632
    _, _, wkb, fields = pyogrio.raw.read(written["gpkg"], layer="segments")
    geoms = shapely.from_wkb(wkb)
    classes = [str(v) for v in fields[0]]
    roofs = shapely.union_all([g for g, c in zip(geoms, classes) if c == "roof"])
    want = shapely.union_all([_hand_polygon(150, 20, 230, 70), _hand_polygon(130, 120, 200, 180)])
    assert shapely.symmetric_difference(roofs, want).area <= 1e-9 * want.area  # the speck is below --min-area
    background = shapely.union_all([g for g, c in zip(geoms, classes) if c == "bg"])
    valid_area = _hand_polygon(120, 0, 260, 200)
    assert shapely.symmetric_difference(background, valid_area.difference(want)).area <= 1e-6 * valid_area.area + 4 * (
        pixel_area
    )  # the dropped speck is the only difference (4 pixels)
    np.testing.assert_allclose(np.asarray(fields[2], float), [g.area for g in geoms], rtol=1e-9)

    gj = json.loads(open(written["geojson"]).read())
    lon, lat = np.asarray(gj["features"][0]["geometry"]["coordinates"][0]).T
    assert 10.2 < lon.min() < 10.4 and 46.8 < lat.min() < 47.0  # E 600 km, N 5200 km in UTM 32N (by hand)
    with rasterio.open(written["geotiff"]) as out:
        labels = out.read(1)
        assert out.crs.to_epsg() == 32632 and out.transform == TRANSFORM
    assert (labels[:, :120] == 255).all() and (labels[20:70, 150:230] == 1).all()


def test_16bit_scene_is_stretched_with_the_scene_rule(tmp_path):
    path, data = _scene(tmp_path, np.uint16, bright=3000, dark=900)
    seg = SlidingWindowSegmenter(Threshold(), window=64, overlap=16, batch_size=4)
    written = segment_file(seg, path, tmp_path / "out", PALETTE, ["geotiff"], classes=["bg", "roof"])
    with rasterio.open(written["geotiff"]) as out:
        labels = out.read(1)
    # by hand: 1st..99th percentile of the valid pixels -> 0..255; dark maps to 0, bright to 255
    valid = data[0] != 0
    low, high = np.percentile(data[:, valid].astype(float), [1, 99])
    assert (low, high) == (900.0, 3000.0)
    assert (labels[20:70, 150:230] == 1).all() and (labels[0:15, 130:140] == 0).all()
