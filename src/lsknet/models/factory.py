"""One entry point that turns a model name (+ optional checkpoint) into a ready ``nn.Module``.

Names:

- ``lsknet_t``, ``lsknet_s``: the timm backbone / classifier (any timm keyword: ``num_classes``, ``features_only``,
  ``in_chans``, ``drop_path_rate``, ...). ``checkpoint`` is read with :func:`lsknet.models.checkpoint.read_checkpoint`
  (every official layout) and loaded strictly for the backbone.
- ``lsknet_{t,s}_{orcnn,roitrans,s2anet,r3det}``: the detectors of the official model zoo: Oriented R-CNN, RoI
  Transformer, S2A-Net, R3Det (``lsknet.models.detectors.build_detector``).
- ``lsknet_{t,s}_{unetformer,upernet}``: segmentation (``lsknet.models.segmentation.build_segmenter``).

The detector and segmenter builders are imported lazily, so this module works before/without them.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import timm
from torch import nn

from lsknet.errors import CheckpointError, ConfigError
from lsknet.models import backbone as _backbone  # noqa: F401  (registers lsknet_t / lsknet_s in timm)
from lsknet.models.checkpoint import (
    load_backbone_weights,
    load_state_dict_checked,
    normalize_state_dict,
    read_checkpoint,
)

__all__ = ["MODEL_NAMES", "create_model", "load_checkpoint"]

BACKBONES = ("lsknet_t", "lsknet_s")
SEG_HEADS = ("unetformer", "upernet")
DETECTOR_HEADS = ("orcnn", "roitrans", "s2anet", "r3det")
MODEL_NAMES = (
    *BACKBONES,
    *(f"{b}_{d}" for d in DETECTOR_HEADS for b in BACKBONES),
    *(f"{b}_{h}" for b in BACKBONES for h in SEG_HEADS),
)
_NAME_RE = re.compile(rf"^(lsknet_[ts])(?:_({'|'.join(DETECTOR_HEADS + SEG_HEADS)}))?$")


def _import(module: str, attr: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"model {name!r} needs {module}.{attr}, which is not available: {err}") from err


def create_model(name: str, checkpoint: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build the model called ``name`` (see module doc) and load ``checkpoint`` into it if given.

    Raises :class:`ConfigError` for an unknown name and :class:`CheckpointError` for a missing or unfitting checkpoint.
    """
    match = _NAME_RE.match(name)
    if not match:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    variant, kind = match.groups()
    if kind is None:
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise CheckpointError(f"checkpoint not found: {checkpoint}")
        model = timm.create_model(variant, **kwargs)
        if checkpoint is not None:
            load_backbone_weights(model, checkpoint)
        return model
    if kind in DETECTOR_HEADS:
        build = _import("lsknet.models.detectors", "build_detector", name)
        return build(name, checkpoint=checkpoint, **kwargs)
    build = _import("lsknet.models.segmentation", "build_segmenter", name)
    return build(variant, kind, checkpoint=checkpoint, **kwargs)


def _is_lsknet(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    return isinstance(model, _backbone.LSKNet) or isinstance(inner, _backbone.LSKNet)


def load_checkpoint(
    model: nn.Module, path: str | Path, *, use_ema: bool = True, strict: bool = True, prefix: str = ""
) -> nn.Module:
    """Load a checkpoint file into ``model`` and return it.

    LSKNet backbones/classifiers (incl. timm ``features_only`` wrappers) use the backbone rules of
    :func:`~lsknet.models.checkpoint.load_backbone_weights` (all official layouts, ``backbone.`` prefixes, head
    loaded only if it fits). Any other model (detector, segmenter) loads the whole un-nested state dict, minus
    ``module.`` prefixes and minus ``prefix`` if given; with ``strict`` a missing, unexpected or mis-shaped key raises
    :class:`CheckpointError` naming the keys.
    """
    if _is_lsknet(model):
        load_backbone_weights(model, path, prefix=prefix or None, use_ema=use_ema)
        return model
    state_dict = read_checkpoint(path, use_ema=use_ema, prefix="")
    if prefix:
        state_dict = normalize_state_dict(state_dict, prefix=prefix)
    load_state_dict_checked(model, state_dict, source=str(path), what=type(model).__name__, strict=strict)
    return model
