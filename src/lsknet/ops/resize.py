"""Image-size arithmetic of MMCV's keep-ratio rescale (``mmcv.rescale_size``), shared by training and test resize."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["keep_ratio_size"]


def keep_ratio_size(height: int, width: int, scale: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) of an image rescaled with its aspect ratio kept to fit ``scale`` (an int or two ints, any order):
    factor ``min(max(scale) / long side, min(scale) / short side)``, sides ``int(side * factor + 0.5)``. Small
    images are enlarged (MMRotate ``RResize(img_scale=..., keep_ratio=True)``)."""
    s = (int(scale), int(scale)) if isinstance(scale, (int, float)) else (int(scale[0]), int(scale[1]))
    factor = min(max(s) / max(height, width), min(s) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)
