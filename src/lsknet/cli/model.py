"""``lsknet convert | benchmark``: clean up LSKNet checkpoints; measure params, FLOPs and eager vs optimized speed.

Examples::

    lsknet convert lsk_t_backbone-2ef8a593.pth lsknet_t_clean.pth
    lsknet convert lsk_s_oriented_rcnn_dota.pth lsknet_s_backbone.pth --model lsknet_s
    lsknet benchmark --model lsknet_t --size 1024 --batch 1 --json bench_t.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from lsknet.atomic import atomic_target
from lsknet.errors import CheckpointError, ConfigError

VARIANTS = {32: "lsknet_t", 64: "lsknet_s"}  # first-stage width -> variant


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place."""
    with atomic_target(path) as tmp:
        torch.save(obj, tmp)


def cmd_convert(args: argparse.Namespace) -> int:
    import timm

    from lsknet.models.checkpoint import load_backbone_weights, read_checkpoint

    source, target = Path(args.input), Path(args.output)
    state = read_checkpoint(source, use_ema=not args.no_ema)
    first = state.get("patch_embed1.proj.weight")
    if first is None:
        raise CheckpointError(f"{source}: no LSKNet backbone weights (patch_embed1.proj.weight) found")
    name = args.model or VARIANTS.get(first.shape[0])
    if name is None:
        raise CheckpointError(f"{source}: first-stage width {first.shape[0]} is neither LSKNet-T (32) nor -S (64)")
    head = state.get("head.weight")
    num_classes = head.shape[0] if head is not None and not args.drop_head else 0
    model = timm.create_model(name, num_classes=num_classes, in_chans=first.shape[1])
    report = load_backbone_weights(model, state)  # strict: raises CheckpointError naming keys
    meta = {"arch": name, "num_classes": num_classes, "in_chans": int(first.shape[1]), "source": source.name}
    atomic_save({"state_dict": model.state_dict(), "meta": meta}, target)
    print(
        f"wrote {target}: {name}, {len(report.loaded)} tensors, head={'none' if not num_classes else report.head}"
        f" ({num_classes} classes), in_chans={first.shape[1]}"
    )
    return 0


def _write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from lsknet.inference.optimize import benchmark

    if args.model not in VARIANTS.values():
        raise ConfigError(f"--model must be one of {sorted(VARIANTS.values())}, not {args.model!r}")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {args.checkpoint}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.runtime or args.detector:
        return _benchmark_runtimes(args)
    result = benchmark(
        args.model,
        args.size,
        args.batch,
        repeats=args.repeats,
        warmup=args.warmup,
        compile=args.compile,
        checkpoint=args.checkpoint,
    )
    shape = f"{args.batch}x3x{args.size}x{args.size}"
    print(f"model          {result['model']}  input {shape}  threads {result['threads']}")
    print(f"params         {result['params']:,} ({result['params_backbone']:,} without the classifier head)")
    print(f"compute        {result['gmacs']:.2f} GMACs = {result['gflops']:.2f} GFLOPs (1 MAC = 2 FLOPs; conv+matmul)")
    opt = "optimized+compile" if args.compile else "optimized"
    print(f"latency eager  {result['eager_ms']:.1f} ms (median of {args.repeats})")
    print(f"latency {opt:<6} {result['optimized_ms']:.1f} ms")
    print(
        f"speedup        {result['speedup']:.2f}x wall (median per-run ratio {result['speedup_median_of_ratios']:.2f}x,"
        f" CPU-time {result['cpu_speedup']:.2f}x)"
    )
    print(f"max rel diff   {result['max_rel_diff']:.2e}")
    if args.json:
        _write_json(result, Path(args.json))
    return 0


def _benchmark_runtimes(args: argparse.Namespace) -> int:
    """``--runtime torch,optimized,onnxruntime`` (and ``--detector``): interleaved latency of each runtime."""
    from lsknet.inference.runtime_bench import RUNTIMES, benchmark_runtimes

    runtimes = [r for item in (args.runtime or []) for r in item.split(",") if r]
    if not runtimes:
        runtimes = ["torch", "onnxruntime"] if args.detector else list(RUNTIMES)
    result = benchmark_runtimes(
        args.model,
        args.size,
        args.batch,
        runtimes,
        detector=args.detector,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads or None,
    )
    shape = f"{args.batch}x3x{args.size}x{args.size}"
    print(f"model          {result['model']}  input {shape}  threads {result['threads']}")
    for runtime, ms in result["median_ms"].items():
        ratio = result["ratio_vs_torch"].get(runtime)
        vs = f"  ({ratio:.2f}x torch)" if ratio else ""
        print(f"latency {runtime:<12} {ms:.1f} ms (median of {args.repeats}){vs}")
    if args.json:
        _write_json(result, Path(args.json))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert`` and ``benchmark``."""
    p = subparsers.add_parser(
        "convert",
        help="write a clean LSKNet checkpoint from any official layout",
        description="Read an LSKNet checkpoint in any official layout (plain state dict, state_dict/state_dict_ema, "
        "MMRotate detector with backbone. prefixes, DDP module. prefixes), check it strictly against the "
        "architecture and write {'state_dict', 'meta'} with the official key names (atomically).",
    )
    p.add_argument("input", help="source checkpoint (.pth)")
    p.add_argument("output", help="clean checkpoint to write")
    p.add_argument("--model", choices=sorted(VARIANTS.values()), help="variant (default: detected from the weights)")
    p.add_argument("--no-ema", action="store_true", help="take 'state_dict' even if 'state_dict_ema' exists")
    p.add_argument("--drop-head", action="store_true", help="write the backbone only, without the classifier head")
    p.set_defaults(func=cmd_convert)

    b = subparsers.add_parser(
        "benchmark",
        help="params, GFLOPs and eager vs optimized latency of an LSKNet",
        description="Build the model with random weights (or --checkpoint), count params and FLOPs, and time the "
        "eager model against lsknet.optimize_for_inference in the same run (interleaved, medians).",
    )
    b.add_argument("--model", default="lsknet_t", help="lsknet_t or lsknet_s")
    b.add_argument("--size", type=int, default=1024, help="input height = width in pixels (default 1024)")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--repeats", type=int, default=5, help="timed runs of each model (default 5)")
    b.add_argument("--warmup", type=int, default=1, help="untimed runs of each model first (default 1)")
    b.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    b.add_argument("--compile", action="store_true", help="also torch.compile the optimized model")
    b.add_argument("--checkpoint", help="load these weights instead of random ones")
    b.add_argument("--json", help="write the results to this JSON file")
    b.add_argument(
        "--runtime",
        action="append",
        metavar="NAME[,NAME]",
        help="time these runtimes side by side instead: torch, optimized, onnxruntime (comma list or repeated)",
    )
    b.add_argument("--detector", action="store_true", help="with --runtime: the Oriented R-CNN (torch, onnxruntime)")
    b.set_defaults(func=cmd_benchmark)
