"""Theoretical and effective receptive fields.

- :func:`receptive_field`: the receptive field of a chain of (dilated) convolutions, in input pixels of that chain.
- :func:`effective_receptive_field`: the ERF of Luo et al. as measured by RepLKNet (Ding et al., CVPR 2022) - the
  gradient of the centre output position with respect to the input, accumulated over images.
- :func:`area_ratio`: RepLKNet's "high-contribution area ratio" of an ERF map.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["area_ratio", "effective_receptive_field", "receptive_field", "stage_erfs"]


def receptive_field(kernels: Sequence[Sequence[int]]) -> int:
    """Receptive field (pixels) of stacked stride-1 convs ``[(k_1, d_1), (k_2, d_2), ...]``:
    RF_1 = k_1 (for a dilated first conv d_1 (k_1 - 1) + 1), RF_i = RF_{i-1} + d_i (k_i - 1). The official LSK pair
    ``[(5, 1), (7, 3)]`` gives 23, ``[(3, 1), (5, 2), (7, 3)]`` 29."""
    pairs = [(int(k), int(d)) for k, d in kernels]
    if not pairs:
        raise ValueError("receptive_field needs at least one (kernel, dilation) pair")
    rf = pairs[0][0] + (pairs[0][1] - 1) * (pairs[0][0] - 1)  # a dilated first conv spans d (k - 1) + 1
    for k, d in pairs[1:]:
        rf += d * (k - 1)
    return rf


def _last_map(output: Tensor | Sequence[Tensor]) -> Tensor:
    if isinstance(output, (list, tuple)):
        output = output[-1]
    if not isinstance(output, Tensor) or output.ndim != 4:
        raise ValueError("effective_receptive_field needs a model whose output (or last output) is a (B, C, h, w) map")
    return output


def _centre_grad(x: Tensor, out: Tensor) -> Tensor:
    h, w = out.shape[-2:]
    y = torch.relu(out[:, :, h // 2, w // 2]).sum()
    (grad,) = torch.autograd.grad(y, x, retain_graph=True)
    return torch.relu(grad).sum(dim=(0, 1))


def effective_receptive_field(model: nn.Module, images: Tensor | Iterable[Tensor]) -> np.ndarray:
    """ERF map (H, W) of ``model`` over ``images`` (one (B, C, H, W) tensor or an iterable of batches, normalised
    as the model expects).

    Per batch: y = sum over batch and channels of ReLU(output[:, :, h // 2, w // 2]) where output is the model's
    output map (the last one if it returns a list); the map is ReLU(dy / d input) summed over batch and channels,
    accumulated over all batches (RepLKNet's method). The model is put in eval mode; its weights get no gradient.
    """
    return stage_erfs(model, images, stages=None)[-1]


def stage_erfs(model: nn.Module, images: Tensor | Iterable[Tensor], stages: Sequence[int] | None = None) -> list:
    """ERF maps of several outputs of one model in one forward per batch: ``stages`` indexes the model's list output
    (``None``: only the last output). Returns one (H, W) float64 array per entry (see
    :func:`effective_receptive_field`)."""
    batches = [images] if isinstance(images, Tensor) else images
    was_training = model.training
    model.eval()
    maps: list[np.ndarray] | None = None
    try:
        for batch in batches:
            x = batch.detach().clone().float().requires_grad_(True)
            output = model(x)
            if stages is None:
                outs = [_last_map(output)]
            else:
                if not isinstance(output, (list, tuple)):
                    raise ValueError("stages given but the model returns a single map")
                outs = [output[i] for i in stages]
            grads = [_centre_grad(x, out).double().cpu().numpy() for out in outs]
            maps = grads if maps is None else [m + g for m, g in zip(maps, grads)]
    finally:
        model.train(was_training)
    if maps is None:
        raise ValueError("effective_receptive_field got no images")
    return maps


def area_ratio(erf_map: np.ndarray, t: float) -> float:
    """High-contribution area ratio (RepLKNet) of an ERF map at threshold ``t`` in (0, 1).

    The map is transformed to m = log10(1 + x) / max(log10(1 + x)); the result is the area, as a fraction of H * W,
    of the smallest square of odd side centred on (H // 2, W // 2) whose sum of m exceeds t times the total of m
    (squares are clipped to the map; 1.0 when no square inside the map exceeds it).
    """
    x = np.asarray(erf_map, dtype=np.float64)
    if x.ndim != 2 or not 0.0 < t < 1.0:
        raise ValueError("area_ratio needs a 2-D map and 0 < t < 1")
    m = np.log10(1.0 + np.clip(x, 0.0, None))
    if m.max() <= 0:
        return 1.0
    m = m / m.max()
    total = m.sum()
    h, w = m.shape
    cy, cx = h // 2, w // 2
    for r in range(0, max(h, w)):
        window = m[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1]
        if window.sum() > t * total:
            return (2 * r + 1) ** 2 / float(h * w) if window.size == (2 * r + 1) ** 2 else window.size / float(h * w)
    return 1.0
