"""Identical-hardware comparison of backbones: params, GMACs, latency (eager and optimized), peak memory, throughput.

Every model runs in the same process on the same inputs, and the timed repeats are interleaved (repeat r times model
1, model 2, ..., then r + 1 ...), so load from other processes on a shared machine hits all models alike and the
ratios stay fair even when absolute times are noisy. Thread counts (``threads``) give the small-device profile.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import timm
import torch
from torch import nn

import lsknet.models.backbone  # noqa: F401  (registers lsknet_t / lsknet_s)
from lsknet.inference.optimize import count_flops, optimize_for_inference

__all__ = ["FIELDS", "compare_models", "machine_info", "peak_memory_growth_mb"]

log = logging.getLogger(__name__)
FIELDS = ("model", "size", "threads", "params", "gmacs", "latency_ms", "optimized_ms", "peak_mb", "throughput",
          "features_only", "error")


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the next peak is measured from the floor
    except (OSError, AttributeError):
        pass


def peak_memory_growth_mb(fn: Callable[[], Any]) -> float | None:
    """Peak growth of the process's resident memory (MiB) while ``fn()`` runs: CUDA peak allocation when on a GPU,
    else /proc/self/statm sampled every 0.5 ms from a background thread (None where /proc is unavailable)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # pragma: no cover - CPU machines
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _trim()
    base = _rss_bytes()
    if base is None:
        fn()
        return None
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes() or 0)
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_bytes() or 0)
    return (peak[0] - base) / 2**20


