"""eager PyTorch vs optimize_for_inference vs onnxruntime: latency and peak memory, in one run.

Every measurement runs in a fresh child process (so its peak RSS belongs to one runtime alone); the children of a
configuration are run in rotating order over ``--rounds`` rounds, so load from other processes on a shared machine
hits every runtime alike. Reported: median latency per runtime, its ratio to eager torch (> 1 = faster), peak RSS
of the child and the peak above the child's RSS after imports.

    python benchmarks/bench_runtimes.py --out bench_runtimes.json            # the BENCHMARKS.md table
    python benchmarks/bench_runtimes.py --configs lsknet_t:224 --threads 1    # a quick look
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

DEFAULT_CONFIGS = ["lsknet_t:224", "lsknet_s:224", "lsknet_t:1024", "lsknet_s:1024", "lsknet_t_orcnn:1024"]


def _status_mb(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MiB (per address space: a fork's parent and a
    re-exec do not leak into it, unlike ``ru_maxrss``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from lsknet.inference.runtime_bench import build_runner

    detector = args.name.endswith("_orcnn")
    name = args.name.removesuffix("_orcnn")
    base = _status_mb("VmRSS")
    with torch.inference_mode():
        run = build_runner(args.runtime, name, args.size, 1, detector, Path("."), args.threads, args.onnx or None)
        x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        x = x * 255.0 if detector else x
        run(x)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run(x)
            times.append((time.perf_counter() - t0) * 1000)
    peak = _status_mb("VmHWM")
    print(json.dumps({"ms": times, "peak_rss_mb": peak, "base_rss_mb": base}))


def export_all(configs: list[str], workdir: Path) -> dict[str, str]:
    import torch

    from lsknet.inference.runtime_bench import build_runner

    files = {}
    for name in sorted({c.split(":")[0] for c in configs}):
        detector = name.endswith("_orcnn")
        runtime = build_runner("onnxruntime", name.removesuffix("_orcnn"), 256, 1, detector, workdir, 1)
        files[name] = str(runtime.path)
        del runtime
        torch.manual_seed(0)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="NAME:SIZE (NAME lsknet_t[_orcnn])")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2, help="rotations of the runtime order per configuration")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per child (after one warm-up)")
    parser.add_argument("--out", help="write all results to this JSON file")
    parser.add_argument("--child", nargs=3, metavar=("RUNTIME", "NAME", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        runtime, name, size = args.child
        child(
            argparse.Namespace(
                runtime=runtime, name=name, size=int(size), threads=args.child_threads, repeats=args.repeats,
                onnx=args.onnx,
            )  # fmt: skip
        )
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = export_all(args.configs, Path(tmp))
        for config in args.configs:
            name, size = config.split(":")
            runtimes = ["torch", "onnxruntime"] if name.endswith("_orcnn") else ["torch", "optimized", "onnxruntime"]
            for threads in args.threads:
                results: dict[str, dict] = {r: {"ms": [], "peak": [], "above": []} for r in runtimes}
                for rnd in range(args.rounds):
                    order = runtimes[rnd % len(runtimes) :] + runtimes[: rnd % len(runtimes)]
                    for runtime in order:
                        cmd = [sys.executable, __file__, "--child", runtime, name, size, "--repeats", str(args.repeats)]
                        cmd += ["--child-threads", str(threads), "--onnx", files[name]]
                        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
                        res = json.loads(out.strip().splitlines()[-1])
                        results[runtime]["ms"] += res["ms"]
                        results[runtime]["peak"].append(res["peak_rss_mb"])
                        results[runtime]["above"].append(res["peak_rss_mb"] - res["base_rss_mb"])
                base = statistics.median(results["torch"]["ms"])
                for runtime in runtimes:
                    med = statistics.median(results[runtime]["ms"])
                    row = {
                        "model": name,
                        "size": int(size),
                        "threads": threads,
                        "runtime": runtime,
                        "median_ms": round(med, 1),
                        "ratio_vs_torch": round(base / med, 2),
                        "peak_rss_mb": round(max(results[runtime]["peak"])),
                        "peak_above_imports_mb": round(max(results[runtime]["above"])),
                        "runs_ms": [round(t, 1) for t in results[runtime]["ms"]],
                    }
                    rows.append(row)
                    print(
                        f"| {name} | {size} | {threads} | {runtime} | {row['median_ms']} | {row['ratio_vs_torch']} |"
                        f" {row['peak_rss_mb']} | {row['peak_above_imports_mb']} |",
                        flush=True,
                    )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
