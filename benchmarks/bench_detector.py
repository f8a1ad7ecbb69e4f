"""Oriented R-CNN inference speed: eager vs ``lsknet.optimize_for_inference`` vs onnxruntime for LSKNet-T/S, with
peak memory, and Ultralytics YOLO11n/s/m-obb raw forwards as a reference, all in one process, interleaved.

    python benchmarks/bench_detector.py --variants t --size 1024 --threads 2 --repeats 3           # README numbers
    python benchmarks/bench_detector.py --variants t s --runtimes torch optimized onnxruntime --json out.json
    python benchmarks/bench_detector.py --variants t --runtimes torch --yolo --train-sizes 1024 512  # + training

Models: random weights with spread RPN / class scores (:func:`lsknet.inference.runtime_bench.build_runner`, a trained
model's workload: 2000 proposals, a few thousand NMS candidates), one ``size`` x ``size`` image, batch 1. YOLO11-obb
(only when ``ultralytics`` is importable; measurement only, nothing of it is used by the library): built from
``yolo11{n,s,m}-obb.yaml`` with random weights, Conv+BN fused as Ultralytics' predictor does, raw ``model(x)`` on a
0..1 tensor (box decoding included, no NMS, no pre-processing). Each repeat runs every model once, in turn, so load
from other processes hits all alike; reported are medians and, against the eager LSKNet-T, the median of per-repeat
ratios; also process CPU time (all threads), which other jobs on a shared machine disturb less. Peak memory: each
model once more in a child process, ``VmHWM`` minus ``VmRSS`` before its first forward.
``--train-sizes``: training iterations per second of the eager detector (batch ``--train-batch``), in child processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RUNTIMES = ("torch", "optimized", "onnxruntime")
YOLO = ("n", "s", "m")


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _yolo(scale: str):
    from ultralytics.nn.tasks import OBBModel

    torch.manual_seed(0)
    model = OBBModel(f"yolo11{scale}-obb.yaml", nc=15, verbose=False).eval()
    model.fuse(verbose=False)
    return lambda x: model(x / 255.0)


def _runners(args: argparse.Namespace, names: list[str], workdir: Path, onnx: dict[str, str]) -> dict:
    from lsknet.inference.runtime_bench import build_runner

    out = {}
    for name in names:
        if name.startswith("yolo11"):
            out[name] = _yolo(name[6])
            continue
        variant, runtime = name.split(" ")
        onnx_file = onnx.get(variant) if runtime == "onnxruntime" else None
        out[name] = build_runner(runtime, variant, args.size, 1, True, workdir, args.threads, onnx_file=onnx_file)
    return out


def _memory_child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        onnx = {args.memory_child.split(" ")[0]: args.onnx} if args.onnx else {}
        run = _runners(args, [args.memory_child], Path(tmp), onnx)[args.memory_child]
        x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 255
        base = _status_mb("VmRSS")
        run(x)
        print(json.dumps({"peak_rss_mb": _status_mb("VmHWM"), "peak_above_start_mb": _status_mb("VmHWM") - base}))


def _train_child(args: argparse.Namespace) -> None:
    from lsknet.models.oriented_rcnn import build_oriented_rcnn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_oriented_rcnn(f"lsknet_{args.train_child}", num_classes=15).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    out = {}
    for size in args.train_sizes:
        images = [torch.rand(3, size, size, generator=gen) * 255 for _ in range(args.train_batch)]
        targets = []
        for _ in images:
            xy = torch.rand(30, 2, generator=gen) * (size - 100) + 50
            wh = torch.rand(30, 2, generator=gen) * 60 + 12
            wh = torch.stack([wh.max(1).values, wh.min(1).values], 1)
            theta = (torch.rand(30, 1, generator=gen) - 0.5) * torch.pi * 0.999
            labels = torch.randint(0, 15, (30,), generator=gen)
            targets.append({"rboxes": torch.cat([xy, wh, theta], 1), "labels": labels})

        def step(images=images, targets=targets):
            losses = model(images, targets)
            loss = sum(v for k, v in losses.items() if k.startswith("loss"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step()  # warm-up
        times = []
        for _ in range(args.train_repeat):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        out[f"train_it_per_s_{size}"] = round(1.0 / statistics.median(times), 4)
    print(json.dumps(out))


def _child(args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--size", str(args.size), "--threads", str(args.threads), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["t", "s"], choices=["t", "s"])
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--size", type=int, default=1024, help="image side (px)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-yolo", action="store_true", help="skip the YOLO11-obb reference rows")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--train-sizes", type=int, nargs="*", default=[], help="also time training at these sizes")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-repeat", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    parser.add_argument("--train-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return _memory_child(args)
    if args.train_child:
        return _train_child(args)
    torch.set_num_threads(args.threads)
    names = [f"lsknet_{v} {r}" for v in args.variants for r in args.runtimes]
    if not args.no_yolo:
        try:
            import ultralytics  # noqa: F401
        except ImportError:
            print("ultralytics is not installed: no YOLO11-obb reference rows", file=sys.stderr)
        else:
            names += [f"yolo11{s}-obb" for s in YOLO]
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 255
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}  # process CPU time: less sensitive to other jobs' load
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        runners = _runners(args, names, Path(tmp), {})
        onnx = {n.split(" ")[0]: str(p) for n, r in runners.items() if (p := getattr(r, "path", None))}
        for run in runners.values():  # warm-up
            run(x)
        for _ in range(args.repeats):
            for name, run in runners.items():
                t0, c0 = time.perf_counter(), time.process_time()
                run(x)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        memory = {}
        if not args.no_memory:
            for name in names:
                extra = ["--memory-child", name]
                if name.endswith("onnxruntime") and name.split(" ")[0] in onnx:
                    extra += ["--onnx", onnx[name.split(" ")[0]]]  # the export made above, not a second one
                memory[name] = _child(args, extra)
    ref = names[0]
    rows = []
    for name in names:
        row = {"model": name, "median_ms": round(statistics.median(times[name]) * 1000, 1)}
        ratios = [a / b for a, b in zip(times[ref], times[name])]
        row["speedup_vs_" + ref.replace(" ", "_")] = round(statistics.median(ratios), 3)
        row["median_cpu_ms"] = round(statistics.median(cpu[name]) * 1000, 1)
        row["cpu_speedup"] = round(statistics.median(a / b for a, b in zip(cpu[ref], cpu[name])), 3)
        row.update(memory.get(name, {}))
        rows.append(row)
        print(json.dumps(row), flush=True)
    train = {}
    for v in args.variants if args.train_sizes else []:
        extra = ["--train-child", v, "--train-sizes", *map(str, args.train_sizes)]
        extra += ["--train-batch", str(args.train_batch), "--train-repeat", str(args.train_repeat)]
        train[f"lsknet_{v}"] = _child(args, extra)
    for v, r in train.items():
        print(json.dumps({"model": v, **r}))
    info = {"command": " ".join(sys.argv), "load_average": os.getloadavg(), "rows": rows, "train": train}
    if args.json:
        args.json.write_text(json.dumps(info, indent=1))
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
