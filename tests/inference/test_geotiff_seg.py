"""GeoTIFF segmentation output: georeference carried over, nodata respected, windowed I/O; rasterio optional."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from torch import nn

from lsknet.errors import LSKNetError
from lsknet.inference.sliding_window import SlidingWindowSegmenter, segment_file

rasterio = pytest.importorskip("rasterio")
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]


def _model():
    import torch

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()


def test_generated_geotiff_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3, 90, 70)).astype(np.uint8)
    data[:, :10, :10] = 0  # nodata corner
    transform = rasterio.Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4600000.0)
    src_path = tmp_path / "scene.tif"
    with rasterio.open(src_path, "w", driver="GTiff", height=90, width=70, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=transform, nodata=0) as dst:  # fmt: skip
        dst.write(data)
    seg = SlidingWindowSegmenter(_model(), window=32, overlap=8)
    written = segment_file(seg, src_path, tmp_path / "out", PALETTE)
    assert set(written) == {"geotiff", "index", "color", "overlay", "skipped_windows"}
    with rasterio.open(written["geotiff"]) as out:
        assert out.crs.to_epsg() == 32633 and out.transform == transform
        assert (out.width, out.height, out.count, out.dtypes[0], out.nodata) == (70, 90, 1, "uint8", 255)
        assert out.colormap(1)[1] == (255, 0, 0, 255)
        labels = out.read(1)
    want, _ = seg.predict(np.moveaxis(data, 0, -1))
    assert (labels[:10, :10] == 255).all()
    keep = np.ones_like(labels, bool)
    keep[:10, :10] = False
    np.testing.assert_array_equal(labels[keep], want[keep])


@pytest.mark.realdata
def test_real_landsat_geotiff(shared_data, tmp_path):
    path = shared_data / "rasterio_tests" / "RGB.byte.tif"
    seg = SlidingWindowSegmenter(_model(), window=256, overlap=32, batch_size=4)
    written = segment_file(seg, path, tmp_path, PALETTE, outputs=("geotiff",))
    with rasterio.open(path) as src, rasterio.open(written["geotiff"]) as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        image = np.moveaxis(src.read(), 0, -1)
        labels = out.read(1)
    nodata = (image == 0).all(-1)
    assert nodata.any() and (labels[nodata] == 255).all()
    want, _ = seg.predict(image)
    np.testing.assert_array_equal(labels[~nodata], want[~nodata])


def test_missing_rasterio_is_a_clear_error(monkeypatch):
    from lsknet.inference import geotiff

    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(LSKNetError, match="pip install"):
        geotiff.require_rasterio()
    assert geotiff.is_georeferenced("x.tif") is False
