"""Side-by-side latency of the three ways to run an LSKNet: eager PyTorch (``torch``), ``optimize_for_inference``
(``optimized``) and an ONNX export in onnxruntime (``onnxruntime``); also the Oriented R-CNN (torch / onnxruntime).

Runs are interleaved (one run of each runtime per round), so load from other processes hits all of them alike; the
result holds per-runtime medians and the ratio to ``torch``. ``lsknet benchmark --runtime ...`` prints it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lsknet.errors import ConfigError

__all__ = ["RUNTIMES", "benchmark_runtimes", "build_runner"]

RUNTIMES = ("torch", "optimized", "onnxruntime")


def build_runner(
    runtime: str,
    name: str,
    size: int,
    batch: int,
    detector: bool,
    workdir: Path,
    threads: int | None = None,
    onnx_file: str | Path | None = None,
) -> Callable[[torch.Tensor], Any]:
    """A callable running one forward pass of ``name`` (LSKNet features_only backbone, or its Oriented R-CNN with
    random weights) in ``runtime``; ``onnx_file``: an existing export to run instead of exporting here."""
    import timm

    import lsknet.models.backbone  # noqa: F401  (registers the timm models)

    if runtime == "onnxruntime" and onnx_file is not None:
        from lsknet.inference.onnx_runtime import load_onnx

        return load_onnx(onnx_file, threads=threads or torch.get_num_threads())
    torch.manual_seed(0)
    if detector:
        from lsknet.models.oriented_rcnn import build_oriented_rcnn

        model = build_oriented_rcnn(name, num_classes=15).eval()
        with torch.no_grad():  # untrained heads score every class ~1/16 > 0.05 (30k NMS candidates per image);
            # spread scores give a trained model's workload (~3k candidates on a 1024 noise image)
            model.rpn_head.rpn_cls.weight.normal_(0, 0.3)
            model.roi_head.bbox_head.fc_cls.weight.normal_(0, 0.3)
    else:
        model = timm.create_model(name, features_only=True).eval()
    if runtime == "torch":
        if detector:
            return lambda x: model(list(x))
        return model
    if runtime == "optimized":
        from lsknet.inference.optimize import optimize_for_inference

        fast = optimize_for_inference(model)
        if detector:
            return lambda x: fast(list(x))
        return fast
    if runtime == "onnxruntime":
        from lsknet.export import to_onnx
        from lsknet.inference.onnx_runtime import load_onnx

        shape = (1 if detector else batch, 3, min(size, 256), min(size, 256))
        path = to_onnx(model, workdir / f"{name}_{'det' if detector else 'bb'}.onnx", input_size=shape)
        return load_onnx(path, threads=threads or torch.get_num_threads())
    raise ConfigError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")


def benchmark_runtimes(
    name: str = "lsknet_t",
    size: int = 224,
    batch: int = 1,
    runtimes: Sequence[str] = RUNTIMES,
    *,
    detector: bool = False,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Median wall-clock latency (ms) of each runtime on ``batch`` random ``size`` x ``size`` images (0..255 for the
    detector), interleaved; ``ratio_vs_torch`` = torch median / runtime median (> 1: faster than eager)."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ConfigError(f"unknown runtime(s) {unknown}; choose from {', '.join(RUNTIMES)}")
    if threads:
        torch.set_num_threads(int(threads))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen) * (255.0 if detector else 1.0)
    times: dict[str, list[float]] = {r: [] for r in runtimes}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        runners = {r: build_runner(r, name, size, batch, detector, Path(tmp), threads) for r in runtimes}
        for run in runners.values():
            for _ in range(warmup):
                run(x)
        for _ in range(repeats):
            for r, run in runners.items():
                t0 = time.perf_counter()
                run(x)
                times[r].append((time.perf_counter() - t0) * 1000)
    medians = {r: statistics.median(v) for r, v in times.items()}
    base = medians.get("torch")
    return {
        "model": name + ("_orcnn" if detector else ""),
        "size": size,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "median_ms": medians,
        "ratio_vs_torch": {r: base / m for r, m in medians.items()} if base else {},
        "runs_ms": times,
    }
