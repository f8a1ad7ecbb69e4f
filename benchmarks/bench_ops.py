"""Rotated ops against their baselines, measured side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ops.py            # everything (~3-5 min on 1 core)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ops.py --quick    # smaller baselines, extrapolated

* IoU: 2000 x 2000 random rotated boxes (DOTA-like: 1024 px image, 8-150 px sides) with ``rbox_iou`` vs
  vectorised shapely 2 on all pairs (``shapely.intersection`` over the broadcast arrays) and vs shapely with an
  STRtree pre-filter (a stronger baseline); plus a dense case where every pair overlaps (no pre-filter helps).
* NMS: 5000 clustered detections of 15 classes, ``nms_rotated`` vs a greedy loop over shapely polygons (the
  same loop as the tests' oracle); the kept indices are compared.
* RoIAlignRotated: 2000 RoIs, 256 channels, 7x7 from a 256x256 map vs ``torchvision.ops.roi_align`` on the
  same RoIs made axis-aligned.
* Scaling: time and peak RSS of ``rbox_iou`` (N x N) and ``nms_rotated`` for N = 1k..8k, each in a fresh
  subprocess (peak RSS minus the RSS after importing torch).

Ratios are what counts: the machine is shared, absolute times are noisy. Median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import shapely
import torch
from torchvision.ops import roi_align

from lsknet.ops import nms_rotated, rbox_iou, rbox_to_corners, roi_align_rotated


def timeit(fn, repeat: int) -> float:
    """Median wall time; also records the median CPU time of this process in ``CPU_TIMES`` (less noisy on a
    shared machine, since time spent waiting for a core is not counted)."""
    walls, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    CPU_TIMES.append(statistics.median(cpus))
    return statistics.median(walls)


CPU_TIMES: list[float] = []


def last_cpu() -> float:
    return CPU_TIMES[-1]


def random_rboxes(n: int, seed: int, image: float = 1024.0, smin: float = 8.0, smax: float = 150.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g) * image
    wh = torch.rand(n, 2, generator=g) * (smax - smin) + smin
    t = (torch.rand(n, 1, generator=g) - 0.5) * math.pi
    return torch.cat([c, wh, t], 1)


def clustered_detections(n: int, n_cls: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    n_obj = n // 8
    centres = torch.rand(n_obj, 2, generator=g) * 1024
    base_wh = torch.rand(n_obj, 2, generator=g) * 80 + 8
    base_t = (torch.rand(n_obj, generator=g) - 0.5) * math.pi
    k = torch.randint(0, n_obj, (n,), generator=g)
    c = centres[k] + torch.randn(n, 2, generator=g) * 4
    wh = base_wh[k] * (1 + 0.15 * torch.randn(n, 2, generator=g)).clamp(0.5, 1.5)
    t = base_t[k] + 0.15 * torch.randn(n, generator=g)
    labels = torch.where(torch.rand(n, generator=g) < 0.8, k % n_cls, torch.randint(0, n_cls, (n,), generator=g))
    return torch.cat([c, wh, t[:, None]], 1), torch.rand(n, generator=g), labels


def shapely_polys(rb: torch.Tensor) -> np.ndarray:
    return shapely.polygons(rbox_to_corners(rb.double()).numpy())


def shapely_iou_all_pairs(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    inter = shapely.area(shapely.intersection(pa[:, None], pb[None, :]))
    union = shapely.area(pa)[:, None] + shapely.area(pb)[None, :] - inter
    return inter / union


def shapely_iou_strtree(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    tree = shapely.STRtree(pb)
    i, j = tree.query(pa, predicate="intersects")
    out = np.zeros((len(pa), len(pb)))
    inter = shapely.area(shapely.intersection(pa[i], pb[j]))
    out[i, j] = inter / (shapely.area(pa[i]) + shapely.area(pb[j]) - inter)
    return out


def shapely_greedy_nms(polys: np.ndarray, scores: np.ndarray, labels: np.ndarray, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    areas = shapely.area(polys)
    kept_by_class: dict[int, list[int]] = {}
    keep = []
    for i in order:
        kc = kept_by_class.setdefault(int(labels[i]), [])
        ok = True
        for k in kc:
            inter = shapely.area(shapely.intersection(polys[i], polys[k]))
            if inter / (areas[i] + areas[k] - inter) > thr:
                ok = False
                break
        if ok:
            kc.append(i)
            keep.append(i)
    return keep


def bench_iou(args, out: dict) -> None:
    n = 2000
    a, b = random_rboxes(n, 1), random_rboxes(n, 2)
    ours = timeit(lambda: rbox_iou(a, b), args.repeat)
    c_ours = last_cpu()
    pa, pb = shapely_polys(a), shapely_polys(b)
    rows = 200 if args.quick else n  # --quick: time shapely on 200 rows and scale linearly
    t_all = timeit(lambda: shapely_iou_all_pairs(pa[:rows], pb), 1) * n / rows
    c_all = last_cpu() * n / rows
    t_tree = timeit(lambda: shapely_iou_strtree(pa, pb), args.repeat)
    c_tree = last_cpu()
    err = np.abs(rbox_iou(a.double(), b.double()).numpy() - shapely_iou_strtree(pa, pb)).max()
    nz = float((rbox_iou(a, b) > 0).float().mean())
    out["iou_2000"] = dict(
        ours_s=ours, shapely_all_pairs_s=t_all, shapely_strtree_s=t_tree, overlapping_pairs=nz, max_abs_err=float(err)
    )
    out["iou_2000"].update(ours_cpu_s=c_ours, shapely_all_pairs_cpu_s=c_all, shapely_strtree_cpu_s=c_tree)
    print(
        f"IoU 2000x2000 (sparse, {nz:.2%} of pairs overlap): ours {ours:.3f}s | shapely all pairs {t_all:.2f}s "
        f"({t_all / ours:.0f}x){' [extrapolated from 200 rows]' if args.quick else ''} | shapely+STRtree "
        f"{t_tree:.2f}s ({t_tree / ours:.1f}x) | max |err| {err:.1e}"
    )
    # dense: 500 x 500 boxes in a 100 px square, every pair overlaps
    a, b = random_rboxes(500, 3, image=100.0, smin=60, smax=150), random_rboxes(500, 4, image=100.0, smin=60, smax=150)
    ours = timeit(lambda: rbox_iou(a, b), args.repeat)
    c_ours = last_cpu()
    pa, pb = shapely_polys(a), shapely_polys(b)
    t_all = timeit(lambda: shapely_iou_all_pairs(pa, pb), 1)
    c_all = last_cpu()
    nz = float((rbox_iou(a, b) > 0).float().mean())
    out["iou_500_dense"] = dict(ours_s=ours, shapely_all_pairs_s=t_all, overlapping_pairs=nz)
    print(
        f"IoU 500x500 (dense, {nz:.0%} overlap): ours {ours:.3f}s | shapely all pairs {t_all:.2f}s "
        f"({t_all / ours:.1f}x)"
    )


def bench_nms(args, out: dict) -> None:
    rb, sc, lab = clustered_detections(5000, 15, 5)
    thr = 0.1  # the DOTA test-time NMS threshold of the official Oriented R-CNN config
    ours = timeit(lambda: nms_rotated(rb, sc, thr, labels=lab), args.repeat)
    keep = nms_rotated(rb, sc, thr, labels=lab).tolist()
    polys = shapely_polys(rb)
    t0 = time.perf_counter()
    ref = shapely_greedy_nms(polys, sc.double().numpy(), lab.numpy(), thr)
    t_ref = time.perf_counter() - t0
    out["nms_5000"] = dict(ours_s=ours, shapely_greedy_s=t_ref, kept=len(keep), identical=keep == ref)
    print(
        f"NMS 5000 boxes / 15 classes (thr {thr}, kept {len(keep)}): ours {ours:.3f}s | shapely greedy "
        f"{t_ref:.2f}s ({t_ref / ours:.0f}x) | identical kept indices: {keep == ref}"
    )


def bench_roi_align(args, out: dict) -> None:
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(1, 256, 256, 256, generator=g)
    n = 2000
    c = torch.rand(n, 2, generator=g) * 1024
    wh = torch.rand(n, 2, generator=g) * 200 + 16
    t = (torch.rand(n, 1, generator=g) - 0.5) * math.pi
    zeros = torch.zeros(n, 1)
    rois = torch.cat([zeros, c, wh, t], 1)
    boxes = torch.cat([zeros, c - wh / 2, c + wh / 2], 1)
    res = {}
    for sr in (2, 0):
        ours = timeit(lambda sr=sr: roi_align_rotated(feats, rois, 7, 0.25, sr, True, True), args.repeat)
        tv = timeit(lambda sr=sr: roi_align(feats, boxes, 7, 0.25, sr, True), args.repeat)
        res[f"sampling_ratio_{sr}"] = dict(ours_s=ours, torchvision_s=tv, ratio=ours / tv)
        print(
            f"RoIAlignRotated 2000 RoIs x 256 ch x 7x7 from 256x256, sampling_ratio={sr}: ours {ours:.3f}s | "
            f"torchvision roi_align {tv:.3f}s | ours/torchvision = {ours / tv:.2f}"
        )
    f = feats.clone().requires_grad_(True)
    fwd_bwd = timeit(lambda: roi_align_rotated(f, rois, 7, 0.25, 2, True, True).sum().backward(), args.repeat)
    ft = feats.clone().requires_grad_(True)
    fwd_bwd_tv = timeit(lambda: roi_align(ft, boxes, 7, 0.25, 2, True).sum().backward(), args.repeat)
    res["forward_backward_sr2"] = dict(ours_s=fwd_bwd, torchvision_s=fwd_bwd_tv, ratio=fwd_bwd / fwd_bwd_tv)
    print(
        f"  forward+backward, sampling_ratio=2: ours {fwd_bwd:.3f}s | torchvision {fwd_bwd_tv:.3f}s | "
        f"ratio {fwd_bwd / fwd_bwd_tv:.2f}"
    )
    out["roi_align_rotated"] = res


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def child(kind: str, n: int) -> None:
    """One scaling point in a fresh process: prints JSON with the time and the peak RSS growth (a thread samples
    the resident set every millisecond while the op runs)."""
    import threading

    if kind == "iou":
        a, b = random_rboxes(n, 7), random_rboxes(n, 8)
        fn = lambda: rbox_iou(a, b)  # noqa: E731
    else:
        rb, sc, lab = clustered_detections(n, 15, 9)
        fn = lambda: nms_rotated(rb, sc, 0.1, labels=lab)  # noqa: E731
    base, peak, stop = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    secs = timeit(fn, 1)
    stop.set()
    th.join()
    print(json.dumps(dict(seconds=secs, cpu_seconds=last_cpu(), peak_rss_growth_mb=max(0.0, peak[0] - base))))


def bench_scaling(args, out: dict) -> None:
    res = {}
    for kind in ("iou", "nms"):
        for n in (1000, 2000, 4000, 8000):
            cmd = [sys.executable, __file__, "--child", kind, str(n)]
            r = json.loads(
                subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            )
            res[f"{kind}_{n}"] = r
            print(
                f"  {kind:3s} N={n:5d}: {r['seconds']:.3f}s (CPU {r['cpu_seconds']:.3f}s), "
                f"peak RSS growth {r['peak_rss_growth_mb']:.0f} MB"
            )
    out["scaling"] = res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="time the all-pairs shapely baseline on 200 rows only")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", choices=["iou", "nms", "roi", "scaling"], nargs="*")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    print(f"torch {torch.__version__}, shapely {shapely.__version__}, threads {torch.get_num_threads()}, device cpu")
    out: dict = {}
    todo = args.only or ["iou", "nms", "roi", "scaling"]
    if "iou" in todo:
        bench_iou(args, out)
    if "nms" in todo:
        bench_nms(args, out)
    if "roi" in todo:
        bench_roi_align(args, out)
    if "scaling" in todo:
        print("Scaling (fresh process per point):")
        bench_scaling(args, out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
