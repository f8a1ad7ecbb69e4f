"""Benchmark: lsknet's DOTA Task1 evaluation vs a straightforward numpy + shapely per-detection loop.

The baseline follows DOTA_devkit's ``voc_eval`` (sort by score; per detection: numpy envelope pre-filter over
the image's objects of the class, exact polygon IoU of the survivors, greedy VOC matching with difficult
ignored) with shapely in place of the compiled ``polyiou``. Both must give identical per-class AP.

    python benchmarks/bench_dota_eval.py                 # 100k detections, 450 images, 15 classes
    python benchmarks/bench_dota_eval.py --dets 20000    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from lsknet.data.dota import DOTA_V1_CLASSES, DOTAAnnotation, Task1Detections
from lsknet.evaluation.dota import average_precision, evaluate_dota


def _rect(cx, cy, w, h, a):
    c, s = np.cos(a), np.sin(a)
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return local @ np.array([[c, s], [-s, c]]) + [cx, cy]


def make_data(num_images: int, num_dets: int, seed: int = 0):
    """Random DOTA-like scenes: skewed class frequencies (many small vehicles), noisy detections + false alarms."""
    rng = np.random.default_rng(seed)
    classes = DOTA_V1_CLASSES
    freq = np.array([3, 1, 1, 1, 12, 8, 10, 2, 1, 4, 1, 1, 2, 2, 1], dtype=np.float64)
    freq /= freq.sum()
    gt: dict[str, DOTAAnnotation] = {}
    for i in range(num_images):
        n = int(rng.integers(20, 80))
        labels = rng.choice(len(classes), n, p=freq)
        polys = np.stack(
            [
                _rect(*rng.uniform(0, 1024, 2), rng.uniform(10, 80), rng.uniform(6, 30), rng.uniform(0, np.pi))
                for _ in range(n)
            ]
        )
        gt[f"P{i:04d}"] = DOTAAnnotation(polys, [classes[k] for k in labels], (rng.random(n) < 0.1).astype(np.int64))
    rows: dict[str, list] = {c: [] for c in classes}
    ids = list(gt)
    total = 0
    while total < num_dets:
        image_id = ids[int(rng.integers(len(ids)))]
        ann = gt[image_id]
        if rng.random() < 0.5 and len(ann):
            j = int(rng.integers(len(ann)))
            centre = ann.polys[j].mean(0)
            a = rng.normal(0, 0.05)
            rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
            quad = (ann.polys[j] - centre) @ rot * rng.uniform(0.9, 1.1) + centre + rng.normal(0, 2.0, 2)
            name = ann.names[j]
        else:
            quad = _rect(*rng.uniform(0, 1024, 2), rng.uniform(10, 80), rng.uniform(6, 30), rng.uniform(0, np.pi))
            name = classes[int(rng.choice(len(classes), p=freq))]
        rows[name].append((image_id, float(rng.random()), quad))
        total += 1
    dets = {
        c: Task1Detections(
            np.array([r[0] for r in v], dtype=object), np.array([r[1] for r in v]), np.stack([r[2] for r in v])
        )
        for c, v in rows.items()
        if v
    }
    return gt, dets


def baseline_eval(dets, gt, classes, iou_thr=0.5):
    """Per-detection loop, DOTA_devkit semantics, numpy + shapely."""
    from shapely.geometry import Polygon

    aps = {}
    for name in classes:
        recs, npos = {}, 0
        for image_id, ann in gt.items():
            sel = [i for i, n in enumerate(ann.names) if n == name]
            diff = ann.difficult[sel] > 0
            recs[image_id] = {"bbox": ann.polys[sel].reshape(-1, 8), "difficult": diff, "det": [False] * len(sel)}
            npos += int((~diff).sum())
        d = dets.get(name)
        if d is None or npos == 0:
            aps[name] = None if npos == 0 else 0.0
            continue
        order = np.argsort(-d.scores, kind="stable")
        bbs = d.polys.reshape(-1, 8)[order]
        image_ids = d.image_ids[order]
        nd = len(order)
        tp, fp = np.zeros(nd), np.zeros(nd)
        for k in range(nd):
            r = recs[image_ids[k]]
            bb = bbs[k]
            ovmax, jmax = -np.inf, -1
            g = r["bbox"]
            if g.size > 0:
                gx0, gy0 = g[:, 0::2].min(1), g[:, 1::2].min(1)
                gx1, gy1 = g[:, 0::2].max(1), g[:, 1::2].max(1)
                bx0, by0, bx1, by1 = bb[0::2].min(), bb[1::2].min(), bb[0::2].max(), bb[1::2].max()
                iw = np.maximum(np.minimum(gx1, bx1) - np.maximum(gx0, bx0) + 1.0, 0.0)
                ih = np.maximum(np.minimum(gy1, by1) - np.maximum(gy0, by0) + 1.0, 0.0)
                keep = np.nonzero(iw * ih > 0)[0]
                if len(keep):
                    pb = Polygon(bb.reshape(4, 2))
                    ovs = []
                    for j in keep:
                        pg = Polygon(g[j].reshape(4, 2))
                        inter = pb.intersection(pg).area
                        ovs.append(inter / (pb.area + pg.area - inter))
                    ovmax = max(ovs)
                    jmax = int(keep[int(np.argmax(ovs))])
            if ovmax > iou_thr:
                if not r["difficult"][jmax]:
                    if not r["det"][jmax]:
                        tp[k] = 1
                        r["det"][jmax] = True
                    else:
                        fp[k] = 1
            else:
                fp[k] = 1
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        aps[name] = average_precision(ctp / npos, ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps), "voc07")
    return aps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=450)
    parser.add_argument("--dets", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of lsknet (best is reported)")
    args = parser.parse_args()
    gt, dets = make_data(args.images, args.dets)
    evaluate_dota(dets, gt, DOTA_V1_CLASSES, coco=False)  # warm-up (imports, allocator)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ours = evaluate_dota(dets, gt, DOTA_V1_CLASSES, coco=False)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = baseline_eval(dets, gt, DOTA_V1_CLASSES)
    t_base = time.perf_counter() - t0
    max_diff = max(abs((ours.per_class[c] or 0.0) - (ref[c] or 0.0)) for c in DOTA_V1_CLASSES)
    same_none = all((ours.per_class[c] is None) == (ref[c] is None) for c in DOTA_V1_CLASSES)
    print(
        json.dumps(
            {
                "images": args.images,
                "detections": sum(len(d) for d in dets.values()),
                "gt_objects": sum(len(a) for a in gt.values()),
                "lsknet_s": round(min(times), 3),
                "baseline_s": round(t_base, 3),
                "speedup": round(t_base / min(times), 1),
                "mAP": round(ours.mAP, 6),
                "max_ap_diff": max_diff,
                "identical_ap": bool(max_diff == 0.0 and same_none),
                "torch_threads": torch.get_num_threads(),
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            }
        )
    )


if __name__ == "__main__":
    main()
