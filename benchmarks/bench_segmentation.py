"""Peak memory (and time) of sliding-window segmentation vs image size: lsknet's row-strip inference
(GeoTIFF read window by window, GeoTIFF written strip by strip) against the straightforward baseline that holds
the whole image and a whole-image per-class float accumulator, measured side by side in fresh processes.

    python benchmarks/bench_segmentation.py                       # sizes 1000 2000 4000, tiny conv model
    python benchmarks/bench_segmentation.py --sizes 10000 --modes strips
    python benchmarks/bench_segmentation.py --model lsknet_t_unetformer --sizes 512 1024

Peak memory = growth of the process's maximum resident set size (``ru_maxrss``) during the inference call, so
model weights and library imports are excluded. The default model is a small 3x3-conv network (6 classes): the
memory being measured is the inference machinery's, which does not depend on the network beyond one window batch.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_geotiff(path: Path, size: int, seed: int = 0) -> None:
    """A size x size 3-band uint8 GeoTIFF written in 512-row strips (bounded memory)."""
    import rasterio
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=rasterio.Affine(0.1, 0, 500000, 0, -0.1, 4600000), tiled=True, blockxsize=256,
                   blockysize=256)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, 512):
            h = min(512, size - y)
            block = rng.integers(0, 256, (3, h // 8 + 1, size // 8 + 1), dtype=np.uint8)
            block = np.repeat(np.repeat(block, 8, 1), 8, 2)[:, :h, :size]
            dst.write(block, window=Window(0, y, size, h))


def build_model(name: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "tiny":
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 6, 3, padding=1)).eval()
    from lsknet.models.factory import create_model

    return create_model(name, num_classes=6, aux_head=False).eval()


def child(args: argparse.Namespace) -> None:
    """Run one measurement in this (fresh) process and print a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from lsknet.inference.sliding_window import SlidingWindowSegmenter, blend_weights, segment_file

    model = build_model(args.model)
    seg = SlidingWindowSegmenter(model, window=args.window, overlap=args.overlap, batch_size=args.batch)
    palette = [(i * 40, 255 - i * 40, 128) for i in range(6)]
    seg.probabilities([np.zeros((args.window, args.window, 3), np.uint8)])  # warm-up outside the measurement
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if args.mode == "strips":
        segment_file(seg, args.input, args.out, palette, outputs=("geotiff",))
    else:  # baseline: whole image in memory, whole-image (K, H, W) accumulator
        import rasterio

        from lsknet.data.segmentation import tile_windows

        with rasterio.open(args.input) as src:
            image = np.moveaxis(src.read(), 0, -1)
            profile = src.profile
        h, w = image.shape[:2]
        acc = torch.zeros(6, h, w)
        wsum = torch.zeros(h, w)
        wins = tile_windows(h, w, seg.window, seg.stride)
        for i in range(0, len(wins), args.batch):
            batch = wins[i : i + args.batch]
            probs = seg.probabilities([image[y : y + hh, x : x + ww] for y, x, hh, ww in batch])
            for (y, x, hh, ww), p in zip(batch, probs):
                wt = blend_weights(hh, ww)
                acc[:, y : y + hh, x : x + ww] += p * wt
                wsum[y : y + hh, x : x + ww] += wt
        labels = acc.argmax(0).to(torch.uint8).numpy()
        profile.update(count=1, dtype="uint8")
        with rasterio.open(Path(args.out) / "baseline.tif", "w", **profile) as dst:
            dst.write(labels[None])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": args.mode, "growth_mb": (peak - before) / 1024, "seconds": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    p.add_argument("--modes", nargs="+", default=["strips", "baseline"], choices=["strips", "baseline"])
    p.add_argument("--model", default="tiny", help="tiny | lsknet_t_unetformer | lsknet_s_upernet ...")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="strips", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    print(f"model={args.model} window={args.window} overlap={args.overlap} batch={args.batch} threads={args.threads}")
    print(f"{'size':>6} {'mode':>9} {'peak growth MB':>15} {'seconds':>8}  (per-class float map of the image: MB)")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"scene_{size}.tif"
            make_geotiff(path, size)
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--child", "--mode", mode, "--input", str(path), "--out", tmp,
                       "--model", args.model, "--window", str(args.window), "--overlap", str(args.overlap),
                       "--batch", str(args.batch), "--threads", str(args.threads)]  # fmt: skip
                res = json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
                )
                full_map = 6 * size * size * 4 / 2**20
                print(
                    f"{size:>6} {mode:>9} {res['growth_mb']:>15.1f} {res['seconds']:>8.1f}  ({full_map:.0f})",
                    flush=True,
                )
            path.unlink()


if __name__ == "__main__":
    main()
