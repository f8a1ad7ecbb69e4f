"""``lsknet dota split|merge|eval`` and ``lsknet data synth``: the DOTA toolkit on the command line."""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

from lsknet.errors import DataSkipWarning

log = logging.getLogger("lsknet.dota")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(",", " ").split()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(",", " ").split()]


def _quiet_skips() -> None:
    """Skip warnings are summarised by the commands; print each once, compactly."""
    warnings.simplefilter("default", DataSkipWarning)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"  # type: ignore[assignment]


def _split(args: argparse.Namespace) -> int:
    from lsknet.data.split import MS_PRESET, split_dataset

    _quiet_skips()
    sizes, gaps, rates = args.sizes, args.gaps, args.rates
    if args.preset == "ms":
        sizes, gaps, rates = list(MS_PRESET["sizes"]), list(MS_PRESET["gaps"]), list(MS_PRESET["rates"])
    if len(gaps) == 1 and len(sizes) > 1:
        gaps = gaps * len(sizes)
    from lsknet.data.dota import get_classes

    summary = split_dataset(
        args.src,
        args.dst,
        sizes=sizes,
        gaps=gaps,
        rates=rates,
        img_rate_thr=args.img_rate_thr,
        iof_thr=args.iof_thr,
        clip_truncated=not args.no_clip,
        pad=not args.no_padding,
        labels=False if args.no_labels else None,
        classes=get_classes(args.classes),
        workers=args.workers,
        strict=args.strict,
        progress=not args.no_progress,
        fmt=args.format,
    )
    print(json.dumps(summary))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from lsknet.data.merge import merge_labeltxt_dir, merge_task1_dir

    _quiet_skips()
    if args.labels:
        merged = merge_labeltxt_dir(args.src, args.dst, strict=args.strict)
        print(json.dumps({"images": len(merged), "objects": sum(len(a) for a in merged.values())}))
        return 0
    image_ids = None
    if args.images:
        from lsknet.data.dota import list_images

        image_ids = list(list_images(args.images))
    classes = args.classes or ("fair1m" if args.format == "fair1m" else "dota1.0")
    dets = merge_task1_dir(args.src, args.dst, classes, args.iou_thr, zip_path=args.zip, strict=args.strict,
                           fmt=args.format, image_ids=image_ids)  # fmt: skip
    print(json.dumps({"detections": {c: len(d) for c, d in dets.items()}, "zip": args.zip}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from lsknet.evaluation.dota import evaluate_dota

    _quiet_skips()
    result = evaluate_dota(
        args.det,
        args.gt,
        classes=args.classes,
        metric=args.metric,
        iou_thr=args.iou_thr,
        mode=args.mode,
        coco=not args.no_coco,
        strict=args.strict,
    )
    if args.out:
        out = Path(args.out)
        result.write_json(out)
        result.write_csv(out.with_suffix(".csv"))
        if args.curves:
            result.plot_pr_curves(out.parent / f"{out.stem}_pr")
    width = max(len(c) for c in result.classes)
    for c in result.classes:
        ap = result.per_class[c]
        print(
            f"{c:<{width}}  {'   n/a' if ap is None else f'{ap:.4f}'}  (gt {result.num_gt[c]}, det {result.num_det[c]})"
        )
    print(f"mAP ({result.metric}, IoU {result.iou_thr}, {result.mode}, classes present): {result.mAP:.4f}")
    print(f"mAP over all {len(result.classes)} classes (absent = 0): {result.mAP_all_classes:.4f}")
    if result.mAP_50_95 is not None:
        print(f"COCO-style mAP50:95: {result.mAP_50_95:.4f}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from lsknet.data.synthetic import EASY_SCENE_OPTIONS, generate_dota_scenes

    options = dict(
        objects_per_image=tuple(args.objects),
        object_scale=tuple(args.scale),
        difficult_fraction=args.difficult,
        truncated_fraction=args.truncated,
        noise=args.noise,
    )
    if args.easy:
        options.update(EASY_SCENE_OPTIONS)
    classes = args.classes.split(",") if args.classes else None
    summary = generate_dota_scenes(
        args.out, num_images=args.images, size=args.size, seed=args.seed, classes=classes, **options
    )
    summary.pop("image_ids")
    print(json.dumps(summary))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dota`` (split, merge, eval) and ``data`` (synth)."""
    dota = subparsers.add_parser("dota", help="DOTA toolkit: split large images, merge results, evaluate")
    sub = dota.add_subparsers(dest="dota_command", metavar="ACTION", required=True)

    sp = sub.add_parser("split", help="split DIR/images (+ DIR/labelTxt) into overlapping patches")
    sp.add_argument("--src", required=True, help="folder with images/ and optionally labelTxt/ (labelXml/: fair1m)")
    sp.add_argument("--format", choices=["dota", "fair1m"], default="dota", help="source annotations (dota)")
    sp.add_argument("--dst", required=True, help="output folder (images/, labelTxt/)")
    sp.add_argument("--sizes", type=_ints, default=[1024], help="window sizes, e.g. '1024' (default 1024)")
    sp.add_argument("--gaps", type=_ints, default=[200], help="overlaps per size (default 200)")
    sp.add_argument("--rates", type=_floats, default=[1.0], help="scales, e.g. '0.5,1.0,1.5' (default 1.0)")
    sp.add_argument(
        "--preset", choices=["ss", "ms"], help="official single-/multi-scale setting (ms: gap 500, rates 0.5/1/1.5)"
    )
    sp.add_argument("--img-rate-thr", type=float, default=0.6, help="drop windows with less image inside (0.6)")
    sp.add_argument("--iof-thr", type=float, default=0.7, help="keep objects with IoF >= this (0.7)")
    sp.add_argument("--no-clip", action="store_true", help="keep truncated objects unclipped (MMRotate style)")
    sp.add_argument("--no-padding", action="store_true", help="do not pad border patches to the window size")
    sp.add_argument("--no-labels", action="store_true", help="images only (test sets)")
    sp.add_argument(
        "--classes", default="dota1.0", help="known class names (dota1.0|dota1.5|dota2.0, comma list or file); "
        "labels of other names are skipped, warned and counted"
    )
    sp.add_argument("--workers", type=int, default=1, help="parallel processes")
    sp.add_argument("--strict", action="store_true", help="bad input is an error instead of a counted skip")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=_split)

    mp = sub.add_parser("merge", help="merge patch Task1 detections (or patch labelTxt with --labels)")
    mp.add_argument("--src", required=True, help="folder of Task1_<class>.txt with patch names as image ids")
    mp.add_argument("--dst", required=True, help="output folder")
    mp.add_argument("--iou-thr", type=float, default=0.1, help="rotated NMS IoU per class (0.1)")
    mp.add_argument("--classes", help="dota1.0|dota1.5|dota2.0|fair1m, comma list or file (default per --format)")
    mp.add_argument("--zip", help="also write this zip of the result files (evaluation server)")
    mp.add_argument("--format", choices=["dota", "fair1m"], default="dota",
                    help="dota: Task1_<class>.txt; fair1m: the FAIR1M submission, one <image>.xml per image")
    mp.add_argument("--images", help="fair1m: folder of the test images (each gets an XML, detections or not)")
    mp.add_argument("--labels", action="store_true", help="--src is a patch labelTxt folder; write source labelTxt")
    mp.add_argument("--strict", action="store_true")
    mp.set_defaults(func=_merge)

    ep = sub.add_parser("eval", help="DOTA Task1 mAP of Task1_<class>.txt detections against labelTxt")
    ep.add_argument("--det", required=True, help="folder of Task1_<class>.txt files")
    ep.add_argument("--gt", required=True, help="folder of labelTxt files (all are evaluated)")
    ep.add_argument("--metric", choices=["voc07", "area"], default="voc07")
    ep.add_argument("--iou-thr", type=float, default=0.5)
    ep.add_argument("--mode", choices=["official", "mmrotate"], default="official")
    ep.add_argument("--classes", default="dota1.0", help="dota1.0|dota1.5|dota2.0, comma list or file")
    ep.add_argument("--out", help="JSON results (a CSV is written next to it)")
    ep.add_argument("--curves", action="store_true", help="also write per-class PR-curve PNGs next to --out")
    ep.add_argument("--no-coco", action="store_true", help="skip the COCO-style mAP50:95")
    ep.add_argument("--strict", action="store_true")
    ep.set_defaults(func=_eval)

    data = subparsers.add_parser("data", help="data utilities")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    syn = dsub.add_parser("synth", help="write synthetic aerial scenes in DOTA format")
    syn.add_argument("--out", required=True)
    syn.add_argument("--images", type=int, default=16)
    syn.add_argument("--size", type=int, default=512)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--classes", help="comma list (default: small-vehicle,large-vehicle,plane,ship,storage-tank)")
    syn.add_argument("--objects", type=int, nargs=2, default=[8, 20], metavar=("MIN", "MAX"))
    syn.add_argument("--scale", type=float, nargs=2, default=[1.0, 1.0], metavar=("MIN", "MAX"))
    syn.add_argument("--difficult", type=float, default=0.05, help="fraction of difficult objects")
    syn.add_argument("--truncated", type=float, default=0.08, help="fraction of objects cut by the border")
    syn.add_argument("--noise", type=float, default=0.02, help="pixel noise std (fraction of 255)")
    syn.add_argument("--easy", action="store_true", help="easy learnable setting for demos (overrides the knobs)")
    syn.set_defaults(func=_synth)
