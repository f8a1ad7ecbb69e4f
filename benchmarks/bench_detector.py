"""Oriented R-CNN speed: inference on one tile (total detector time / backbone+FPN time, latency, peak memory)
and training iterations per second, for LSKNet-T and LSKNet-S, measured side by side in one run.

    python benchmarks/bench_detector.py                       # T and S, 1024 tile, training at 1024 and 512
    python benchmarks/bench_detector.py --variants t --size 512 --train-sizes 512 --repeat 3 --json out.json

Each variant runs in a child process so its peak resident memory (CPU) is its own; on CUDA the peak allocated
memory is reported instead. The detector is randomly initialised except for the classifier bias, which is set so
the background class wins (as in a trained model): otherwise every one of the 2000 RoIs passes the 0.05 score
threshold for every class and the benchmark would time a 30000-box NMS no trained model produces. The RPN and
RoI work (2000 proposals per image, official test settings) is the same as for a trained model.
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, repeat: int, device: torch.device) -> float:
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _targets(size: int, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    xy = torch.rand(n, 2, generator=gen) * (size - 100) + 50
    wh = torch.rand(n, 2, generator=gen) * 60 + 12
    wh = torch.stack([wh.max(1).values, wh.min(1).values], 1)
    theta = (torch.rand(n, 1, generator=gen) - 0.5) * torch.pi * 0.999
    return {"rboxes": torch.cat([xy, wh, theta], 1), "labels": torch.randint(0, 15, (n,), generator=gen)}


def child(args: argparse.Namespace) -> dict:
    from lsknet.models.oriented_rcnn import build_oriented_rcnn

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_oriented_rcnn(f"lsknet_{args.variant}", num_classes=15).to(device)
    with torch.no_grad():
        model.roi_head.bbox_head.fc_cls.bias[-1] = 6.0  # background wins, as in a trained detector
    out: dict = {"variant": f"lsknet_{args.variant}", "device": str(device), "threads": torch.get_num_threads()}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.eval()
    image = [torch.rand(3, args.size, args.size, device=device) * 255]
    with torch.no_grad():
        batch, _ = model.preprocess(image)
        model(image)  # warm-up
        t_feats = _median_time(lambda: model.extract_feats(batch), args.repeat, device)
        t_total = _median_time(lambda: model(image), args.repeat, device)
        dets = model(image)[0]["scores"].numel()
    out.update(
        size=args.size,
        backbone_fpn_s=round(t_feats, 4),
        total_s=round(t_total, 4),
        ratio_total_over_backbone_fpn=round(t_total / t_feats, 3),
        detections=dets,
    )
    if device.type == "cuda":
        out["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        out["rss_before_inference_mb"] = round(rss_before, 1)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    for size in args.train_sizes:
        images = [torch.rand(3, size, size, device=device) * 255 for _ in range(args.train_batch)]
        targets = [{k: v.to(device) for k, v in _targets(size, 30, gen).items()} for _ in images]

        def step(images=images, targets=targets):
            losses = model(images, targets)
            loss = sum(v for k, v in losses.items() if k.startswith("loss"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step()  # warm-up
        t = _median_time(step, max(1, args.train_repeat), device)
        out[f"train_it_per_s_{size}"] = round(1.0 / t, 4)
        out[f"train_s_per_it_{size}"] = round(t, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["t", "s"], choices=["t", "s"])
    parser.add_argument("--size", type=int, default=1024, help="inference tile side (px)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--train-sizes", type=int, nargs="*", default=[1024, 512])
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-repeat", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="t", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--child", "--variant", variant, "--size", str(args.size)]
        cmd += ["--repeat", str(args.repeat), "--device", args.device, "--train-batch", str(args.train_batch)]
        cmd += ["--train-repeat", str(args.train_repeat), "--train-sizes", *map(str, args.train_sizes)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = results[-1]
        mem = r.get("peak_mem_mb", r.get("peak_rss_mb"))
        train = ", ".join(f"{s}px {r[f'train_it_per_s_{s}']:.3f} it/s" for s in args.train_sizes)
        print(
            f"{r['variant']} ({r['device']}, {r['threads']} threads): {args.size}px tile total {r['total_s']:.3f} s, "
            f"backbone+FPN {r['backbone_fpn_s']:.3f} s, ratio {r['ratio_total_over_backbone_fpn']:.2f}; "
            f"peak memory {mem} MB; training (batch {args.train_batch}) {train}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"command": " ".join(sys.argv), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
