"""``lsknet export``: write an ONNX file of a trained checkpoint (any task) or of a bare LSKNet backbone.

Examples::

    lsknet export --checkpoint runs/dota/checkpoints/best.ckpt --format onnx --out orcnn.onnx
    lsknet export --model lsknet_t --out lsknet_t.onnx --size 224 --static
    lsknet predict --checkpoint orcnn.onnx scene.png --out preds     # onnxruntime, same outputs as the .ckpt
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lsknet.errors import ConfigError

BACKBONES = ("lsknet_t", "lsknet_s")


def _config_size(cfg: dict[str, Any]) -> int | None:
    data = cfg.get("data") or {}
    for key in ("tile_size", "image_size", "crop_size"):
        value = data.get(key)
        if isinstance(value, (list, tuple)) and value:
            value = max(value)
        if isinstance(value, (int, float)) and value > 0:
            return int(value)
    return None


def cmd_export(args: argparse.Namespace) -> int:
    from lsknet.export import model_kind, to_onnx

    if args.format != "onnx":
        raise ConfigError(f"--format {args.format!r} is not supported (onnx)")
    if bool(args.checkpoint) == bool(args.model):
        raise ConfigError("give either --checkpoint CKPT (a trained model) or --model lsknet_t|lsknet_s (a backbone)")
    metadata: dict[str, Any] = {}
    if args.checkpoint:
        from lsknet.tasks import runner

        if Path(args.checkpoint).suffix.lower() == ".onnx":
            raise ConfigError(f"{args.checkpoint} is already an ONNX file")
        module, _, cfg = runner.load_module(args.checkpoint, list(args.overrides), build_data=False)
        model = module.model
        metadata["config"] = cfg
        metadata["source"] = Path(args.checkpoint).name
        classes = getattr(module, "classes", None) or (cfg.get("data") or {}).get("classes")
        if classes and not isinstance(classes, str):
            metadata["classes"] = list(classes)
        size = args.size or _config_size(cfg) or 224
    else:
        import timm

        import lsknet.models.backbone  # noqa: F401  (registers the LSKNet timm models)
        from lsknet.models.checkpoint import load_backbone_weights

        if args.model not in BACKBONES:
            raise ConfigError(f"--model must be one of {', '.join(BACKBONES)}, not {args.model!r}")
        model = timm.create_model(args.model, features_only=True)
        if args.weights:
            load_backbone_weights(model, args.weights)
        metadata["source"] = args.model
        size = args.size or 224
    kind = model_kind(model)
    batch = 1 if kind == "detector" else args.batch
    path = to_onnx(
        model,
        args.out,
        input_size=(batch, 3, size, size),
        dynamic=args.dynamic,
        opset=args.opset,
        metadata=metadata,
        optimize=args.optimize,
    )
    shape = "dynamic" if args.dynamic else f"static {batch}x3x{size}x{size}"
    print(f"wrote {path} ({kind}, {shape} input, {path.stat().st_size / 1e6:.1f} MB)")
    if args.quantize:
        from lsknet.export.quantize import quantize_int8

        if kind == "detector":
            raise ConfigError("--quantize int8 is for classifiers and backbones (the detector stays float32)")
        qpath = quantize_int8(path, path.with_name(f"{path.stem}.int8.onnx"))
        print(f"wrote {qpath} (int8 dynamic quantization, {qpath.stat().st_size / 1e6:.1f} MB)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``."""
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint (classify / detect / segment) or a backbone to ONNX",
        description="Trace the eager model into one ONNX file with lsknet metadata (classes, preprocessing, config). "
        "The detector is exported end to end: image (1, 3, H, W) RGB 0..255 -> rboxes, scores, labels. "
        "The file runs with `lsknet predict --checkpoint FILE.onnx` and `lsknet eval --checkpoint FILE.onnx`.",
    )
    p.add_argument("--checkpoint", metavar="CKPT", help="an lsknet training checkpoint (.ckpt)")
    p.add_argument("--model", metavar="NAME", help="a bare backbone instead: lsknet_t or lsknet_s (features_only)")
    p.add_argument("--weights", metavar="PTH", help="with --model: backbone weights (any official layout)")
    p.add_argument("--format", default="onnx", help="export format (onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--size", type=int, default=None, help="example input height = width (default: config or 224)")
    p.add_argument("--batch", type=int, default=1, help="example batch size (classifier / backbone / segmenter)")
    p.add_argument("--dynamic", dest="dynamic", action="store_true", default=True, help="free batch / size (default)")
    p.add_argument("--static", dest="dynamic", action="store_false", help="fix the input shape to the example's")
    p.add_argument("--optimize", action="store_true", help="store onnxruntime's portable graph optimisations")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--quantize", choices=("int8",), help="also write FILE.int8.onnx (dynamic int8 quantization)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_export, command_parser=p)
