"""S2A-Net speed on one tile: whole-detector latency, backbone+FPN latency (their ratio is load-independent) and the
peak resident memory of the process, eager fp32, official test settings.

    OMP_NUM_THREADS=2 python benchmarks/bench_s2anet.py --variant t --size 1024 --repeat 3

The detector is randomly initialised; its ODM classifier keeps the official prior bias (score 0.01 < the 0.05
threshold), so, as with a trained detector on background, few boxes reach the NMS. Everything else (FAM, refined
anchors, AlignConv, ORConv, per-level top 2000, decoding) does the same work as for a trained model.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="t", choices=["t", "s"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lsknet.models.s2anet import build_s2anet

    torch.manual_seed(0)
    model = build_s2anet(f"lsknet_{args.variant}", num_classes=15).eval()
    image = torch.rand(3, args.size, args.size) * 255
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.no_grad():
        batch, _ = model.preprocess([image])
        model([image])  # warm-up
        whole = _median(lambda: model([image]), args.repeat)
        feats = _median(lambda: model.extract_feats(batch), args.repeat)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "model": f"lsknet_{args.variant}_s2anet",
        "size": args.size,
        "threads": torch.get_num_threads(),
        "whole_s": round(whole, 3),
        "backbone_fpn_s": round(feats, 3),
        "ratio": round(whole / feats, 3),
        "peak_rss_mb": round(peak),
        "rss_before_mb": round(rss_before),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
