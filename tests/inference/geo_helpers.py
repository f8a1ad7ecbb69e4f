"""Helpers for the scene tests: a stand-in detector whose answer is known, GeoTIFF writers.

:class:`CentreDetector` answers one rotated box at the centre of every window it sees (global position known to the
test from the window layout), so the expected detections, skipped windows and dropped centres can be computed by hand.
It records the crops it saw (to check the model-input rule)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

BOX_W, BOX_H, BOX_THETA = 12.0, 6.0, 0.3


class CentreDetector(torch.nn.Module):
    """One box ``(w/2, h/2, 12, 6, 0.3)`` per window (window coordinates); class = parity of the crop's mean value,
    score from the window size and its first pixel (deterministic in the content)."""

    num_classes = 2

    def __init__(self, record: bool = False) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.record = record
        self.crops: list[torch.Tensor] = []

    def forward(self, images):
        out = []
        for img in images:
            if self.record:
                self.crops.append(img.detach().clone())
            h, w = img.shape[1:]
            box = torch.tensor([[w / 2.0, h / 2.0, BOX_W, BOX_H, BOX_THETA]])
            label = int(img[0].max().item()) % 2
            score = 0.5 + (float(img[0, 0, 0]) % 97) / 400.0
            out.append({"rboxes": box, "scores": torch.tensor([score]), "labels": torch.tensor([label])})
        return out


def write_geotiff(path: Path, data: np.ndarray, crs: str | None, transform, nodata=None, **options) -> Path:
    """``data`` (C, H, W) as a tiled deflate GeoTIFF."""
    import rasterio

    c, h, w = data.shape
    profile = dict(driver="GTiff", height=h, width=w, count=c, dtype=data.dtype.name, transform=transform,
                   nodata=nodata, compress="deflate", **options)  # fmt: skip
    if crs is not None:
        profile["crs"] = crs
    if w >= 256 and h >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path
