"""Make ``docs/scene_detection.png``: a detector trained by ``lsknet demo`` predicts a georeferenced scene.

    lsknet demo --out runs/demo                      # trains the demo detector, generates data/scene/images/*.png
    python docs/make_scene_figure.py runs/demo       # -> docs/scene_detection.png (+ the run under runs/demo/geo)

The demo's held-out large scene (synthetic DOTA-style objects) is written as a GeoTIFF in UTM zone 33N (EPSG:32633,
0.5 m pixels) with a black nodata border around a rotated footprint, the way satellite scenes come; ``lsknet
predict`` runs on it (window by window, nodata windows skipped, GeoJSON/GeoPackage written) and its ``preview.png``
is copied here. Windows do not overlap (``overlap=0``) to keep the run short on a CPU.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(demo: Path) -> None:
    import rasterio

    from lsknet.tasks import detection, runner

    scene_png = sorted((demo / "data" / "scene" / "images").glob("*.png"))[0]
    rgb = np.asarray(Image.open(scene_png).convert("RGB"))
    h, w = rgb.shape[:2]
    # nodata border: keep a footprint rotated by 8 degrees, inset by 6 %
    yy, xx = np.mgrid[0:h, 0:w]
    ang = np.deg2rad(8.0)
    u = (xx - w / 2) * np.cos(ang) + (yy - h / 2) * np.sin(ang)
    v = -(xx - w / 2) * np.sin(ang) + (yy - h / 2) * np.cos(ang)
    inside = (np.abs(u) < 0.44 * w) & (np.abs(v) < 0.44 * h)
    data = np.where(inside[..., None], np.maximum(rgb, 1), 0).astype(np.uint8)
    geo = demo / "geo"
    geo.mkdir(exist_ok=True)
    tif = geo / "demo_scene.tif"
    profile = dict(driver="GTiff", height=h, width=w, count=3, dtype="uint8", nodata=0, crs="EPSG:32633",
                   transform=rasterio.Affine(0.5, 0, 454000.0, 0, -0.5, 5046000.0), tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate")  # fmt: skip
    with rasterio.open(tif, "w", **profile) as dst:
        dst.write(np.moveaxis(data, -1, 0))
    ckpt = demo / "train" / "checkpoints" / "last.ckpt"
    best = demo / "train" / "checkpoints" / "best.ckpt"
    ckpt = best if best.is_file() else ckpt
    module, _, _ = runner.load_module(ckpt, build_data=False)
    detection.predict(module, [tif], geo / "preds", overlap=0, formats="task1,json,png,geojson,gpkg", progress=True,
                      draw_score_thr=0.3)  # fmt: skip
    preview = Image.open(geo / "preds" / "scenes" / "demo_scene" / "preview.png")
    preview = preview.convert("RGB")
    preview.thumbnail((640, 640))
    out = Path(__file__).with_name("scene_detection.png")
    preview.quantize(colors=128).save(out, optimize=True)
    shutil.copy(geo / "preds" / "scenes" / "demo_scene" / "detections.geojson", geo / "detections.geojson")
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
