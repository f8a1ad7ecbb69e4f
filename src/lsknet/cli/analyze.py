"""``lsknet analyze erf | selection``: effective receptive fields and LSK selection maps as JSON + PNG.

Examples::

    lsknet analyze erf --model lsknet_t --model resnet50 --model convnext_tiny --synthetic 8 --size 256 --out erf/
    lsknet analyze selection --checkpoint best.ckpt images/P0001.png --labels labelTxt/ --out sel/
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from lsknet.errors import ConfigError

log = logging.getLogger(__name__)
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def _lsk_options(args: argparse.Namespace) -> dict:
    import yaml

    out = {}
    for key in ("lsk_kernels", "lsk_selection", "lsk_pool"):
        raw = getattr(args, key, None)
        if raw is not None:
            out[key] = yaml.safe_load(raw) if key != "lsk_selection" else raw
    return out


def _image_paths(folder: Path, limit: int | None) -> list[Path]:
    from lsknet.data.scene import is_image_file

    if not folder.is_dir():
        raise ConfigError(f"--images: not a folder: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not paths:
        raise ConfigError(f"--images: no images in {folder}")
    return paths[:limit] if limit else paths


def _stage_indices(model) -> list[int]:
    reductions = list(model.feature_info.reduction())
    idx = [reductions.index(r) for r in (4, 8, 16, 32) if r in reductions]
    return idx if len(idx) == 4 else list(range(len(reductions)))[-4:]


def cmd_erf(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from tqdm import tqdm

    from lsknet.analysis.common import build_features, image_tensor, load_image_batch, save_figure, synthetic_images
    from lsknet.analysis.receptive import area_ratio, stage_erfs
    from lsknet.evaluation.classification import write_json

    torch.manual_seed(args.seed)
    if args.images:
        images, _ = load_image_batch(_image_paths(Path(args.images), args.synthetic or None), args.size)
    else:
        images = synthetic_images(args.synthetic or 4, args.size, args.seed)
    x = image_tensor(images)
    batches = list(x.split(args.batch))
    names = args.model or ["lsknet_t"]
    if args.checkpoint and len(names) > 1:
        raise ConfigError("--checkpoint applies to one --model only")
    out = Path(args.out)
    result: dict = {"size": args.size, "images": len(images), "thresholds": list(THRESHOLDS), "models": {}}
    maps: dict[str, list[np.ndarray]] = {}
    for name in names:
        model, _ = build_features(name, args.checkpoint, **_lsk_options(args))
        stages = _stage_indices(model)
        with torch.enable_grad():
            erfs = None
            for batch in tqdm(batches, desc=f"erf {name}", unit="batch", leave=False):
                part = stage_erfs(model, batch, stages)
                erfs = part if erfs is None else [a + b for a, b in zip(erfs, part)]
        maps[name] = erfs
        result["models"][name] = {
            "weights": str(args.checkpoint) if args.checkpoint else "random init",
            "stages": [
                {"stage": s + 1, "area_ratio": {str(t): area_ratio(m, t) for t in THRESHOLDS}}
                for s, m in enumerate(erfs)
            ],
        }
    out.mkdir(parents=True, exist_ok=True)
    for s in range(4):
        fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 3.0), squeeze=False)
        for ax, name in zip(axes[0], names):
            if s >= len(maps[name]):
                ax.axis("off")
                continue
            m = np.log10(1.0 + maps[name][s])
            ax.imshow(m / (m.max() or 1.0), cmap="RdYlGn", vmin=0, vmax=1)
            r = result["models"][name]["stages"][s]["area_ratio"]["0.3"]
            ax.set_title(f"{name}, stage {s + 1}\narea ratio (t=0.3) {r:.3f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout(pad=1.5)
        save_figure(fig, out / f"erf_stage{s + 1}.png")
    write_json(result, out / "erf.json")
    tmp = out / ".erf_maps.npz.tmp"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **{f"{n}_stage{s + 1}": m for n, ms in maps.items() for s, m in enumerate(ms)})
    os.replace(tmp, out / "erf_maps.npz")
    for name in names:
        ratios = ", ".join(f"s{st['stage']} {st['area_ratio']['0.3']:.3f}" for st in result["models"][name]["stages"])
        print(f"{name}: area ratio at t=0.3: {ratios}")
    print(f"wrote {out / 'erf.json'}, erf_maps.npz (raw maps) and erf_stage1..4.png")
    return 0


def cmd_selection(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from lsknet.analysis.common import build_features, find_lsknet, image_tensor, load_image_batch, save_figure
    from lsknet.analysis.selection import context_statistic, expected_rf_maps, object_context, selection_maps
    from lsknet.data.dota import SkipReport, read_labeltxt
    from lsknet.evaluation.classification import write_json

    torch.manual_seed(args.seed)
    model, name = build_features(args.model, args.checkpoint, **_lsk_options(args))
    net = find_lsknet(model)
    kernels = net.lsk_config["kernels"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in args.images]
    per_class: dict[str, list[float]] = {}
    summary: dict = {"model": name, "weights": str(args.checkpoint) if args.checkpoint else "random init",
                     "kernels": [list(k) for k in kernels], "images": {}}
    report = SkipReport()
    for path in paths:
        images, shapes = load_image_batch([path], None)
        img = images[0]
        h0, w0 = img.shape[:2]
        size = args.size
        th, tw = (size, size) if size else (max(32, round(h0 / 32) * 32), max(32, round(w0 / 32) * 32))
        if (th, tw) != (h0, w0):
            from PIL import Image

            img = np.asarray(Image.fromarray(img).resize((tw, th), Image.BILINEAR))
        gates = selection_maps(model, image_tensor([img]))
        stats = {k: {"mean": g[0].mean(dim=(1, 2)).tolist(), "std": g[0].std(dim=(1, 2)).tolist()}
                 for k, g in gates.items()}
        entry: dict = {"input_size": [th, tw], "blocks": stats}
        keys = list(gates)
        n = len(kernels)
        fig, axes = plt.subplots(n, len(keys) + 1, figsize=(1.6 * (len(keys) + 1), 1.7 * n), squeeze=False)
        for row in range(n):
            axes[row][0].imshow(img)
            axes[row][0].set_title(f"branch {row + 1} (k{kernels[row][0]} d{kernels[row][1]})", fontsize=6)
            for col, key in enumerate(keys, start=1):
                axes[row][col].imshow(gates[key][0, row].numpy(), cmap="viridis", vmin=0, vmax=1)
                axes[row][col].set_title(key, fontsize=6)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        save_figure(fig, out / f"{path.stem}_selection.png")
        if args.labels:
            label = Path(args.labels) / f"{path.stem}.txt"
            if not label.is_file():
                log.warning("%s: no label file %s; image left out of the context statistic", path, label)
                entry["objects"] = None
            else:
                ann = read_labeltxt(label, report=report)
                polys = ann.polys * np.array([tw / w0, th / h0])
                values = object_context(expected_rf_maps(gates, kernels), polys)
                for cls, v in zip(ann.names, values):
                    per_class.setdefault(cls, []).append(float(v))
                entry["objects"] = len(ann)
        summary["images"][path.name] = entry
    write_json(summary, out / "selection.json")
    print(f"wrote {out / 'selection.json'} and {len(paths)} selection PNG(s)")
    if args.labels:
        stat = context_statistic(per_class)
        if not stat:
            raise ConfigError(f"--labels {args.labels}: no objects found for the given images")
        write_json({"formula": _FORMULA, "classes": stat, "skipped_lines": dict(report.counts)}, out / "context.json")
        classes = list(stat)
        fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(classes) + 1.5), 3.0))
        ax.bar(classes, [stat[c]["normalised"] for c in classes], color="tab:blue")
        ax.set_ylabel("expected selected RF / box area\n(normalised, max = 1)", fontsize=8)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        fig.tight_layout()
        save_figure(fig, out / "context.png")
        for c in classes:
            print(f"{c:<20} n={stat[c]['count']:<4} {stat[c]['normalised']:.3f}")
        print(f"wrote {out / 'context.json'} and context.png")
    return 0


_FORMULA = (
    "E_b(p) = sum_i g_b,i(p) (r_s RF_i)^2 / sum_i g_b,i(p); c_o = mean_b mean_{p in box} E_b(p) / box area; "
    "class value = mean c_o over its objects, divided by the largest class value"
)


def _add_lsk(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lsk-kernels", dest="lsk_kernels", help="LSK variant, e.g. '[[3,1],[5,2],[7,3]]'")
    p.add_argument("--lsk-selection", dest="lsk_selection", choices=["spatial", "none", "channel"])
    p.add_argument("--lsk-pool", dest="lsk_pool", help="e.g. '[avg]'")
    p.add_argument("--seed", type=int, default=0, help="random init / synthetic images seed")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``analyze erf`` and ``analyze selection``."""
    analyze = subparsers.add_parser("analyze", help="receptive-field and selection-map analysis (JSON + PNG)")
    sub = analyze.add_subparsers(dest="analyze_command", metavar="ANALYZE_COMMAND")
    analyze.set_defaults(func=lambda args: (analyze.print_help(), 2)[1])

    erf = sub.add_parser(
        "erf",
        help="effective receptive field per stage (RepLKNet method), several models side by side",
        description="ERF of each stage's centre output position, accumulated over images; erf.json holds the "
        "high-contribution area ratios at t = 0.2, 0.3, 0.5, 0.99, erf_stage{1-4}.png one panel per --model.",
    )
    erf.add_argument("--model", action="append", help="timm model name (repeat for side-by-side panels)")
    erf.add_argument("--checkpoint", help="weights for the (single) model; default random init")
    erf.add_argument("--images", help="folder of images (default: generated scenes, see --synthetic)")
    erf.add_argument("--synthetic", type=int, default=0, help="number of generated scenes (or max images)")
    erf.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    erf.add_argument("--batch", type=int, default=4, help="images per backward pass")
    erf.add_argument("--out", required=True, help="output folder")
    _add_lsk(erf)
    erf.set_defaults(func=cmd_erf)

    sel = sub.add_parser(
        "selection",
        help="LSK spatial selection gates per block (+ the per-class context statistic with --labels)",
        description="Per image, a PNG of every LSK block's sigmoid gates (rows: branches) and their mean/std in "
        "selection.json. With DOTA labelTxt files (--labels DIR, same stem) also context.json/png: per class, "
        "expected selected receptive field / box area, normalised so the largest class is 1.",
    )
    sel.add_argument("images", nargs="+", help="image files")
    sel.add_argument("--checkpoint", help="LSKNet weights (backbone, detector, segmenter or training checkpoint)")
    sel.add_argument("--model", help="lsknet_t | lsknet_s (default: from the checkpoint)")
    sel.add_argument("--labels", help="folder of DOTA labelTxt files (<image stem>.txt)")
    sel.add_argument("--size", type=int, default=0, help="resize images to this square side (default: nearest x32)")
    sel.add_argument("--out", required=True, help="output folder")
    _add_lsk(sel)
    sel.set_defaults(func=cmd_selection)
