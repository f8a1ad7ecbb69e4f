"""Metrics: DOTA Task1 mAP (official semantics), scene classification, semantic segmentation."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "evaluate_dota": "lsknet.evaluation.dota",
    "DOTAEvalResult": "lsknet.evaluation.dota",
    "metrics_from_confusion": "lsknet.evaluation.segmentation",
    "score_directories": "lsknet.evaluation.segmentation",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lsknet.evaluation' has no attribute {name!r}")
