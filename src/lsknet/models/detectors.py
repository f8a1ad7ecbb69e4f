"""The detector families by name: ``lsknet_{t,s}_{orcnn,roitrans,s2anet,r3det}`` -> their builders, a run config's
``model`` section -> a detector, and a checkpoint's keys -> the family it was written for.

===========  =========================================  ===================================================
kind         detector                                   builder
===========  =========================================  ===================================================
``orcnn``    Oriented R-CNN (the default)               :func:`lsknet.models.oriented_rcnn.build_oriented_rcnn`
``roitrans`` RoI Transformer                            ``lsknet.models.roi_transformer.build_roi_transformer``
``s2anet``   S2A-Net                                    ``lsknet.models.s2anet.build_s2anet``
``r3det``    R3Det                                      ``lsknet.models.r3det.build_r3det``
===========  =========================================  ===================================================

Every builder takes ``(variant, num_classes, checkpoint=None, *, backbone_checkpoint, drop_path_rate,
proj_drop_rate, fpn_channels, ...)``; Oriented R-CNN takes ``rpn`` / ``roi`` overrides, the others a ``head``
mapping. Builders are imported when first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lsknet.errors import ConfigError

__all__ = [
    "DETECTOR_KINDS",
    "MODEL_CONFIG_KEYS",
    "build_detector",
    "detector_from_config",
    "detector_kind_of_state_dict",
    "split_detector_name",
]

DETECTOR_KINDS: dict[str, tuple[str, str]] = {
    "orcnn": ("lsknet.models.oriented_rcnn", "build_oriented_rcnn"),
    "roitrans": ("lsknet.models.roi_transformer", "build_roi_transformer"),
    "s2anet": ("lsknet.models.s2anet", "build_s2anet"),
    "r3det": ("lsknet.models.r3det", "build_r3det"),
}

# keys of a run config's ``model`` section; the per-kind ones are checked in ``detector_from_config``
MODEL_CONFIG_KEYS = (
    "name",
    "checkpoint",
    "backbone_checkpoint",
    "drop_path_rate",
    "proj_drop_rate",
    "fpn_channels",
    "rpn",  # Oriented R-CNN only
    "roi",  # Oriented R-CNN only
    "head",  # RoI Transformer / S2A-Net / R3Det: keyword overrides of their heads
    "lsk_kernels",  # LSK block ablation variants (lsknet.models.backbone.LSKModule); null = official
    "lsk_selection",
    "lsk_pool",
)
_KIND_KEYS = {"orcnn": ("rpn", "roi"), "roitrans": ("head",), "s2anet": ("head",), "r3det": ("head",)}

# a key prefix only one family's checkpoints have (MMRotate 0.3.4 module names)
_KIND_MARKERS = (
    ("s2anet", ("fam_head.", "odm_head.", "align_conv.")),
    ("r3det", ("refine_head.", "feat_refine_module.")),
    ("roitrans", ("roi_head.bbox_head.1.", "roi_head.bbox_head.0.")),
    ("orcnn", ("roi_head.bbox_head.fc_cls.", "rpn_head.rpn_conv.")),
)


def split_detector_name(name: str) -> tuple[str, str]:
    """``"lsknet_s_roitrans"`` -> ``("lsknet_s", "roitrans")``; a name without a known suffix is an Oriented R-CNN
    with that backbone (``"lsknet_t"`` -> ``("lsknet_t", "orcnn")``, ``"resnet18"`` -> ``("resnet18", "orcnn")``)."""
    text = str(name)
    for kind in DETECTOR_KINDS:
        if text.lower().endswith("_" + kind):
            return text[: -len(kind) - 1], kind
    return text, "orcnn"


def _builder(kind: str, name: str) -> Any:
    module, attr = DETECTOR_KINDS[kind]
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"detector {name!r} needs {module}.{attr}, which is not available: {err}") from err


def build_detector(name: str, num_classes: int = 15, checkpoint: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """The detector called ``name`` (``lsknet_t_orcnn``, ``lsknet_s_s2anet``, ...; see the module doc)."""
    variant, kind = split_detector_name(name)
    return _builder(kind, name)(variant, num_classes=num_classes, checkpoint=checkpoint, **kwargs)


def detector_from_config(model_cfg: Mapping[str, Any], num_classes: int, load_checkpoint: bool = True) -> nn.Module:
    """Build the detector described by a run config's ``model`` section (keys :data:`MODEL_CONFIG_KEYS`; ``name``
    picks the family, default ``lsknet_t`` = Oriented R-CNN).

    ``load_checkpoint=False`` skips ``checkpoint`` / ``backbone_checkpoint`` (when the weights come from a
    training checkpoint anyway).
    """
    cfg = dict(model_cfg or {})
    unknown = sorted(set(cfg) - set(MODEL_CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown model key(s) {unknown}; known: {', '.join(MODEL_CONFIG_KEYS)}")
    name = str(cfg.pop("name", "lsknet_t"))
    variant, kind = split_detector_name(name)
    per_kind = {k for keys in _KIND_KEYS.values() for k in keys}
    for key in per_kind - set(_KIND_KEYS[kind]):  # another family's options: absent, null or {} (the defaults)
        if cfg.get(key) in (None, {}):
            cfg.pop(key, None)
    misplaced = sorted(k for k in cfg if k in per_kind and k not in _KIND_KEYS[kind])
    if misplaced:
        raise ConfigError(
            f"model key(s) {misplaced} do not apply to {name!r}; it takes {', '.join(_KIND_KEYS[kind])}"
        )
    from lsknet.models.backbone import lsk_kwargs

    lsk_kwargs(cfg, variant)  # LSK block options only for LSKNet backbones
    checkpoint = cfg.pop("checkpoint", None)
    backbone_checkpoint = cfg.pop("backbone_checkpoint", None)
    kwargs = {k: v for k, v in cfg.items() if v is not None}
    return _builder(kind, name)(
        variant,
        num_classes=num_classes,
        checkpoint=checkpoint if load_checkpoint else None,
        backbone_checkpoint=backbone_checkpoint if load_checkpoint else None,
        **kwargs,
    )


def detector_kind_of_state_dict(state_dict: Mapping[str, Any]) -> str | None:
    """The family (``orcnn``, ``roitrans``, ``s2anet``, ``r3det``) whose MMRotate 0.3.4 key layout ``state_dict``
    has, or ``None`` when no family's marker keys are present."""
    keys = list(state_dict)
    for kind, prefixes in _KIND_MARKERS:
        if any(k.startswith(prefixes) for k in keys):
            return kind
    return None
