"""Scene classification grid over a GeoTIFF: the class GeoTIFF holds the painted pattern at cell resolution with the
georeference derived by hand, grid-cell polygons are the cell footprints through the transform, nodata cells are
skipped and counted, top-k columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsknet.tasks import classification

from .geo_helpers import write_geotiff

rasterio = pytest.importorskip("rasterio")
pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")

TRANSFORM = rasterio.Affine(10.0, 0.5, 300000.0, 0.0, -10.0, 6000000.0)


class BrightnessClassifier(torch.nn.Module):
    """3 classes: 'dark' / 'bright' by the sign of the mean normalised input, 'other' always last."""

    classes = ("dark", "bright", "other")
    config = {"data": {"image_size": 32}}
    device = torch.device("cpu")

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        logits = torch.stack([-m * 10, m * 10, torch.full_like(m, -50.0)], 1)
        return logits


def test_grid_classes_and_cells(tmp_path):
    rows, cols, tile = 4, 5, 32
    pattern = np.random.default_rng(0).integers(0, 2, (rows, cols))
    data = np.zeros((3, rows * tile + 10, cols * tile + 7), np.uint8)  # a border strip narrower than a cell
    for r in range(rows):
        for c in range(cols):
            data[:, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = 230 if pattern[r, c] else 20
    data[:, :tile, :tile] = 0  # one cell entirely nodata
    path = write_geotiff(tmp_path / "grid.tif", data, "EPSG:32630", TRANSFORM, nodata=0)
    summary = classification.predict(BrightnessClassifier(), [path], tmp_path / "out", topk=2, tile=tile,
                                     progress=False, formats="geotiff,gpkg,geojson")  # fmt: skip
    assert summary["num_images"] == 1 and summary["skipped_cells"] == 1
    scene = tmp_path / "out" / "scenes" / "grid"
    with rasterio.open(scene / "classes.tif") as out:
        grid = out.read(1)
        assert out.crs.to_epsg() == 32630 and out.nodata == 255
        a, b, c0, d, e, f0 = TRANSFORM[:6]
        assert out.transform.almost_equals(rasterio.Affine(a * tile, b * tile, c0, d * tile, e * tile, f0))
    want = pattern.astype(np.uint8)
    want[0, 0] = 255
    np.testing.assert_array_equal(grid, want)

    _, _, wkb, fields = pyogrio.raw.read(scene / "cells.gpkg", layer="cells")
    info = pyogrio.read_info(scene / "cells.gpkg", layer="cells")
    assert list(info["fields"]) == ["row", "col", "class_1", "score_1", "class_2", "score_2"]
    geoms = shapely.from_wkb(wkb)
    assert len(geoms) == rows * cols - 1
    for g, r, c, name in zip(geoms, fields[0], fields[1], fields[2]):
        x0, y0 = c * tile, r * tile
        corners = [(x0, y0), (x0 + tile, y0), (x0 + tile, y0 + tile), (x0, y0 + tile)]
        hand = shapely.Polygon([(a * x + b * y + c0, d * x + e * y + f0) for x, y in corners])
        assert shapely.symmetric_difference(g, hand).area <= 1e-9 * hand.area
        assert name == ("bright" if pattern[r, c] else "dark")
    assert [str(v) for v in fields[4]] == [{"bright": "dark", "dark": "bright"}[str(v)] for v in fields[2]]
    assert all(float(s1) >= float(s2) for s1, s2 in zip(fields[3], fields[5]))


def test_stride_smaller_than_tile_centres_the_class_pixels(tmp_path):
    data = np.full((3, 100, 100), 200, np.uint8)
    path = write_geotiff(tmp_path / "g.tif", data, "EPSG:32630", TRANSFORM)
    classification.predict(BrightnessClassifier(), [path], tmp_path / "out", tile=40, stride=20, progress=False)
    with rasterio.open(tmp_path / "out" / "scenes" / "g" / "classes.tif") as out:
        assert (out.height, out.width) == (4, 4)  # (100 - 40) // 20 + 1
        # pixel (0, 0) is centred on the first cell's centre (20, 20): its top-left corner is pixel (10, 10)
        x, y = out.transform * (0, 0)
        hx, hy = TRANSFORM * (10, 10)
        assert (x, y) == pytest.approx((hx, hy), rel=1e-12)
        assert out.transform.a == pytest.approx(TRANSFORM.a * 20)
