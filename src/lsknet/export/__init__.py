"""ONNX export of every lsknet model: backbones, classifiers, segmenters and whole detectors (all four families).

::

    from lsknet.export import to_onnx
    to_onnx(timm.create_model("lsknet_t", features_only=True), "lsknet_t.onnx")     # one output per map
    to_onnx(detector, "orcnn.onnx", input_size=(1, 3, 1024, 1024))                  # image -> rboxes, scores, labels

The graph is traced with PyTorch's TorchScript-based exporter from the *eager* model: it runs 2-4x faster in
onnxruntime than eager PyTorch on CPU, unlike an export of ``optimize_for_inference`` (see BENCHMARKS.md).
``dynamic=True`` (default) leaves the batch size and the spatial size free (detector: any height and width, the
graph pads to a multiple of 32 itself; batch of one image). Every file carries ``lsknet`` metadata (kind, input
convention, class names, normalisation, the run config when exported from a checkpoint), which
:mod:`lsknet.inference.onnx_runtime` reads back.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lsknet.atomic import atomic_target
from lsknet.errors import CheckpointError, LSKNetError

__all__ = ["EXPORT_FORMAT_VERSION", "METADATA_KEY", "ExportError", "MissingExtraError", "to_onnx"]

METADATA_KEY = "lsknet"
EXPORT_FORMAT_VERSION = 1
DEFAULT_OPSET = 17
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExportError(LSKNetError):
    """A model or option that cannot be exported."""


class MissingExtraError(LSKNetError, ImportError):
    """An optional dependency (an extra of the lsknet package) is not installed."""


def require(module: str, extra: str = "export") -> Any:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{module} is not installed; it comes with the '{extra}' extra: pip install 'lsknet[{extra}]'"
        ) from None


def model_kind(model: nn.Module) -> str:
    """``detector``, ``segmenter``, ``backbone`` (a timm ``features_only`` model) or ``classifier``."""
    from lsknet.models.detector_base import Detector

    if isinstance(model, Detector):
        return "detector"
    if hasattr(model, "decode_head") or type(model).__name__.endswith("Segmenter"):
        return "segmenter"
    if hasattr(model, "feature_info") and not hasattr(model, "get_classifier"):
        return "backbone"
    return "classifier"


def _atomic_save(model_proto: Any, path: Path) -> None:
    import onnx

    with atomic_target(path) as tmp:
        onnx.save(model_proto, tmp)


def _dynamic_axes(inputs: Sequence[str], outputs: Sequence[str], shapes: Sequence[torch.Size], kind: str) -> dict:
    axes: dict[str, dict[int, str]] = {}
    if kind == "detector":
        axes["image"] = {2: "height", 3: "width"}
        for name in outputs:
            axes[name] = {0: "detections"}
        return axes
    axes[inputs[0]] = {0: "batch", 2: "height", 3: "width"}
    for i, (name, shape) in enumerate(zip(outputs, shapes)):
        axes[name] = {0: "batch"} if len(shape) < 4 else {0: "batch", 2: f"height{i}", 3: f"width{i}"}
    return axes


def to_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: Sequence[int] = (1, 3, 224, 224),
    dynamic: bool = True,
    opset: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    optimize: bool = False,
) -> Path:
    """Export ``model`` (eval mode is used; the model is left as it was) to an ONNX file at ``path``; returns it.

    Args:
        model: a detector (Oriented R-CNN, RoI Transformer, S2A-Net or R3Det; see :mod:`lsknet.export.families`),
            a segmenter, a timm classifier or a timm ``features_only`` backbone (outputs ``feat0``, ``feat1``, ...
            one per map).
        input_size: (B, 3, H, W) of the example input used for tracing (detector: B must be 1; RGB 0..255 input,
            classifier / backbone / segmenter: normalised input, like the PyTorch model).
        dynamic: free batch and spatial axes (detector: free height and width); ``False`` fixes them.
        opset: ONNX opset (default 17).
        metadata: extra entries stored under the ``lsknet`` metadata key (e.g. ``classes``, ``config``).
        optimize: also apply onnxruntime's portable graph optimisations (constant folding, fusions) to the file.
    """
    onnx = require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in input_size)
    if len(size) != 4 or size[1] != 3 or min(size) < 1:
        raise ExportError(f"input_size must be (batch, 3, height, width), got {tuple(input_size)}")
    kind = model_kind(model)
    was_training = model.training
    model.eval()
    try:
        example = torch.rand(size) * 255.0 if kind == "detector" else torch.randn(size)
        if kind == "detector":
            from lsknet.export.detector import DetectorGraph
            from lsknet.export.families import graph_for
            from lsknet.models.oriented_rcnn import OrientedRCNN

            family_graph = None if isinstance(model, OrientedRCNN) else graph_for(model)
            if not isinstance(model, OrientedRCNN) and family_graph is None:
                raise ExportError(
                    f"ONNX export of {type(model).__name__} is not available: detector graphs exist for Oriented "
                    "R-CNN, RoI Transformer, S2A-Net and R3Det; run this detector in PyTorch (lsknet predict / eval "
                    "with the .ckpt)"
                )
            if getattr(model, "test_resize", None) is not None:
                raise ExportError(
                    f"the detector has test_resize={model.test_resize!r}: the exported graph runs images at their own "
                    "size; set model.test_resize = None (and resize the images yourself) to export"
                )
            if size[0] != 1:
                raise ExportError(f"the detector graph takes one image at a time: input_size {size} must have batch 1")
            net: nn.Module = DetectorGraph(model) if family_graph is None else family_graph
            inputs, outputs = ["image"], ["rboxes", "scores", "labels"]
            shapes: list[torch.Size] = []
        else:
            net = model
            with torch.no_grad():
                out = model(example)
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            shapes = [o.shape for o in outs]
            inputs = ["images"]
            outputs = [f"feat{i}" for i in range(len(outs))] if len(outs) > 1 or kind == "backbone" else ["output"]
            if kind == "segmenter":
                outputs = ["logits"]
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".export", dir=path.parent)
        os.close(fd)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer warnings about python values; the tests check the graph
                torch.onnx.export(
                    net,
                    (example,),
                    tmp,
                    dynamo=False,
                    input_names=inputs,
                    output_names=outputs,
                    dynamic_axes=_dynamic_axes(inputs, outputs, shapes, kind) if dynamic else None,
                    opset_version=opset or DEFAULT_OPSET,
                    do_constant_folding=True,
                )
            proto = onnx.load(tmp)
        except LSKNetError:
            raise
        except Exception as err:
            raise ExportError(f"cannot export {type(model).__name__} to ONNX: {type(err).__name__}: {err}") from err
        finally:
            Path(tmp).unlink(missing_ok=True)
    finally:
        model.train(was_training)
    meta: dict[str, Any] = {
        "format_version": EXPORT_FORMAT_VERSION,
        "kind": kind,
        "inputs": inputs,
        "outputs": outputs,
        "export_size": list(size),
        "dynamic": bool(dynamic),
    }
    if kind == "detector":
        meta["preprocessing"] = {
            "input": "RGB float 0..255, (1, 3, H, W); normalised and padded inside the graph",
            "pixel_mean": model.pixel_mean.flatten().tolist(),
            "pixel_std": model.pixel_std.flatten().tolist(),
            "size_divisor": model.size_divisor,
        }
        meta["num_classes"] = model.num_classes
        meta["box_format"] = "rboxes (cx, cy, w, h, theta): pixels, radians, le90"
    else:
        meta["preprocessing"] = {
            "input": "RGB (x / 255 - mean) / std, (B, 3, H, W)",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }
    meta.update(dict(metadata or {}))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name = "lsknet"
    if optimize:
        proto = _ort_optimize(proto, path)
    _atomic_save(proto, path)
    return path


def _ort_optimize(proto: Any, path: Path) -> Any:
    """onnxruntime's extended (hardware-independent) graph optimisations, saved into the model."""
    import onnx

    ort = require("onnxruntime")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(proto, src)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(dst)
    del optimized.metadata_props[:]
    optimized.metadata_props.extend(proto.metadata_props)
    return optimized


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``lsknet`` metadata of an exported file; :class:`CheckpointError` when it is not an lsknet export."""
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(err).__name__}: {err})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise CheckpointError(
            f"{path}: not an lsknet export (no '{METADATA_KEY}' metadata); export the model with `lsknet export`"
        )
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: broken '{METADATA_KEY}' metadata: {err}") from None
    if not isinstance(meta, dict) or meta.get("kind") not in ("detector", "segmenter", "backbone", "classifier"):
        raise CheckpointError(f"{path}: '{METADATA_KEY}' metadata names no known model kind")
    return meta
