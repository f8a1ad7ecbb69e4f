"""``lsknet compare``: backbones side by side on this machine (params, GMACs, latency, memory, throughput).

Example::

    lsknet compare --models lsknet_t lsknet_s resnet18 resnet50 convnext_tiny pvt_v2_b1 --sizes 224 1024 \\
        --repeats 5 --json compare.json --csv compare.csv --plot compare.png
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def cmd_compare(args: argparse.Namespace) -> int:
    from lsknet.analysis.compare import FIELDS, compare_models, plot_comparison
    from lsknet.evaluation.classification import write_json

    result = compare_models(
        args.models, args.sizes, repeats=args.repeats, warmup=args.warmup, threads=args.threads, batch=args.batch
    )
    print(f"{'model':<16}{'size':>6}{'thr':>4}{'params':>12}{'GMACs':>9}{'eager ms':>10}{'opt ms':>9}{'peak MB':>9}"
          f"{'img/s':>8}")
    for r in result["rows"]:
        if r["error"]:
            print(f"{r['model']:<16}{r['size']:>6}{r['threads']:>4}  cannot run: {r['error']}")
            continue
        print(f"{r['model']:<16}{r['size']:>6}{r['threads']:>4}{r['params']:>12,}{_fmt(r['gmacs'], 2):>9}"
              f"{_fmt(r['latency_ms']):>10}{_fmt(r['optimized_ms']):>9}{_fmt(r['peak_mb']):>9}"
              f"{_fmt(r['throughput'], 2):>8}")
    if args.json:
        write_json(result, Path(args.json))
        print(f"wrote {args.json}")
    if args.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(FIELDS))
        writer.writeheader()
        writer.writerows(result["rows"])
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(buffer.getvalue())
        os.replace(tmp, path)
        print(f"wrote {args.csv}")
    if args.plot:
        plot_comparison(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compare``."""
    p = subparsers.add_parser(
        "compare",
        help="compare backbones on this machine: params, GMACs, latency, peak memory, throughput",
        description="Builds every model (any timm name; features_only where supported) with random weights, counts "
        "params (num_classes=0) and FLOPs, and times one-image forwards with the models' repeats interleaved so "
        "machine noise hits all alike. LSKNet models are also timed through lsknet.optimize_for_inference.",
    )
    p.add_argument("--models", nargs="+", default=["lsknet_t", "lsknet_s", "resnet18", "resnet50", "convnext_tiny",
                                                    "pvt_v2_b1"], help="timm model names")
    p.add_argument("--sizes", nargs="+", type=int, default=[224], help="input sides in pixels (default 224)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per model (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per model first (default 1)")
    p.add_argument("--threads", nargs="+", type=int, help="torch CPU thread counts to profile (e.g. 1 2 4)")
    p.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    p.add_argument("--json", help="write {'rows', 'machine', 'settings'} to this JSON file")
    p.add_argument("--csv", help="write the rows to this CSV file")
    p.add_argument("--plot", help="write latency vs params / GMACs to this PNG")
    p.set_defaults(func=cmd_compare)
