"""Inference latency and peak memory of detector families (``lsknet_t_r3det``, ``lsknet_t_orcnn``, ...) on one
square tile, eager mode, each model in its own child process (so the peak resident memory is its own), children
interleaved over ``--rounds`` so a changing machine load hits every model alike.

    python benchmarks/bench_detector_families.py                                  # R3Det vs Oriented R-CNN, T, 1024
    python benchmarks/bench_detector_families.py --models lsknet_t_r3det --size 512 --threads 2 --repeat 3

Weights are random. The softmax classifiers' (``fc_cls``: Oriented R-CNN, both RoI Transformer stages) background bias
is set so the background wins (as in a trained model; otherwise all 2000 RoIs pass the score threshold for every
class). The dense heads keep their official prior bias (class probability 0.01 < the 0.05 score threshold), so, as
for a trained model on an empty tile, NMS has little to do.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def child(args: argparse.Namespace) -> dict:
    from lsknet.models.detectors import build_detector

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_detector(args.model, num_classes=15).eval()
    with torch.no_grad():  # every softmax classifier (Oriented R-CNN's, both RoI Transformer stages')
        for name, module in model.named_modules():
            if name.split(".")[-1] == "fc_cls" and isinstance(module, torch.nn.Linear):
                module.bias[-1] = 6.0
    image = [torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(1)) * 255]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    with torch.no_grad():
        model(image)  # warm-up
        for _ in range(args.repeat):
            start = time.perf_counter()
            dets = model(image)[0]["scores"].numel()
            times.append(time.perf_counter() - start)
    return {
        "model": args.model,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "latency_s": round(statistics.median(times), 3),
        "latency_min_s": round(min(times), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_inference_mb": round(rss_before, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "detections": dets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lsknet_t_r3det", "lsknet_t_orcnn"])
    parser.add_argument("--size", type=int, default=1024, help="tile side (px)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per child (median reported)")
    parser.add_argument("--rounds", type=int, default=2, help="child processes per model, interleaved")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results: dict[str, list[dict]] = {m: [] for m in args.models}
    for _ in range(args.rounds):
        for model in args.models:
            cmd = [sys.executable, __file__, "--child", "--model", model, "--size", str(args.size)]
            cmd += ["--threads", str(args.threads), "--repeat", str(args.repeat)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[model].append(json.loads(out.strip().splitlines()[-1]))
            r = results[model][-1]
            print(f"{model}: {args.size}px, {r['threads']} threads: median {r['latency_s']:.3f} s "
                  f"(min {r['latency_min_s']:.3f}), peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    for model, runs in results.items():
        lat = statistics.median(r["latency_s"] for r in runs)
        mem = max(r["peak_rss_mb"] for r in runs)
        print(f"SUMMARY {model}: latency {lat:.3f} s (median of {len(runs)} children), peak RSS {mem:.0f} MB")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"command": " ".join(sys.argv), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
