"""A multi-gigapixel, mostly-nodata GeoTIFF (sparse: only a few blocks stored, so writing it is cheap) is predicted
window by window in bounded memory: the peak RSS of the predicting process (measured in a subprocess) stays far below
the size of the raster, and the few valid windows are the only ones the model sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

SIDE = 50_000  # 2.5 gigapixels, 1 band uint8: 2.5 GB if it were read whole (7.5 GB as RGB, 30 GB as float)

WORKER = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])
    from geo_helpers import CentreDetector
    from lsknet.tasks import detection

    model = CentreDetector()
    module = SimpleNamespace(config={"data": {"tile_size": 1024}}, model=model, classes=("a", "b"), eval=lambda: None)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    summary = detection.predict(module, [Path(sys.argv[2])], Path(sys.argv[3]), overlap=0, batch_size=4,
                                progress=False, formats="task1,json,geojson,gpkg")
    summary["seconds"] = time.perf_counter() - start
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary["rss_before_mb"] = base / 1024
    print("RESULT " + json.dumps(summary))
    """
)


def write_sparse_scene(path: Path, side: int, valid_blocks: list[tuple[int, int]]) -> Path:
    """A ``side`` x ``side`` uint8 GeoTIFF, nodata 0, 512-px blocks; only the blocks at ``valid_blocks`` (row, col
    in pixels) are written (value 200), every other block is absent from the file (GDAL ``SPARSE_OK``)."""
    from rasterio.windows import Window

    profile = dict(driver="GTiff", height=side, width=side, count=1, dtype="uint8", nodata=0, crs="EPSG:32633",
                   transform=rasterio.Affine(0.5, 0, 400000, 0, -0.5, 5000000), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", sparse_ok=True)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for y, x in valid_blocks:
            dst.write(np.full((1, 512, 512), 200, np.uint8), window=Window(x, y, 512, 512))
    return path


@pytest.mark.slow
def test_multi_gigapixel_mostly_nodata_scene_in_bounded_memory(tmp_path):
    blocks = [(0, 0), (20480, 30720), (SIDE - 512 - 336, SIDE - 512 - 336)]
    path = write_sparse_scene(tmp_path / "huge.tif", SIDE, blocks)
    assert path.stat().st_size < 50_000_000  # cheap to write: the nodata blocks are not stored
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, str(worker), str(Path(__file__).parent), str(path), str(tmp_path / "out")]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))
    windows = (-(-SIDE // 1024)) ** 2
    # each stored block lies in exactly one 1024-px window (windows start at multiples of 1024, the last at SIDE-1024)
    assert result["num_detections"] + result["dropped_on_nodata"] == len(blocks)
    assert result["skipped_windows"] == windows - len(blocks)
    assert result["peak_rss_mb"] < 1500, result  # the raster alone is 2500 MB; RGB float windows would be 30 GB
    assert result["peak_rss_mb"] - result["rss_before_mb"] < 1000, result
