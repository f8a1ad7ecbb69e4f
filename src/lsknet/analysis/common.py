"""Shared pieces of the analysis tools: model building from a name + checkpoint, image batches, figure saving."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from lsknet.atomic import atomic_target
from lsknet.errors import CheckpointError, ConfigError
from lsknet.models import backbone as _backbone

__all__ = ["build_features", "find_lsknet", "image_tensor", "load_image_batch", "save_figure", "synthetic_images"]

# Where the backbone sits in checkpoints of this project's tasks and of MMRotate/MMSeg (tried in this order).
_BACKBONE_PREFIXES = ("", "backbone.", "model.", "model.backbone.", "model.backbone.model.")
VARIANTS_BY_WIDTH = {32: "lsknet_t", 64: "lsknet_s"}


def find_lsknet(model: nn.Module) -> _backbone.LSKNet:
    """The :class:`LSKNet` inside ``model`` (itself, a timm ``features_only`` wrapper, a detector or segmenter)."""
    for module in model.modules():
        if isinstance(module, _backbone.LSKNet):
            return module
    raise ConfigError(f"{type(model).__name__} holds no LSKNet backbone")


def _backbone_state(checkpoint: str | Path) -> dict[str, Tensor]:
    from lsknet.models.checkpoint import read_checkpoint

    state = read_checkpoint(checkpoint, prefix="")
    for prefix in _BACKBONE_PREFIXES:
        if prefix + "patch_embed1.proj.weight" in state:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    raise CheckpointError(f"{checkpoint}: no LSKNet backbone weights (patch_embed1.proj.weight) under any of "
                          f"the prefixes {', '.join(repr(p) for p in _BACKBONE_PREFIXES)}")


def build_features(
    name: str | None, checkpoint: str | Path | None = None, **kwargs: Any
) -> tuple[nn.Module, str]:
    """A timm ``features_only`` model (eval mode) and its name. ``name=None`` takes the LSKNet variant from the
    checkpoint's first-stage width. The checkpoint may be a backbone file in any official layout, a detector or
    segmenter checkpoint, or a training checkpoint of this project (the backbone sub-dict is found by its keys)."""
    state = _backbone_state(checkpoint) if checkpoint is not None else None
    if name is None:
        if state is None:
            raise ConfigError("give a model name or a checkpoint")
        width = int(state["patch_embed1.proj.weight"].shape[0])
        name = VARIANTS_BY_WIDTH.get(width)
        if name is None:
            raise CheckpointError(f"{checkpoint}: first-stage width {width} is neither LSKNet-T (32) nor -S (64)")
    try:
        model = timm.create_model(name, features_only=True, pretrained=False, **kwargs)
    except RuntimeError as err:
        raise ConfigError(f"cannot build {name!r} with features_only: {err}") from None
    if state is not None:
        if name.startswith("lsknet"):
            from lsknet.models.checkpoint import load_backbone_weights

            load_backbone_weights(model, state)
        else:
            from lsknet.models.factory import load_checkpoint

            load_checkpoint(model, checkpoint, strict=False)
    return model.eval(), name


def image_tensor(images: Sequence[np.ndarray] | np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float normalised with the ImageNet mean/std."""
    x = torch.as_tensor(np.ascontiguousarray(np.stack(list(images)))).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_image_batch(paths: Sequence[str | Path], size: int | None = None) -> tuple[list[np.ndarray], list]:
    """Decode images to (H, W, 3) uint8 (resized to ``size`` x ``size`` if given); returns them and the original
    (H, W) of each."""
    from PIL import Image

    from lsknet.data.scene import load_image

    out, shapes = [], []
    for path in paths:
        array = load_image(path)
        shapes.append(array.shape[:2])
        if size is not None and array.shape[:2] != (size, size):
            array = np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR))
        out.append(array)
    return out, shapes


def synthetic_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` generated aerial-like scenes (lsknet.data.synthetic_scenes), (size, size, 3) uint8."""
    from lsknet.data.synthetic_scenes import SCENE_CLASSES, render_scene

    return [render_scene(SCENE_CLASSES[i % len(SCENE_CLASSES)], size, seed, i) for i in range(n)]


def save_figure(fig: Any, path: str | Path, dpi: int = 80) -> Path:
    """Save a matplotlib figure as PNG atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_target(path) as temp:
            fig.savefig(temp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
