"""``lsknet seg ...``: segmentation tools that need no training run.

- ``seg score``: score index-mask PNGs against ground truth (paired by file name) -> JSON (+ confusion CSV/PNG).
- ``seg tile``: cut large image/mask pairs into overlapping training tiles (index-mask PNGs).
- ``seg synth``: write a generated scene set (images + index masks) for smoke runs and demos.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``seg score``, ``seg tile`` and ``seg synth``."""
    seg = subparsers.add_parser("seg", help="semantic-segmentation tools (score, tile, synth)")
    sub = seg.add_subparsers(dest="seg_command", metavar="SEG_COMMAND")
    seg.set_defaults(func=lambda args: (seg.print_help(), 2)[1])

    score = sub.add_parser("score", help="score index-mask predictions against ground-truth masks")
    score.add_argument("--pred", required=True, type=Path, help="folder of predicted index masks (PNG/TIFF)")
    score.add_argument("--gt", required=True, type=Path, help="folder of ground-truth index masks, same file names")
    score.add_argument("--num-classes", required=True, type=int, help="number of classes K (labels 0..K-1)")
    score.add_argument("--ignore-index", type=int, default=255, help="ground-truth value not scored (default 255)")
    score.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="ground truth: raw 0 -> ignore, k -> k-1 (ISPRS eroded-boundary / LoveDA no-data)",
    )
    score.add_argument("--class-names", default=None, help="comma-separated class names (K of them)")
    score.add_argument("--exclude", default="", help="comma-separated classes (index or name) left out of the means")
    score.add_argument("--out", required=True, type=Path, help="output JSON file")
    score.add_argument("--confusion", action="store_true", help="also write <out stem>_confusion.csv and .png")
    score.set_defaults(func=_score)

    tile = sub.add_parser("tile", help="cut large image/mask pairs into overlapping tiles (PNG)")
    tile.add_argument("--images", required=True, type=Path, help="image folder")
    tile.add_argument("--masks", required=True, type=Path, help="mask folder")
    tile.add_argument("--out", required=True, type=Path, help="output folder (gets img_dir/ and ann_dir/)")
    tile.add_argument("--format", default="folder", help="label coding: isprs, uavid, loveda, folder (default)")
    tile.add_argument("--num-classes", type=int, default=None, help="classes of a 'folder' dataset")
    tile.add_argument("--image-suffix", default="", help="stem suffix of images (e.g. _RGB)")
    tile.add_argument("--mask-suffix", default="", help="stem suffix of masks (e.g. _label_noBoundary)")
    tile.add_argument("--size", type=int, default=1024, help="tile size in pixels (default 1024)")
    tile.add_argument("--stride", type=int, default=512, help="stride in pixels (default 512)")
    tile.add_argument("--clutter", default="keep", choices=["keep", "ignore"], help="ISPRS clutter class")
    tile.add_argument("--unknown-colors", default="error", choices=["error", "ignore"])
    tile.set_defaults(func=_tile)

    synth = sub.add_parser("synth", help="write generated scenes (images + index masks)")
    synth.add_argument("--out", required=True, type=Path, help="output folder (gets img_dir/ and ann_dir/)")
    synth.add_argument("--num", type=int, default=16, help="number of scenes")
    synth.add_argument("--size", type=int, default=256, help="scene size in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)


def _score(args: argparse.Namespace) -> int:
    from lsknet.errors import ConfigError
    from lsknet.evaluation.segmentation import plot_confusion_png, score_directories, write_confusion_csv, write_json

    names = [s.strip() for s in args.class_names.split(",")] if args.class_names else None
    if names is not None and len(names) != args.num_classes:
        raise ConfigError(f"--class-names gives {len(names)} names for --num-classes {args.num_classes}")
    exclude = [int(e) if e.strip().isdigit() else e.strip() for e in args.exclude.split(",") if e.strip()]
    for e in exclude:
        if isinstance(e, str) and (names is None or e not in names):
            raise ConfigError(f"--exclude {e!r}: not a class index or one of --class-names")
        if isinstance(e, int) and not 0 <= e < args.num_classes:
            raise ConfigError(f"--exclude {e}: class index out of range [0, {args.num_classes})")
    metrics, cm = score_directories(
        args.pred, args.gt, args.num_classes, args.ignore_index, args.reduce_zero_label, names, exclude
    )
    write_json(metrics, args.out)
    if args.confusion:
        stem = args.out.with_suffix("")
        write_confusion_csv(cm, f"{stem}_confusion.csv", metrics["classes"])
        plot_confusion_png(cm, f"{stem}_confusion.png", metrics["classes"])
    shown = {k: metrics[k] for k in ("mIoU", "mF1", "OA", "images")}
    print(json.dumps(shown))
    return 0


def _tile(args: argparse.Namespace) -> int:
    from lsknet.data.segmentation import cut_tiles, find_pairs, mask_coding

    coding = mask_coding(
        args.format, num_classes=args.num_classes, clutter=args.clutter, unknown_colors=args.unknown_colors
    )
    pairs = find_pairs(args.images, args.masks, image_suffix=args.image_suffix, mask_suffix=args.mask_suffix)
    summary = cut_tiles(pairs, args.out, coding, size=args.size, stride=args.stride)
    print(json.dumps(summary))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from lsknet.data.synthetic_segmentation import write_scene_set

    summary = write_scene_set(args.out, num=args.num, size=args.size, seed=args.seed)
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}))
    return 0
