"""Whole-scene detection on GeoTIFFs the tests write: vector features are the Task1 polygons mapped through the
raster's transform (hand affine math) and reprojected (pyproj as the oracle), nodata windows skipped and counted,
centres on nodata dropped and counted, the 8/16-bit input rule, band order, skip-existing, atomic scene folders."""

from __future__ import annotations

import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lsknet.data.dota import read_task1_dir
from lsknet.inference.predictor import tile_origins
from lsknet.tasks import detection

from .geo_helpers import BOX_H, BOX_THETA, BOX_W, CentreDetector, write_geotiff

rasterio = pytest.importorskip("rasterio")
pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")
pyproj = pytest.importorskip("pyproj")

TRANSFORM = rasterio.Affine(0.5, 0.05, 500000.0, 0.02, -0.5, 4600000.0)  # sheared on purpose


def _module(model=None, tile=128):
    cfg = {"data": {"tile_size": tile}}
    return SimpleNamespace(config=cfg, model=model or CentreDetector(), classes=("even", "odd"), eval=lambda: None)


def _expected(valid: np.ndarray, tile: int, overlap: int):
    """Hand layout: (kept centres, skipped windows, dropped centres) for the CentreDetector."""
    h, w = valid.shape
    kept, skipped, dropped = [], 0, 0
    for y0 in tile_origins(h, tile, overlap):
        for x0 in tile_origins(w, tile, overlap):
            hh, ww = min(tile, h - y0), min(tile, w - x0)
            if not valid[y0 : y0 + hh, x0 : x0 + ww].any():
                skipped += 1
                continue
            cx, cy = x0 + ww / 2, y0 + hh / 2
            if valid[int(math.floor(cy)), int(math.floor(cx))]:
                kept.append((cx, cy))
            else:
                dropped += 1
    return kept, skipped, dropped


def _corners(cx, cy):
    """Corners of the detector's box by hand (DOTA order: width axis rotated by theta towards +y)."""
    c, s = math.cos(BOX_THETA), math.sin(BOX_THETA)
    out = []
    for dx, dy in ((-BOX_W / 2, -BOX_H / 2), (BOX_W / 2, -BOX_H / 2), (BOX_W / 2, BOX_H / 2), (-BOX_W / 2, BOX_H / 2)):
        out.append((cx + dx * c - dy * s, cy + dx * s + dy * c))
    return np.asarray(out)


def _scene(tmp_path, name="scene.tif"):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3, 300, 520)).astype(np.uint8)
    data[:, :, :170] = 0  # nodata strip on the left: whole windows and some centres fall on it
    data[:, 250:, 400:] = 0
    return write_geotiff(tmp_path / name, data, "EPSG:32633", TRANSFORM, nodata=0), data[0] > 0