def machine_info() -> dict[str, Any]:
    """CPU, core count, threads, library versions and the load average (the machine may be shared)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "default_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _build(name: str) -> tuple[int, nn.Module, bool]:
    """Parameter count of ``timm.create_model(name, num_classes=0)`` and the model to time (features_only when the
    model supports it, else the headless model)."""
    headless = timm.create_model(name, num_classes=0, pretrained=False)
    params = sum(p.numel() for p in headless.parameters())
    try:
        timed = timm.create_model(name, features_only=True, pretrained=False)
        features = True
    except Exception as err:  # timm raises RuntimeError / TypeError / AssertionError for unsupported models
        log.info("%s: no features_only (%s); timing the headless model", name, err)
        timed, features = headless, False
    return params, timed.eval(), features


def _why(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _is_lsknet(name: str) -> bool:
    return name.startswith("lsknet_")


def compare_models(
    models: Sequence[str],
    sizes: Sequence[int] = (224,),
    *,
    repeats: int = 5,
    warmup: int = 1,
    threads: Sequence[int] | None = None,
    batch: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """One row per (threads, size, model) with ``model``, ``size``, ``threads``, ``params``, ``gmacs`` (FLOPs / 2,
    torch.utils.flop_counter), ``latency_ms`` (median eager), ``optimized_ms`` (lsknet models through
    :func:`lsknet.optimize_for_inference`, else None), ``peak_mb`` (peak memory growth of one eager forward),
    ``throughput`` (images/s from ``latency_ms``), ``features_only`` and ``error`` (why a model could not run, else
    None). Returns ``{"rows": [...], "machine": {...}, "settings": {...}}``."""
    from tqdm import tqdm

    machine = machine_info()
    thread_counts = list(threads) if threads else [torch.get_num_threads()]
    before = torch.get_num_threads()
    built: dict[str, Any] = {}
    for name in models:
        try:
            params, model, features = _build(name)
            fast = optimize_for_inference(model) if _is_lsknet(name) else None
            built[name] = (params, model, features, fast, None)
        except Exception as err:  # unknown name, unsupported options: reported in the model's rows
            built[name] = (None, None, False, None, _why(err))
    rows = []
    total = len(thread_counts) * len(sizes) * len(models) * (warmup + repeats + 2)
    bar = tqdm(total=total, desc="compare", unit="run", disable=not progress)
    try:
        for n_threads in thread_counts:
            torch.set_num_threads(int(n_threads))
            for size in sizes:
                x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
                state: dict[str, dict[str, Any]] = {}
                for name in models:
                    params, model, features, fast, error = built[name]
                    row = dict(model=name, size=size, threads=int(n_threads), params=params, gmacs=None,
                               latency_ms=None, optimized_ms=None, peak_mb=None, throughput=None,
                               features_only=features, error=error)
                    state[name] = row
                    rows.append(row)
                    if error is not None:
                        bar.update(warmup + repeats + 2)
                        continue
                    try:
                        with torch.inference_mode():
                            row["gmacs"] = count_flops(model, x) / 2e9
                            bar.update()
                            row["peak_mb"] = peak_memory_growth_mb(lambda m=model, x=x: m(x))
                            bar.update()
                            for _ in range(warmup):
                                model(x)
                                if fast is not None:
                                    fast(x)
                                bar.update()
                    except Exception as err:  # e.g. a fixed-input-size model at another size, out of memory
                        row["error"] = _why(err)
                        bar.update(warmup + repeats)
                times: dict[str, list[float]] = {n: [] for n in models}
                fast_times: dict[str, list[float]] = {n: [] for n in models}
                live = [n for n in models if state[n]["error"] is None]
                with torch.inference_mode():
                    for r in range(repeats):
                        order = live[r % len(live) :] + live[: r % len(live)] if live else []  # rotate the order
                        for name in order:
                            _, model, _, fast, _ = built[name]
                            t0 = time.perf_counter()
                            model(x)
                            times[name].append(time.perf_counter() - t0)
                            if fast is not None:
                                t0 = time.perf_counter()
                                fast(x)
                                fast_times[name].append(time.perf_counter() - t0)
                            bar.update()
                for name in live:
                    row = state[name]
                    row["latency_ms"] = statistics.median(times[name]) * 1000 if times[name] else None
                    if fast_times[name]:
                        row["optimized_ms"] = statistics.median(fast_times[name]) * 1000
                    if row["latency_ms"]:
                        row["throughput"] = batch / (row["latency_ms"] / 1000)
    finally:
        bar.close()
        torch.set_num_threads(before)
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    settings = dict(models=list(models), sizes=list(sizes), repeats=repeats, warmup=warmup, threads=thread_counts,
                    batch=batch, interleaved=True)
    return {"rows": rows, "machine": machine, "settings": settings}


def plot_comparison(result: dict[str, Any], path: Any) -> Any:
    """Latency vs params and vs GMACs, one row of panels per (size, threads), points labelled with the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lsknet.analysis.common import save_figure

    groups: dict[tuple[int, int], list[dict]] = {}
    for row in result["rows"]:
        if row["latency_ms"] is not None:
            groups.setdefault((row["size"], row["threads"]), []).append(row)
    keys = sorted(groups)
    fig, axes = plt.subplots(max(1, len(keys)), 2, figsize=(9.0, 3.2 * max(1, len(keys))), squeeze=False)
    for (size, n_threads), ax_row in zip(keys, axes):
        rows = groups[(size, n_threads)]
        for ax, field, label in ((ax_row[0], "params", "parameters (M)"), (ax_row[1], "gmacs", "GMACs")):
            scale = 1e6 if field == "params" else 1.0
            for row in rows:
                xv = row[field] / scale
                ax.scatter(xv, row["latency_ms"], color="tab:red" if _is_lsknet(row["model"]) else "tab:blue")
                ax.annotate(row["model"], (xv, row["latency_ms"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
                if row["optimized_ms"] is not None:
                    ax.scatter(xv, row["optimized_ms"], color="tab:red", marker="x")
            ax.margins(x=0.2, y=0.15)  # room for the labels of the outermost points
            ax.set_xlabel(label)
            ax.set_ylabel("latency (ms, median; x = optimized)")
            ax.set_title(f"{size}x{size}, {n_threads} thread(s)", fontsize=9)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
