"""Exact rotated NMS (``lsknet.ops.nms_rotated``) against Ultralytics' approximate probIoU NMS, interleaved in one run.

    PYTHONPATH=src python benchmarks/bench_nms.py --threads 2 --repeat 7                 # all cases
    PYTHONPATH=src python benchmarks/bench_nms.py --before 6c84c0e --detector            # + an older nms.py, the
                                                                                         #   real detector case
    PYTHONPATH=src python benchmarks/bench_nms.py --before e46cdb9 --iou --only rbox_iou  # rbox_iou vs an older iou.py

Cases (scores uniform random, boxes (cx, cy, w, h, theta) float32):

* ``dense500 cC tT``: 500 boxes jittered around C objects (5, 10 or 20) in a 200 px square (sides 10-90 px, centre
  jitter 15 % of the side, side jitter 15 %, angle jitter 0.15 rad), one class, IoU threshold T (0.1 is the
  Oriented R-CNN test threshold, 0.7 Ultralytics' default).
* ``sparse2000``: 2000 DOTA-like random boxes in a 1024 px image (sides 8-150 px), one class, IoU 0.1.
* ``clustered5000``: 5000 clustered detections of 15 classes (as ``bench_ops.py``), IoU 0.1.
* ``detector`` (``--detector``): the candidates that LSKNet-T Oriented R-CNN's test path (random weights, one
  1024 x 1024 image, score_thr 0.05, 2000 RoIs x 15 classes) hands to class-wise NMS at IoU 0.1, captured once.
* ``rbox_iou`` (``--iou``, needs ``--before``): ``rbox_iou`` on 2000 x 2000 DOTA-like boxes and on 2000 proposals
  x 60 ground-truth boxes (an assigner's call) against ``src/lsknet/ops/iou.py`` at REV (max difference reported).

Baselines, timed in the same process in turn with ours (each repeat runs every method once, so load from other
processes hits all alike): Ultralytics' ``TorchNMS.fast_nms`` with ``batch_probiou`` (what ``non_max_suppression``
runs for OBB models, classes offset by 7680 px; approximate: it keeps different boxes) when ``ultralytics`` is
installed (measurement only, never a dependency; skipped for the 22k-box detector case, whose probIoU matrix
would need ~10 GB), and ``--before REV``: ``src/lsknet/ops/nms.py`` as it was at git revision REV. Every case checks
that ours keeps exactly the boxes of a textbook greedy loop over shapely polygons (``bench_ops.shapely_greedy_nms``;
skipped above 6000 boxes) and reports whether REV agrees. Reported: medians of wall time, and the median of the
per-repeat ratios ours / probIoU (and REV / probIoU) of wall and of process CPU time (ratios are what counts on a
shared machine).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from lsknet.ops import nms_rotated, rbox_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ops import clustered_detections, random_rboxes, shapely_greedy_nms, shapely_polys  # noqa: E402

_ULTRA_MAX_WH = 7680.0  # Ultralytics' class offset (pixels) in non_max_suppression


def dense_cluster(n: int, n_objects: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` detections jittered around ``n_objects`` objects in a 200 px square; (rboxes, scores)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_objects, 2, generator=g) * 200
    base_wh = torch.rand(n_objects, 2, generator=g) * 80 + 10
    base_t = (torch.rand(n_objects, generator=g) - 0.5) * math.pi
    k = torch.randint(0, n_objects, (n,), generator=g)
    c = centres[k] + torch.randn(n, 2, generator=g) * 0.15 * base_wh[k]
    wh = base_wh[k] * (1 + 0.15 * torch.randn(n, 2, generator=g)).clamp(0.5, 1.5)
    t = base_t[k] + 0.15 * torch.randn(n, generator=g)
    return torch.cat([c, wh, t[:, None]], 1), torch.rand(n, generator=g)


def detector_case() -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor, int | None]:
    """The class-wise NMS input of LSKNet-T Oriented R-CNN's test path on one random 1024 x 1024 image."""
    import lsknet.ops.multiclass_nms as mc
    from lsknet.models.oriented_rcnn import build_oriented_rcnn

    seen = []
    real = mc.nms_rotated

    def spy(*args, **kwargs):
        seen.append((args, kwargs))
        return real(*args, **kwargs)

    torch.manual_seed(0)
    net = build_oriented_rcnn("t", num_classes=15).eval()
    img = torch.randint(0, 256, (3, 1024, 1024), dtype=torch.uint8).float()
    mc.nms_rotated = spy
    try:
        with torch.inference_mode():
            net([img])
    finally:
        mc.nms_rotated = real
    (rb, sc, thr), kw = seen[0][0][:3], seen[0][1]
    return rb, sc, float(thr), kw["labels"], kw.get("max_dets")


