"""Whole-scene detection: throughput (megapixels/s) and peak memory against scene size.

    python benchmarks/bench_scenes.py                                  # all three series below
    python benchmarks/bench_scenes.py --series dense --sizes 512 1024 2048 --json out.json

Every scene runs in a fresh child process (``lsknet.tasks.detection.predict`` on a GeoTIFF written here), so the peak
resident memory (``ru_maxrss``) is that scene's own. Series:

- ``dense``: fully valid random 8-bit RGB scenes, the real LSKNet-T Oriented R-CNN (random weights except the
  classifier bias, set so that background wins as in a trained model; official test settings), 512-px windows
  without overlap: time should grow with the pixel count, memory should stay flat.
- ``--model standin``: the same scenes with a detector that does no work, to time the reading, skipping and
  writing alone.
- ``sparse``: mostly-nodata scenes (sparse GeoTIFFs, 4 stored 512-px blocks) from 10000 to 40000 px a side with the
  same detector and 1024-px windows: only the 4 windows with valid pixels run the model; the rest are read, found
  empty and skipped. Shows the cost of reading / skipping and that a 40000 x 40000 scene stays far below 3 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from lsknet.models.oriented_rcnn import build_oriented_rcnn
    from lsknet.tasks import detection

    path, out, tile, kind = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


    class StandIn(torch.nn.Module):  # no compute: one box per window, to time reading / skipping / writing
        num_classes = 15

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images):
            return [{"rboxes": torch.tensor([[img.shape[2] / 2, img.shape[1] / 2, 20.0, 8.0, 0.3]]),
                     "scores": torch.tensor([0.9]), "labels": torch.tensor([1])} for img in images]


    torch.manual_seed(0)
    if kind == "standin":
        model = StandIn()
    else:
        model = build_oriented_rcnn("lsknet_t", num_classes=15).eval()
        with torch.no_grad():
            model.roi_head.bbox_head.fc_cls.bias[-1] = 6.0  # background wins, as in a trained detector
    module = SimpleNamespace(config={"data": {"tile_size": tile}}, model=model, classes=tuple(map(str, range(15))),
                             eval=lambda: None)
    start = time.perf_counter()
    summary = detection.predict(module, [path], out, overlap=0, batch_size=2, progress=False,
                                formats="task1,json,geojson,gpkg")
    seconds = time.perf_counter() - start
    summary.update(seconds=seconds, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(summary))
    """
)


def write_dense(path: Path, side: int) -> None:
    import rasterio

    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", height=side, width=side, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=rasterio.Affine(0.5, 0, 400000, 0, -0.5, 5000000), tiled=True, blockxsize=256,
                   blockysize=256)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rng.integers(0, 256, (3, side, side), dtype=np.uint8))


def write_sparse(path: Path, side: int) -> None:
    import rasterio
    from rasterio.windows import Window

    profile = dict(driver="GTiff", height=side, width=side, count=3, dtype="uint8", nodata=0, crs="EPSG:32633",
                   transform=rasterio.Affine(0.5, 0, 400000, 0, -0.5, 5000000), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", sparse_ok=True)  # fmt: skip
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for k in range(4):
            y = x = (k * (side // 4) // 1024) * 1024
            dst.write(rng.integers(1, 256, (3, 512, 512), dtype=np.uint8), window=Window(x + 256, y + 256, 512, 512))


def run(path: Path, tile: int, work: Path, model: str) -> dict:
    child = work / "child.py"
    child.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(child), str(path), str(work / "out"), str(tile), model],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", nargs="+", default=["dense", "sparse"], choices=["dense", "sparse"])
    parser.add_argument("--sizes", nargs="+", type=int, help="scene sides (default: per series)")
    parser.add_argument("--model", default="lsknet_t_orcnn", choices=["lsknet_t_orcnn", "standin"],
                        help="standin: a detector without compute, to time reading / skipping / writing alone")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    rows = []
    for series in args.series:
        sizes = args.sizes or ([512, 1024, 2048] if series == "dense" else [10000, 20000, 40000])
        for side in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                path = work / "scene.tif"
                (write_dense if series == "dense" else write_sparse)(path, side)
                tile = 512 if series == "dense" else 1024
                res = run(path, tile, work, args.model)
            row = {
                "series": series,
                "model": args.model,
                "side": side,
                "megapixels": side * side / 1e6,
                "windows_run": (-(-side // tile)) ** 2 - res["skipped_windows"],
                "windows_skipped": res["skipped_windows"],
                "seconds": round(res["seconds"], 2),
                "mpx_per_s": round(side * side / 1e6 / res["seconds"], 3),
                "peak_rss_mb": round(res["peak_rss_mb"]),
                "detections": res["num_detections"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
