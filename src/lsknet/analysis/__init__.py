"""The paper's experiments as tools: receptive fields, selection maps, identical-hardware comparison, robustness.

Uses ``models``, ``data`` and ``evaluation``; nothing below imports it. Heavy pieces are imported on first use::

    from lsknet.analysis import receptive_field, effective_receptive_field, area_ratio, selection_maps
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "receptive_field": "lsknet.analysis.receptive",
    "effective_receptive_field": "lsknet.analysis.receptive",
    "area_ratio": "lsknet.analysis.receptive",
    "stage_erfs": "lsknet.analysis.receptive",
    "selection_maps": "lsknet.analysis.selection",
    "context_statistic": "lsknet.analysis.selection",
    "compare_models": "lsknet.analysis.compare",
    "run_robustness": "lsknet.analysis.robustness",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lsknet.analysis' has no attribute {name!r}")