def test_features_are_task1_polygons_mapped_and_reprojected(tmp_path):
    path, valid = _scene(tmp_path)
    out = tmp_path / "out"
    fmt = "task1,json,png,geojson,gpkg,shp"
    summary = detection.predict(_module(), [path], out, overlap=28, progress=False, formats=fmt)
    kept, skipped, dropped = _expected(valid, 128, 28)
    assert (summary["num_detections"], summary["skipped_windows"], summary["dropped_on_nodata"]) == (
        len(kept), skipped, dropped,
    )  # fmt: skip
    assert skipped > 0 and dropped > 0 and len(kept) > 0

    # Task1 lines == the detector's boxes by hand (2 decimals)
    task1 = read_task1_dir(out / "task1", ["even", "odd"])
    polys = np.concatenate([d.polys for d in task1.values() if len(d.scores)])
    names = [n for n, d in task1.items() for _ in range(len(d.scores))]
    want = np.stack([_corners(cx, cy) for cx, cy in kept])
    assert len(polys) == len(want)
    order = np.lexsort((polys[:, 0, 1], polys[:, 0, 0]))
    want_order = np.lexsort((want[:, 0, 1], want[:, 0, 0]))
    np.testing.assert_allclose(polys[order], want[want_order], atol=0.006)

    # GeoPackage: layer `detections`, raster CRS, features == Task1 polygons through the transform (1e-9 relative)
    scene = out / "scenes" / "scene"
    info = pyogrio.read_info(scene / "detections.gpkg", layer="detections")
    assert pyproj.CRS(info["crs"]).to_epsg() == 32633 and info["features"] == len(kept)
    _, _, wkb, fields = pyogrio.raw.read(scene / "detections.gpkg", layer="detections")
    geoms = shapely.from_wkb(wkb)
    a, b, c, d, e, f = TRANSFORM[:6]
    hand = np.stack([polys[:, :, 0] * a + polys[:, :, 1] * b + c, polys[:, :, 0] * d + polys[:, :, 1] * e + f], -1)
    got = np.stack([np.asarray(g.exterior.coords)[:4] for g in geoms])
    assert all(np.allclose(np.asarray(g.exterior.coords)[0], np.asarray(g.exterior.coords)[-1]) for g in geoms)
    key = lambda arr: np.lexsort((arr[:, 0, 1], arr[:, 0, 0]))  # noqa: E731
    np.testing.assert_allclose(got[key(got)], hand[key(hand)], rtol=1e-9, atol=0)
    got_names = [str(x) for x in fields[0]][: len(names)]
    assert sorted(got_names) == sorted(names) and set(np.asarray(fields[1]).tolist()) <= {0, 1}

    # Shapefile: the same polygons, same CRS
    info = pyogrio.read_info(scene / "detections.shp")
    assert pyproj.CRS(info["crs"]).to_epsg() == 32633 and info["features"] == len(kept)

    # GeoJSON: RFC 7946 WGS84, no crs member, counter-clockwise rings, == pyproj(hand-mapped points)
    gj = json.loads((scene / "detections.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and "crs" not in gj and len(gj["features"]) == len(kept)
    to_ll = pyproj.Transformer.from_crs(32633, 4326, always_xy=True)
    lon, lat = to_ll.transform(hand[..., 0].ravel(), hand[..., 1].ravel())
    hand_ll = np.stack([lon, lat], -1).reshape(hand.shape)
    feats = gj["features"]
    got_ll = []
    for feat in feats:
        ring = np.asarray(feat["geometry"]["coordinates"][0])
        assert feat["geometry"]["type"] == "Polygon" and len(ring) == 5 and np.array_equal(ring[0], ring[-1])
        assert shapely.LinearRing(ring).is_ccw
        assert set(feat["properties"]) == {"class", "class_id", "score"}
        got_ll.append(ring[:4])
    for poly in got_ll:  # each reprojected ring is one of the hand rings (up to orientation)
        dist = np.abs(hand_ll - poly[None, ::-1][:, [3, 0, 1, 2]]).max(axis=(1, 2))
        dist2 = np.abs(hand_ll - poly[None]).max(axis=(1, 2))
        assert min(dist.min(), dist2.min()) < 1e-8
    assert 14.9 < lon.min() and lon.max() < 15.1 and 41.5 < lat.min() < 41.6  # near 15E (UTM 33N), 41.5N

    # the scene folder is complete; no temporary left behind
    assert {p.name for p in scene.iterdir()} >= {"detections.geojson", "detections.gpkg", "preview.png", "result.json"}
    assert not [p for p in (out / "scenes").iterdir() if p.name.startswith(".")]


def test_alpha_band_windows_are_skipped(tmp_path):
    rgba = np.full((4, 200, 300), 120, np.uint8)
    rgba[3, :, :170] = 0  # transparent left part
    import rasterio.enums

    path = tmp_path / "alpha.tif"
    profile = dict(driver="GTiff", height=200, width=300, count=4, dtype="uint8", crs="EPSG:3857")
    with rasterio.open(path, "w", transform=rasterio.Affine(2, 0, 0, 0, -2, 0), alpha="YES", **profile) as dst:
        dst.write(rgba)
        dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                           rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]  # fmt: skip
    summary = detection.predict(_module(tile=64), [path], tmp_path / "out", overlap=0, progress=False)
    kept, skipped, dropped = _expected(rgba[3] > 0, 64, 0)
    assert (summary["num_detections"], summary["skipped_windows"], summary["dropped_on_nodata"]) == (
        len(kept), skipped, dropped,
    )  # fmt: skip
    assert skipped == 4 * 2 and dropped == 4


def test_16bit_input_rule_by_hand(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(200, 3000, (3, 180, 260)).astype(np.uint16)
    data[:, :40, :] = 0
    path = write_geotiff(tmp_path / "s16.tif", data, "EPSG:32616", TRANSFORM, nodata=0)
    valid = (data != 0).any(0)
    chosen = data[[2, 1, 0]].astype(np.float64)  # --bands 3,2,1
    low, high = np.percentile(chosen[:, valid], [1, 99])

    def stretch(x, lo, hi):
        return np.clip(np.round((x - lo) * 255.0 / (hi - lo)), 0, 255)

    for bands, scale, lo, hi in (("3,2,1", None, low, high), ("3,2,1", "100,2600", 100.0, 2600.0)):
        model = CentreDetector(record=True)
        detection.predict(_module(model, tile=64), [path], tmp_path / f"out{lo}", overlap=0, progress=False,
                          bands=bands, scale=scale)  # fmt: skip
        windows = [(y, x) for y in tile_origins(180, 64, 0) for x in tile_origins(260, 64, 0)]
        windows = [(y, x) for y, x in windows if valid[y : y + 64, x : x + 64].any()]
        assert len(model.crops) == len(windows)
        for (y, x), crop in zip(windows, model.crops):
            want = stretch(chosen[:, y : y + 64, x : x + 64], lo, hi)
            np.testing.assert_array_equal(crop.numpy(), want[:, : crop.shape[1], : crop.shape[2]])


def test_one_band_16bit_is_repeated_and_two_bands_fail_loudly(tmp_path):
    data = np.arange(100 * 120, dtype=np.uint16).reshape(1, 100, 120) * 3
    path = write_geotiff(tmp_path / "grey.tif", data, "EPSG:32616", TRANSFORM)
    model = CentreDetector(record=True)
    detection.predict(_module(model, tile=128), [path], tmp_path / "o1", overlap=0, progress=False)
    crop = model.crops[0]
    assert crop.shape == (3, 100, 120) and torch.equal(crop[0], crop[2]) and crop.max() == 255 and crop.min() == 0
    from lsknet.errors import DatasetFormatError

    rgb = write_geotiff(tmp_path / "rgb.tif", np.ones((3, 50, 50), np.uint8), "EPSG:32616", TRANSFORM)
    with pytest.raises(DatasetFormatError, match="1 or 3 bands"):
        detection.predict(_module(), [rgb], tmp_path / "o2", progress=False, bands="1,2", strict=True)


def test_plain_tiff_without_georeference_gives_pixel_geojson_and_a_warning(tmp_path):
    data = np.full((3, 90, 100), 50, np.uint8)
    path = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", height=90, width=100, count=3, dtype="uint8") as dst:
            dst.write(data)
    with pytest.warns(UserWarning, match="no georeference"):
        detection.predict(_module(), [path], tmp_path / "out", progress=False)
    gj = json.loads((tmp_path / "out" / "scenes" / "plain" / "detections.geojson").read_text())
    ring = np.asarray(gj["features"][0]["geometry"]["coordinates"][0])[:4]
    np.testing.assert_allclose(ring, np.round(_corners(50, 45), 2), atol=1e-12)


def test_skip_existing_reads_finished_scenes_back(tmp_path):
    path, _ = _scene(tmp_path)
    out = tmp_path / "out"
    first = detection.predict(_module(), [path], out, overlap=28, progress=False)
    before = (out / "task1").read_bytes() if (out / "task1").is_file() else None
    task1 = {p.name: p.read_text() for p in (out / "task1").iterdir()}

    class Boom(CentreDetector):
        def forward(self, images):
            raise AssertionError("a finished scene was predicted again")

    second = detection.predict(_module(Boom()), [path], out, overlap=28, progress=False, skip_existing=True)
    assert before is None and second["num_detections"] == first["num_detections"]
    assert {p.name: p.read_text() for p in (out / "task1").iterdir()} == task1
