"""Spatial selection maps of the LSK blocks and the paper's per-class context statistic.

Context statistic (LSKNet paper, "expected selective receptive field / object area"), per image, for every LSK
block b in stage s (feature stride r_s = 2^(s+1) input pixels) with branches i = 1..n of kernels (k_i, d_i):

- R_i = receptive_field([(k_1, d_1), ..., (k_i, d_i)]) feature pixels, so branch i covers A_{b,i} = (r_s R_i)^2
  input pixels^2;
- the expected selected receptive field at feature position p is
  E_b(p) = sum_i g_{b,i}(p) A_{b,i} / sum_i g_{b,i}(p), with g the sigmoid gates of the spatial selection;
- for an object o with polygon P_o (input pixels) of area |P_o|, the positions p of block b whose centres
  ((x + 0.5) r_s, (y + 0.5) r_s) lie inside P_o (or, if none does, the position containing its centroid) give
  c_o = mean over blocks b of [mean over those p of E_b(p)] / |P_o|;
- per class k: C_k = mean of c_o over the objects of class k; reported raw and normalised C_k / max_k C_k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lsknet.analysis.common import find_lsknet
from lsknet.analysis.receptive import receptive_field
from lsknet.errors import ConfigError

__all__ = ["block_strides", "context_statistic", "expected_rf_maps", "object_context", "selection_maps"]


def selection_maps(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """The sigmoid gates (B, n, h, w) of the spatial selection of every LSK block for ``images`` (B, 3, H, W),
    keyed by the block's path in the LSKNet (``"block1.0"`` ... ``"block4.1"``). ``model`` is or holds an LSKNet
    with ``lsk_selection="spatial"``; it runs in eval mode without gradients."""
    net = find_lsknet(model)
    if net.lsk_config["selection"] != "spatial":
        raise ConfigError(f"selection maps need lsk_selection='spatial', not {net.lsk_config['selection']!r}")
    gates: dict[str, Tensor] = {}
    handles = []
    for name, module in net.named_modules():
        if name.endswith(".attn.spatial_gating_unit"):
            key = name[: -len(".attn.spatial_gating_unit")]

            def hook(_m: nn.Module, _inp: tuple, out: Tensor, key: str = key) -> None:
                gates[key] = out.detach().sigmoid()

            handles.append(module.conv_squeeze.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return gates


def block_strides(keys: Sequence[str]) -> dict[str, int]:
    """Feature stride (input pixels) of each block key ``"block{s}.{j}"``: 4, 8, 16, 32 for stages 1-4."""
    return {k: 2 ** (int(k.split(".")[0].removeprefix("block")) + 1) for k in keys}


def expected_rf_maps(gates: dict[str, Tensor], kernels: Sequence[Sequence[int]]) -> dict[str, Tensor]:
    """E_b(p) (module doc) for every block: (B, h, w) expected selected receptive-field area in input pixels^2."""
    rfs = [receptive_field(kernels[: i + 1]) for i in range(len(kernels))]
    out = {}
    for key, stride in block_strides(list(gates)).items():
        g = gates[key].double()
        areas = torch.tensor([(stride * r) ** 2 for r in rfs], dtype=torch.float64).view(1, -1, 1, 1)
        out[key] = (g * areas).sum(1) / g.sum(1).clamp_min(1e-12)
    return out


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def object_context(erf: dict[str, Tensor], polys: np.ndarray) -> np.ndarray:
    """c_o (module doc) for each polygon (N, 4, 2) in input pixels, from :func:`expected_rf_maps` of one image
    (batch index 0). NaN for a zero-area polygon."""
    from matplotlib.path import Path as MplPath

    strides = block_strides(list(erf))
    out = np.full(len(polys), np.nan)
    for n, poly in enumerate(np.asarray(polys, dtype=np.float64)):
        area = _polygon_area(poly)
        if area <= 0:
            continue
        per_block = []
        for key, emap in erf.items():
            e = emap[0].cpu().numpy()
            h, w = e.shape
            r = strides[key]
            ys, xs = np.mgrid[0:h, 0:w]
            centres = np.stack([(xs.ravel() + 0.5) * r, (ys.ravel() + 0.5) * r], 1)
            inside = MplPath(poly).contains_points(centres)
            if inside.any():
                per_block.append(float(e.ravel()[inside].mean()))
            else:
                cx, cy = poly.mean(0)
                iy, ix = min(max(int(cy // r), 0), h - 1), min(max(int(cx // r), 0), w - 1)
                per_block.append(float(e[iy, ix]))
        out[n] = float(np.mean(per_block)) / area
    return out


def context_statistic(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per class: ``count``, ``raw`` = mean c_o and ``normalised`` = raw / max raw (NaN objects ignored)."""
    raw = {}
    for cls, vals in values.items():
        finite = [v for v in vals if np.isfinite(v)]
        if finite:
            raw[cls] = (len(finite), float(np.mean(finite)))
    top = max((v for _, v in raw.values()), default=0.0)
    return {
        cls: {"count": n, "raw": v, "normalised": v / top if top > 0 else float("nan")}
        for cls, (n, v) in sorted(raw.items())
    }
