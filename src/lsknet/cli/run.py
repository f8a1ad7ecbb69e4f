"""``lsknet train | eval | predict | demo``: run any task (classify, detect, segment) from a config or a checkpoint.

Examples::

    lsknet train aid_lsknet_t data.root=/data/AID model.checkpoint=lsk_t_backbone-2ef8a593.pth
    lsknet train aid_lsknet_t data.root=/data/AID --print-config
    lsknet train --resume runs/aid_lsknet_t/20240101-120000/checkpoints/last.ckpt
    lsknet eval --checkpoint runs/.../checkpoints/best.ckpt data.root=/data/AID
    lsknet predict --checkpoint best.ckpt images/ scene.jpg --out preds --topk 5
    lsknet demo --out runs/demo --budget-minutes 3
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path
from typing import Any

from lsknet.config import apply_overrides, dump_config, load_config
from lsknet.errors import ConfigError

DEFAULT_DEMO_TASK = "detect"


def _task_module(name: str):
    """``lsknet.tasks.get_task`` with a one-line error for a task whose module is not part of this install yet."""
    from lsknet.tasks import TASK_MODULES, get_task

    try:
        return get_task(name)
    except ModuleNotFoundError as err:
        if err.name and TASK_MODULES.get(name, "").startswith(err.name):
            raise ConfigError(f"task {name!r} is not available in this version of lsknet") from None
        raise


def _task_demo(name: str):
    """``lsknet.tasks.get_demo`` with the same one-line error as :func:`_task_module`."""
    from lsknet.tasks import DEMO_ENTRIES, get_demo

    try:
        return get_demo(name)
    except ModuleNotFoundError as err:
        if err.name and DEMO_ENTRIES.get(name, ("",))[0].startswith(err.name):
            raise ConfigError(f"task {name!r} is not available in this version of lsknet") from None
        raise


def _split_resume(overrides: list[str]) -> tuple[list[str], str | None]:
    """``resume=PATH`` is accepted among the overrides as well as ``--resume PATH``."""
    rest, resume = [], None
    for item in overrides:
        if item.startswith("resume="):
            resume = item.split("=", 1)[1] or None
        else:
            rest.append(item)
    return rest, resume


def _apply_strict(cfg: dict[str, Any], strict: bool) -> dict[str, Any]:
    if strict:
        cfg.setdefault("data", {})["strict"] = True
    return cfg


def _accepted(function: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The options ``function`` accepts (all of them if it takes ``**kwargs``)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return options
    names = {p.name for p in parameters}
    return {k: v for k, v in options.items() if k in names}


def _print_summary(title: str, metrics: dict[str, Any]) -> None:
    shown = ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if not isinstance(v, dict)
    )
    print(f"{title}: {shown}")


def cmd_train(args: argparse.Namespace) -> int:
    from lsknet.tasks import runner

    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        args.overrides, args.config = [args.config, *args.overrides], None  # only overrides were given
    overrides, resume = _split_resume(list(args.overrides))
    resume = args.resume or resume
    if args.config is None:
        if resume is None:
            raise ConfigError("give a config file or preset name (or --resume CKPT to continue a run)")
        cfg = runner.checkpoint_config(resume)
    else:
        cfg = load_config(args.config)
    cfg = _apply_strict(apply_overrides(cfg, overrides), args.strict)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    result = runner.train(cfg, resume=resume)
    if result.trainer is None or result.trainer.is_global_zero:
        metrics = result.metrics.get("metrics", {})
        if result.best_checkpoint:
            _print_summary("final validation (best checkpoint)", metrics)
            print(f"best checkpoint: {result.best_checkpoint}")
        else:
            monitor = (cfg.get("trainer") or {}).get("monitor")
            why = f"{monitor} was never computed" if monitor else "trainer.monitor is null"
            _print_summary(f"metrics at the end of training (no best checkpoint: {why})", metrics)
        print(f"last checkpoint: {result.last_checkpoint}")
        print(f"run folder: {result.run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from lsknet.tasks import runner

    if not args.checkpoint:
        raise ConfigError("--checkpoint CKPT is required")
    overrides = list(args.overrides) + (["data.strict=true"] if args.strict else [])
    optimize = False if args.no_optimize else None  # None: the config's detect.optimize (default true)
    summary = runner.evaluate(args.checkpoint, overrides, out_dir=args.out, split=args.split, optimize=optimize)
    _print_summary(f"{args.split} metrics", summary["metrics"])
    print(f"results folder: {summary['out_dir']}")
    return 0


def _is_training_checkpoint(path: str) -> bool:
    """True for an lsknet training checkpoint (stored run config); False for other files (e.g. MMRotate detectors).
    Only the metadata is read (tensors memory-mapped)."""
    from lsknet.models.checkpoint import load_checkpoint_file

    if Path(path).suffix.lower() == ".onnx":  # lsknet export files: the runner reads their stored config
        return True
    obj = load_checkpoint_file(path, mmap=True)
    return isinstance(obj, dict) and isinstance((obj.get("hyper_parameters") or {}).get("config"), dict)


def _predict_foreign_detector(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """``lsknet predict`` with a detector checkpoint that is not an lsknet training checkpoint (MMRotate layout)."""
    from lsknet.inference.predictor import Predictor
    from lsknet.tasks.detection import predict_files

    if args.overrides:
        raise ConfigError(f"{args.checkpoint}: holds no run config, so --set overrides do not apply")
    predictor = Predictor.from_checkpoint(args.checkpoint, classes=args.classes, optimize=not args.no_optimize)
    out = Path(args.out) if args.out else Path("runs") / "predict" / time.strftime("predict-%Y%m%d-%H%M%S")
    return predict_files(predictor, list(args.sources), out, **_accepted(predict_files, options))


def cmd_predict(args: argparse.Namespace) -> int:
    from lsknet.tasks import runner

    options: dict[str, Any] = {}
    if args.topk is not None:
        options["topk"] = args.topk
    if args.strict:
        options["strict"] = True
    for name in ("bands", "scale", "formats", "min_area", "simplify", "tile", "stride"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if args.skip_existing:
        options["skip_existing"] = True
    if args.no_optimize:
        options["optimize"] = False
    if not _is_training_checkpoint(args.checkpoint):
        result = _predict_foreign_detector(args, options)
    else:
        module, _, cfg = runner.load_module(args.checkpoint, list(args.overrides), build_data=False)
        out = (
            Path(args.out)
            if args.out
            else Path("runs") / str(cfg.get("name", cfg["task"])) / time.strftime("predict-%Y%m%d-%H%M%S")
        )
        predict = _task_module(cfg["task"]).predict
        result = predict(module, list(args.sources), out, **_accepted(predict, options))
    for key, value in result.items():
        if isinstance(value, (list, tuple)):
            value = len(value)
        print(f"{key}: {value}")
    processed = result.get("num_images", result.get("images"))
    if processed == 0:
        skipped = result.get("skipped")
        skipped = len(skipped) if isinstance(skipped, (list, tuple)) else skipped
        print(f"lsknet predict: error: no input could be processed ({skipped} skipped, see the warnings above)",
              file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path("runs") / f"demo_{args.task}" / time.strftime("%Y%m%d-%H%M%S")
    options: dict[str, Any] = {"seed": args.seed, "overrides": list(args.overrides)}
    if args.model is not None:
        if args.task != "detect":
            raise ConfigError("--model applies to --task detect only")
        options["model"] = args.model
    if args.budget_minutes is not None:
        options["budget_minutes"] = args.budget_minutes
    print(f"lsknet demo ({args.task}): writing to {out}", file=sys.stderr, flush=True)
    demo = _task_demo(args.task)
    summary = demo(out, **_accepted(demo, options))
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        print(f"{key}: {value}")
    print(f"demo finished; results in {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``eval``, ``predict`` and ``demo``."""
    overrides_help = "config overrides key.sub=value (values parsed as YAML), e.g. optim.lr=1e-3 trainer.max_epochs=5"

    p = subparsers.add_parser("train", help="train a model from a config file or preset")
    p.add_argument("config", nargs="?", help="preset name (e.g. aid_lsknet_t) or YAML file")
    p.add_argument("overrides", nargs="*", help=overrides_help + "; resume=CKPT is accepted too")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--resume", metavar="CKPT", help="continue training from a checkpoint (e.g. .../last.ckpt)")
    p.add_argument("--strict", action="store_true", help="unreadable images are errors instead of counted skips")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("eval", help="evaluate a trained checkpoint on its validation (or test) data")
    p.add_argument("--checkpoint", metavar="CKPT", help="an lsknet training checkpoint (.ckpt) (required)")
    p.add_argument("overrides", nargs="*", help=overrides_help + " (e.g. data.root=... for other data)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--out", metavar="DIR", help="folder for metrics and reports (default runs/<name>/eval-<time>)")
    p.add_argument("--strict", action="store_true", help="unreadable images are errors instead of counted skips")
    p.add_argument("--no-optimize", action="store_true", help="detection: evaluate the eager model instead of the "
                   "lsknet.optimize_for_inference copy (config key detect.optimize: false does the same)")  # fmt: skip
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("predict", help="run a trained checkpoint on images or folders")
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="an lsknet training checkpoint (.ckpt) or an MMRotate LSKNet detector checkpoint (.pth)",
    )
    p.add_argument(
        "--classes",
        default=None,
        help="class names of an MMRotate detector checkpoint (list name such as dota1.0 or a file; "
        "default: the names stored in the file, else dota1.0)",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image files or folders (searched recursively)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<name>/predict-<time>)")
    p.add_argument("--topk", type=int, default=None, help="classification: how many classes per image (default 5)")
    p.add_argument("--strict", action="store_true", help="unreadable images are errors instead of counted skips")
    g = p.add_argument_group("whole scenes and GIS (rasters are read window by window; see README)")
    g.add_argument("--bands", metavar="B1,B2,B3", help="1-based raster bands to read, any order (default 1,2,3 or 1)")
    g.add_argument("--scale", metavar="MIN,MAX", help="raw values mapped to 0..255 (default: 8-bit as stored, other "
                   "types a per-scene 1st..99th percentile stretch)")  # fmt: skip
    g.add_argument("--format", dest="formats", metavar="LIST", help="comma list of outputs: detection task1,json,"
                   "png,geojson,gpkg,shp; segmentation geojson,gpkg,shp; classify grid geotiff,geojson,gpkg")
    g.add_argument("--skip-existing", action="store_true", help="scenes whose outputs are complete are not redone")
    p.add_argument("--no-optimize", action="store_true", help="detection: run the eager model instead of the "
                   "lsknet.optimize_for_inference copy (same detections up to float rounding)")  # fmt: skip
    g.add_argument("--min-area", type=float, default=None, help="segmentation polygons: drop smaller (CRS units^2)")
    g.add_argument("--simplify", type=float, default=None, help="segmentation polygons: tolerance in CRS units")
    g.add_argument("--tile", type=int, default=None, help="classification grid over a raster: cell size (pixels)")
    g.add_argument("--stride", type=int, default=None, help="classification grid: step between cells (default tile)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=overrides_help)
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("demo", help="generate data, train, evaluate and predict in a few minutes on CPU")
    p.add_argument("--task", choices=("classify", "detect", "segment"), default=DEFAULT_DEMO_TASK)
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/demo_<task>/<time>)")
    p.add_argument("--budget-minutes", type=float, default=None, help="approximate training time budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", metavar="NAME", help="detect: the detector to train, lsknet_{t,s}_{orcnn,roitrans,s2anet,"
                   "r3det} (default lsknet_t_orcnn)")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="overrides of the task's demo preset (e.g. trainer.max_epochs=2)")
    p.set_defaults(func=cmd_demo)
