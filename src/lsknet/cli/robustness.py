"""``lsknet robustness``: a trained checkpoint on the clean and corrupted evaluation split (JSON + PNG).

Example::

    lsknet robustness --checkpoint runs/dota/best.ckpt data.val_root=/data/dota/val_1024 --severities 1 3 5 --out rob/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lsknet.errors import ConfigError


def cmd_robustness(args: argparse.Namespace) -> int:
    from lsknet.analysis.robustness import plot_robustness, run_robustness
    from lsknet.data.corruptions import CORRUPTIONS
    from lsknet.evaluation.classification import write_json

    if args.corruptions in ("all", ""):
        names = list(CORRUPTIONS)
    else:
        names = [n.strip() for n in args.corruptions.split(",") if n.strip()]
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ConfigError(f"unexpected argument(s) {bad}; data overrides are key=value")
    report = run_robustness(
        args.checkpoint, args.overrides, names, args.severities, split=args.split, seed=args.seed
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out / "robustness.json")
    plot_robustness(report, out / "robustness.png")
    rel = report["mean_relative"]
    rel_text = "n/a (clean value 0)" if rel is None else f"{rel:.3f}"
    print(f"{report['metric']} clean {report['clean']:.4f}; mean relative under corruption {rel_text}")
    for name in names:
        values = " ".join(f"{r['value']:.3f}" for r in report["results"] if r["corruption"] == name)
        print(f"  {name:<15} {values}")
    print(f"wrote {out / 'robustness.json'} and robustness.png")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``robustness``."""
    p = subparsers.add_parser(
        "robustness",
        help="evaluate a checkpoint on corrupted evaluation images (noise, blur, JPEG, low resolution, haze, cloud)",
        description="Runs the task's own evaluation (top-1 / DOTA mAP / mIoU) on the clean split and on every "
        "corruption x severity of lsknet.data.corruptions; writes robustness.json and robustness.png.",
    )
    p.add_argument("--checkpoint", required=True, help="an lsknet training checkpoint (.ckpt) of any task")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.val_root=/data/val")
    p.add_argument("--corruptions", default="all", help="'all' or a comma list (default all)")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="among 1..5 (default all)")
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--seed", type=int, default=0, help="seed of the random corruptions")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_robustness)
