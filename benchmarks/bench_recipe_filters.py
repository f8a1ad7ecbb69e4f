"""How many training objects the official size filters remove on real DOTA labels (no timing).

Reads ``../shared/data/dota_devkit_example`` (7 real labelTxt files, 2 images; only the labels are needed),
splits every annotation into the official 1024 / gap 200 windows, and counts: objects dropped at load
(rbox side < 2 px, MMRotate's ``poly2obb_np``), objects PolyRandomRotate's filter removes without rotating
(rbox side not > 5 px or centre not strictly inside), and windows left without objects (which the training
dataset replaces by another image).

    PYTHONPATH=src python benchmarks/bench_recipe_filters.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from lsknet.data.dota import read_labeltxt_dir
from lsknet.data.split import compute_windows, split_annotation
from lsknet.ops import poly_to_rbox


def main(root: Path) -> None:
    anns = read_labeltxt_dir(root / "labelTxt")
    total = small = 0
    kept = {}
    for image_id, ann in anns.items():
        rb = poly_to_rbox(torch.from_numpy(ann.polys), version="le90")
        keep = ((rb[:, 2] >= 2) & (rb[:, 3] >= 2)).numpy()
        total += len(ann)
        small += int((~keep).sum())
        if keep.any():
            kept[image_id] = ann.select(keep)
    print(f"label files: {len(anns)}, objects: {total}, dropped at load (side < 2 px): {small}")
    for gap, rate in ((200, 1.0), (500, 1.0), (500, 0.5)):  # single-scale split; multi-scale split rates 1.0, 0.5
        windows = objects = filtered = emptied = 0
        for ann in kept.values():
            width = int(np.ceil(ann.polys[..., 0].max())) + 1
            height = int(np.ceil(ann.polys[..., 1].max())) + 1
            for patch in split_annotation(ann, compute_windows(width, height, (1024,), (gap,), (rate,))):
                if not len(patch):
                    continue
                windows += 1
                objects += len(patch)
                r = poly_to_rbox(torch.from_numpy(patch.polys * rate), version="le90")  # RResize to 1024
                ok = (r[:, 0] > 0) & (r[:, 0] < 1024) & (r[:, 1] > 0) & (r[:, 1] < 1024) & (r[:, 2] > 5) & (r[:, 3] > 5)
                filtered += int((~ok).sum())
                emptied += int(not bool(ok.any()))
        print(f"windows 1024/{gap} at rate {rate}: {windows} with objects, {objects} objects; removed by the > 5 px /"
              f" centre-inside filter (no rotation): {filtered} ({100 * filtered / max(1, objects):.1f} %); windows"
              f" left without objects (redrawn): {emptied}")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dota_devkit_example"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
