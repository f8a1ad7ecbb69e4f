"""onnxruntime behind the PyTorch model interface: an exported file used wherever the model was.

:func:`load_onnx` returns a parameter-free ``nn.Module`` whose ``forward`` has the PyTorch model's contract, so the
:class:`~lsknet.inference.predictor.Predictor` (tiling, merging, outputs), the task modules' evaluation loops and
``lsknet predict`` / ``lsknet eval`` run an ``.onnx`` file exactly as they run a checkpoint:

- :class:`OnnxDetector`: list of (3, H, W) RGB 0..255 images (or a (B, 3, H, W) tensor) -> list of
  ``{"rboxes", "scores", "labels"}`` (one graph call per image);
- :class:`OnnxModel`: (B, 3, H, W) normalised tensor -> logits / segmentation logits / list of feature maps.

Files must be lsknet exports (``lsknet`` metadata, see :mod:`lsknet.export`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lsknet.errors import CheckpointError
from lsknet.export import read_metadata, require

__all__ = ["OnnxDetector", "OnnxModel", "load_onnx", "session_options"]


def session_options(threads: int | None = None) -> Any:
    """onnxruntime session options: ``threads`` intra-op threads (default: onnxruntime's choice), sequential."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxModel(nn.Module):
    """An exported classifier / backbone / segmenter run by onnxruntime (CPU); ``forward`` as the PyTorch model."""

    def __init__(self, path: str | Path, threads: int | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        ort = require("onnxruntime")
        self.path = Path(path)
        self.meta = meta if meta is not None else read_metadata(self.path)
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # a file onnxruntime cannot load (opset, corrupt weights)
            raise CheckpointError(f"{self.path}: onnxruntime cannot load it: {str(err).splitlines()[0]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.kind = str(self.meta["kind"])
        classes = self.meta.get("classes")
        self.classes = tuple(classes) if classes else None

    def _run(self, x: Tensor) -> list[np.ndarray]:
        return self.session.run(None, {self.input_names[0]: x.detach().to("cpu", torch.float32).contiguous().numpy()})

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        outs = [torch.from_numpy(o) for o in self._run(x)]
        if self.kind == "backbone" or len(outs) > 1:
            return outs
        return outs[0]

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, kind={self.kind!r}"


class OnnxDetector(OnnxModel):
    """An exported Oriented R-CNN (see :class:`lsknet.export.detector.DetectorGraph`); ``forward`` as
    :class:`~lsknet.models.oriented_rcnn.OrientedRCNN` in eval mode."""

    @property
    def num_classes(self) -> int:
        """Object classes the graph predicts."""
        return int(self.meta["num_classes"])

    def forward(self, images: Sequence[Tensor] | Tensor) -> list[dict[str, Tensor]]:  # type: ignore[override]
        if isinstance(images, Tensor):
            if images.ndim != 4:
                raise ValueError(f"expected a (B, 3, H, W) tensor or a list of (3, H, W) tensors, got {images.shape}")
            images = list(images)
        results = []
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[0] != 3 or min(img.shape[1:]) < 1:
                raise ValueError(f"image {i}: expected shape (3, H, W) RGB, got {tuple(img.shape)}")
            rboxes, scores, labels = self._run(img.unsqueeze(0))
            results.append(
                {
                    "rboxes": torch.from_numpy(rboxes),
                    "scores": torch.from_numpy(scores),
                    "labels": torch.from_numpy(labels).long(),
                }
            )
        return results


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
    """The runtime for an lsknet ONNX export (:class:`OnnxDetector` for detectors, else :class:`OnnxModel`).

    Raises :class:`CheckpointError` for a missing file or one that is not an lsknet export and
    :class:`~lsknet.export.MissingExtraError` when onnx / onnxruntime are not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    meta = read_metadata(path)
    cls = OnnxDetector if meta["kind"] == "detector" else OnnxModel
    return cls(path, threads, meta)
