"""lsknet: LSKNet for remote sensing in pure PyTorch.

The stable public API: ``create_model``, ``load_checkpoint``, ``optimize_for_inference``; the task modules
(``SceneClassifier``, ``OrientedDetector``, ``SegmentationTask``); ``OrientedRCNN`` / ``build_oriented_rcnn`` /
``build_detector`` and ``build_segmenter``; ``Predictor`` (oriented detection on images of any size) and its
``Detections`` results; ``SlidingWindowSegmenter``; ``evaluate_dota``; ``train`` / ``evaluate`` (the runner behind
the CLI); the error types; and the rotated-box ops in :mod:`lsknet.ops`. ``import lsknet`` registers
``lsknet_t``/``lsknet_s`` in timm.
Task and inference classes are imported on first use, so ``import lsknet`` does not pull in Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

from lsknet.errors import CheckpointError, ConfigError, DatasetFormatError, LSKNetError
from lsknet.inference.optimize import optimize_for_inference
from lsknet.models import backbone as _backbone  # noqa: F401  registers timm models
from lsknet.models.factory import create_model, load_checkpoint

__version__ = "0.1.0"

_LAZY = {
    "SceneClassifier": "lsknet.tasks.classification",
    "OrientedDetector": "lsknet.tasks.detection",
    "SegmentationTask": "lsknet.tasks.segmentation",
    "Predictor": "lsknet.inference.predictor",
    "Detections": "lsknet.inference.predictor",
    "OrientedRCNN": "lsknet.models.oriented_rcnn",
    "build_oriented_rcnn": "lsknet.models.oriented_rcnn",
    "build_detector": "lsknet.models.detectors",
    "build_segmenter": "lsknet.models.segmentation",
    "SlidingWindowSegmenter": "lsknet.inference.sliding_window",
    "evaluate_dota": "lsknet.evaluation.dota",
    "train": "lsknet.tasks.runner",
    "evaluate": "lsknet.tasks.runner",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetFormatError",
    "LSKNetError",
    "__version__",
    "create_model",
    "load_checkpoint",
    "optimize_for_inference",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lsknet' has no attribute {name!r}")