def load_before(rev: str, name: str = "nms"):
    """``src/lsknet/ops/{name}.py`` at git revision ``rev`` as a module (imports today's other modules)."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(
        ["git", "show", f"{rev}:src/lsknet/ops/{name}.py"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    mod = types.ModuleType(f"{name}_{rev}")
    exec(compile(src, f"{rev}:{name}.py", "exec"), mod.__dict__)  # noqa: S102 (our own file from git)
    return mod


def bench_iou(rev: str, repeat: int) -> list[dict]:
    """``rbox_iou`` now vs at ``rev``, interleaved; one JSON line (and row) per case."""
    old = load_before(rev, "iou").rbox_iou
    g = torch.Generator().manual_seed(3)
    props = torch.cat([torch.rand(2000, 2, generator=g) * 1024, torch.rand(2000, 2, generator=g) * 100 + 5,
                       torch.rand(2000, 1, generator=g)], 1)
    cases = {"rbox_iou 2000x2000": (random_rboxes(2000, 1), random_rboxes(2000, 2)),
             "rbox_iou 2000 proposals x 60 gt": (props, props[:60] + torch.randn(60, 5, generator=g))}
    rows = []
    for name, (a, b) in cases.items():
        fns = {"lsknet": lambda: rbox_iou(a, b), "before": lambda: old(a, b)}  # noqa: B023 (called in this loop)
        times: dict[str, list[float]] = {m: [] for m in fns}
        for _ in range(repeat + 1):  # the first round warms up
            for m, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[m].append(time.perf_counter() - t)
        row = {"case": name, "pairs": a.shape[0] * b.shape[0], "nonzero": int((rbox_iou(a, b) > 0).sum())}
        row |= {f"{m}_ms": statistics.median(v[1:]) * 1e3 for m, v in times.items()}
        row["speedup_vs_before"] = statistics.median(o / n for n, o in zip(times["lsknet"][1:], times["before"][1:]))
        row["max_abs_diff"] = float((rbox_iou(a, b) - old(a, b)).abs().max())
        print(json.dumps({k: round(v, 2) if isinstance(v, float) and k != "max_abs_diff" else v
                          for k, v in row.items()}), flush=True)
        rows.append(row)
    return rows


def probiou_nms():
    try:
        from ultralytics.utils.nms import TorchNMS, batch_probiou
    except ImportError:
        return None

    def run(rb: torch.Tensor, sc: torch.Tensor, thr: float, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is not None:
            rb = torch.cat([rb[:, :2] + labels[:, None].to(rb.dtype) * _ULTRA_MAX_WH, rb[:, 2:]], 1)
        return TorchNMS.fast_nms(rb, sc, thr, iou_func=batch_probiou)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--before", default=None, help="git revision whose nms.py is timed too")
    parser.add_argument("--detector", action="store_true", help="add the captured detector case (~15-60 s)")
    parser.add_argument("--iou", action="store_true", help="add rbox_iou now vs at --before")
    parser.add_argument("--only", nargs="*", help="case name prefixes")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases: dict[str, tuple] = {}
    for thr in (0.1, 0.5, 0.7):
        for n_obj in (5, 10, 20):
            cases[f"dense500 c{n_obj} t{thr}"] = (*dense_cluster(500, n_obj, seed=n_obj), thr, None, None)
    cases["sparse2000 t0.1"] = (random_rboxes(2000, 1), torch.rand(2000, generator=torch.Generator().manual_seed(1)))
    cases["sparse2000 t0.1"] += (0.1, None, None)
    rb, sc, lab = clustered_detections(5000, 15, 5)
    cases["clustered5000 t0.1"] = (rb, sc, 0.1, lab, None)
    if args.detector:
        cases["detector t0.1"] = detector_case()
    if args.only:
        cases = {k: v for k, v in cases.items() if any(k.startswith(p) for p in args.only)}
    methods = {"lsknet": nms_rotated}
    if args.before:
        methods["before"] = load_before(args.before).nms_rotated
    probiou = probiou_nms()
    load0 = os.getloadavg()
    print(f"threads {args.threads}, repeats {args.repeat}, load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}")
    rows = []
    for name, (rb, sc, thr, lab, max_dets) in cases.items():
        inputs = (rb, sc, thr)
        fns = {m: functools.partial(f, *inputs, labels=lab, max_dets=max_dets) for m, f in methods.items()}
        if probiou is not None and rb.shape[0] <= 6000:
            fns["probiou"] = functools.partial(probiou, *inputs, lab)
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {m: [] for m in fns}
        cpu: dict[str, list[float]] = {m: [] for m in fns}
        for _ in range(args.repeat):
            for m, fn in fns.items():
                t, c = time.perf_counter(), time.process_time()
                fn()
                times[m].append(time.perf_counter() - t)
                cpu[m].append(time.process_time() - c)
        keep = fns["lsknet"]().tolist()
        row = {"case": name, "boxes": rb.shape[0], "kept": len(keep)}
        row |= {f"{m}_ms": statistics.median(v) * 1e3 for m, v in times.items()}
        if "probiou" in fns:
            row["ratio_vs_probiou"] = statistics.median(a / b for a, b in zip(times["lsknet"], times["probiou"]))
            row["cpu_ratio_vs_probiou"] = statistics.median(a / b for a, b in zip(cpu["lsknet"], cpu["probiou"]))
            row["probiou_kept"] = len(fns["probiou"]())
        if "before" in fns and "probiou" in fns:
            row["before_ratio_vs_probiou"] = statistics.median(a / b for a, b in zip(times["before"], times["probiou"]))
            row["before_cpu_ratio_vs_probiou"] = statistics.median(a / b for a, b in zip(cpu["before"], cpu["probiou"]))
        if "before" in fns:
            row["speedup_vs_before"] = statistics.median(b / a for a, b in zip(times["lsknet"], times["before"]))
            row["before_identical"] = fns["before"]().tolist() == keep
        if rb.shape[0] <= 6000:
            labels = lab.numpy() if lab is not None else [0] * rb.shape[0]
            row["shapely_identical"] = shapely_greedy_nms(shapely_polys(rb), sc.double().numpy(), labels, thr) == keep
        rows.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.iou and args.before and (not args.only or any("rbox_iou".startswith(p) for p in args.only)):
        rows += bench_iou(args.before, args.repeat)
    load1 = os.getloadavg()
    print(f"load average at the end {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
