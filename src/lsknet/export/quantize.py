"""Dynamic int8 quantization of an exported classifier / backbone with onnxruntime (weights int8, activations
quantized on the fly). The accuracy cost is measured in BENCHMARKS.md ("ONNX export"); the detector stays float32
(its box regression and rotated geometry are not worth the risk for a small CPU gain)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lsknet.export import METADATA_KEY, ExportError, read_metadata, require

__all__ = ["quantize_int8"]


def quantize_int8(
    source: str | Path, target: str | Path, op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
) -> Path:
    """Write a dynamically int8-quantized copy of the lsknet export ``source`` to ``target``; returns ``target``.

    ``op_types``: the operators whose weights are quantized. The ``lsknet`` metadata is kept and records
    ``"quantized": "int8-dynamic"``.
    """
    import json

    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(source), Path(target)
    meta = read_metadata(source)
    if meta["kind"] == "detector":
        raise ExportError(f"{source}: int8 quantization is offered for classifiers and backbones, not the detector")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types))
        proto = onnx.load(out)
        meta["quantized"] = "int8-dynamic"
        meta["quantized_ops"] = list(op_types)
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        staged = Path(tmp) / "staged.onnx"
        onnx.save(proto, staged)
        os.replace(staged, target)
    return target
