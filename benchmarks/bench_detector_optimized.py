"""Eager vs ``lsknet.optimize_for_inference`` Oriented R-CNN, interleaved in one process, with peak memory.

    PYTHONPATH=src python benchmarks/bench_detector_optimized.py --variants t s --size 1024 --threads 2 --repeats 3

Random weights (timing does not depend on them, but the number of proposals does not either: the RPN keeps
``nms_pre`` / ``max_per_img`` boxes per level whatever the weights). Each repeat runs every model once, in turn,
so load from other processes hits all alike; reported are medians and the median of per-repeat ratios. Peak
memory: the process's peak RSS growth during one forward, read from /proc/self/status (VmHWM, reset through
/proc/self/clear_refs where allowed, else reported as the process high-water mark).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from lsknet import optimize_for_inference
from lsknet.models.oriented_rcnn import build_oriented_rcnn


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _timed(fn) -> tuple[float, float]:
    """(seconds, peak RSS growth in MB) of one call."""
    _reset_peak()
    base = _rss_kb("VmRSS")
    t = time.perf_counter()
    fn()
    sec = time.perf_counter() - t
    return sec, max(0, _rss_kb("VmHWM") - base) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["t", "s"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8).float()
    models = {}
    for v in args.variants:
        eager = build_oriented_rcnn(v, num_classes=15).eval()
        models[f"{v} eager"] = eager
        models[f"{v} optimized"] = optimize_for_inference(eager)
    times: dict[str, list[float]] = {k: [] for k in models}
    peaks: dict[str, float] = {}
    with torch.inference_mode():
        for net in models.values():  # warm-up
            net([img])
        for _ in range(args.repeats):
            for name, net in models.items():
                sec, peak = _timed(lambda net=net: net([img]))
                times[name].append(sec)
                peaks[name] = max(peaks.get(name, 0.0), peak)
    rows = []
    for name in models:
        row = {"model": name, "median_ms": statistics.median(times[name]) * 1000, "peak_rss_mb": peaks[name]}
        v = name.split()[0]
        if name.endswith("optimized"):
            ratios = [a / b for a, b in zip(times[f"{v} eager"], times[name])]
            row["speedup_median_of_ratios"] = statistics.median(ratios)
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
