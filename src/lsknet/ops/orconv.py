"""Oriented-response ops of S2A-Net's detection head (Zhou et al., Oriented Response Networks, CVPR 2017; Han et al.,
Align Deep Features for Oriented Object Detection, TGRS 2021), in plain PyTorch.

* :func:`arf_indices` + :func:`active_rotated_filter`: an *active rotating filter* (ARF) turns one learned filter
  into ``n_rotation`` copies rotated by ``k * 360 / n_rotation`` degrees (clockwise on screen, image y down). A 3x3
  kernel turns by moving its 8 border taps around the ring (45 degrees = one tap); the ``n_orientation`` orientation
  channels of the filter turn with it (cyclic shift). Same tensor layout as MMCV's ``active_rotated_filter``:
  weight ``(O, I, n_orientation, k, k)`` -> ``(O * n_rotation, I * n_orientation, k, k)``, rotated copy ``r`` of
  output filter ``o`` at row ``o * n_rotation + r``; the index table has MMCV's ``ORConv2d.indices`` layout and
  values (1-based), so official checkpoints (which store that buffer) load unchanged.
* :func:`rotation_invariant_pool`: max over the ``n_orientation`` responses of each feature (MMRotate's
  ``RotationInvariantPooling``, used by S2A-Net).
* :func:`rotation_invariant_encoding`: ORN's alternative (MMCV ``rotation_invariant_encoding``): cyclically shift each
  feature's orientation responses so its strongest one comes first.
* :func:`align_conv_offsets`: the offsets that make a ``k x k`` deformable convolution sample the ``k x k`` grid of
  a rotated box at every feature-map position (S2A-Net's AlignConv; ``torchvision.ops.deform_conv2d`` layout).

Everything is differentiable through ordinary tensor indexing (the ARF gradient sums the gradients of the rotated
copies, as MMCV's backward kernel). Boxes are ``(cx, cy, w, h, theta)`` in input pixels and radians.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "active_rotated_filter",
    "align_conv_offsets",
    "arf_indices",
    "rotation_invariant_encoding",
    "rotation_invariant_pool",
]

# the 8 border taps of a 3x3 kernel in clockwise order (row-major flat positions), starting top-left
_RING3 = (0, 1, 2, 5, 8, 7, 6, 3)


def _power_of_two(n: int, name: str) -> int:
    if not isinstance(n, int) or n < 1 or n > 8 or n & (n - 1):
        raise ValueError(f"{name} must be 1, 2, 4 or 8, got {n!r}")
    return n


def arf_indices(n_orientation: int, n_rotation: int, kernel_size: int = 3) -> Tensor:
    """Index table of an active rotating filter, shape ``(n_orientation, k, k, n_rotation)`` int32.

    Entry ``[o, y, x, r]`` is the 1-based flat position ``o' * k * k + p' + 1`` that tap ``(y, x)`` of orientation
    channel ``o`` moves to in rotated copy ``r`` (MMCV's ``ORConv2d.indices``). ``kernel_size`` 1 or 3; rotations
    by multiples of 45 degrees (``n_rotation`` in 1, 2, 4, 8), orientation channels ``n_orientation`` in 1, 2, 4, 8.
    """
    _power_of_two(n_orientation, "n_orientation")
    _power_of_two(n_rotation, "n_rotation")
    if kernel_size not in (1, 3):
        raise ValueError(f"kernel_size must be 1 or 3, got {kernel_size!r}")
    taps = kernel_size * kernel_size
    table = torch.empty(n_orientation, taps, n_rotation, dtype=torch.int32)
    for r in range(n_rotation):
        eighths = 8 * r // n_rotation  # turn in 45-degree steps
        shift = (r * n_orientation) // n_rotation  # orientation channels turned by the same angle
        dest = list(range(taps))
        if kernel_size == 3:
            for i, p in enumerate(_RING3):
                dest[p] = _RING3[(i + eighths) % 8]
        for o in range(n_orientation):
            layer = (o + shift) % n_orientation
            for p in range(taps):
                table[o, p, r] = layer * taps + dest[p] + 1
    return table.view(n_orientation, kernel_size, kernel_size, n_rotation)


def active_rotated_filter(weight: Tensor, indices: Tensor) -> Tensor:
    """Rotated copies of ``weight`` ``(O, I, n_orientation, k, k)`` -> ``(O * n_rotation, I * n_orientation, k, k)``.

    ``indices``: ``(n_orientation, k, k, n_rotation)`` table of :func:`arf_indices` (1-based destinations; each
    rotation must be a permutation). Differentiable in ``weight``.
    """
    if weight.dim() != 5:
        raise ValueError(f"weight must be (O, I, n_orientation, k, k), got {tuple(weight.shape)}")
    out_c, in_c, n_or, kh, kw = weight.shape
    if indices.dim() != 4 or tuple(indices.shape[:3]) != (n_or, kh, kw):
        raise ValueError(f"indices must be ({n_or}, {kh}, {kw}, n_rotation), got {tuple(indices.shape)}")
    n_rot = indices.shape[3]
    entries = n_or * kh * kw
    dest = indices.reshape(entries, n_rot).to(device=weight.device, dtype=torch.long) - 1  # (entries, R)
    # gather form: source[r, m] is the entry that lands on position m in rotation r
    source = torch.empty(n_rot, entries, dtype=torch.long, device=weight.device)
    src_rows = torch.arange(entries, device=weight.device).expand(n_rot, entries)
    if bool((dest < 0).any()) or bool((dest >= entries).any()):
        raise ValueError("indices hold positions outside the filter")
    source.scatter_(1, dest.t(), src_rows)
    hit = torch.zeros(n_rot, entries, dtype=torch.long, device=weight.device).scatter_add_(
        1, dest.t(), torch.ones_like(src_rows)
    )
    if not bool((hit == 1).all()):
        raise ValueError("indices must map every filter position to a distinct position in each rotation")
    flat = weight.reshape(out_c, in_c, entries)
    rotated = flat[:, :, source]  # (O, I, R, entries)
    return rotated.permute(0, 2, 1, 3).reshape(out_c * n_rot, in_c * n_or, kh, kw)


def rotation_invariant_pool(x: Tensor, n_orientation: int = 8) -> Tensor:
    """``(B, C * n_orientation, H, W)`` -> ``(B, C, H, W)``: max over each feature's orientation responses
    (channels ``c * n_orientation ... c * n_orientation + n_orientation - 1``)."""
    b, c, h, w = x.shape
    if c % n_orientation:
        raise ValueError(f"channels ({c}) must be a multiple of n_orientation ({n_orientation})")
    return x.view(b, c // n_orientation, n_orientation, h, w).amax(dim=2)


def rotation_invariant_encoding(x: Tensor, n_orientation: int = 8) -> tuple[Tensor, Tensor]:
    """ORN's rotation-invariant encoding: ``(B, C * n_orientation, H, W)`` -> aligned features of the same shape and
    the main direction ``(B, C, H, W)`` int64 of each feature (first maximum). Output orientation ``m`` of a feature
    is its input orientation ``(m + main_direction) % n_orientation``."""
    b, c, h, w = x.shape
    if c % n_orientation:
        raise ValueError(f"channels ({c}) must be a multiple of n_orientation ({n_orientation})")
    v = x.view(b, c // n_orientation, n_orientation, h, w)
    main = v.argmax(dim=2)  # first maximum on ties, as the reference loop
    order = (torch.arange(n_orientation, device=x.device).view(1, 1, -1, 1, 1) + main.unsqueeze(2)) % n_orientation
    return v.gather(2, order).reshape(b, c, h, w), main


def align_conv_offsets(rboxes: Tensor, featmap_size: tuple[int, int], stride: float, kernel_size: int = 3) -> Tensor:
    """Deformable-convolution offsets that sample each box's ``k x k`` grid.

    ``rboxes``: ``(B, H * W, 5)`` boxes in input pixels, one per feature-map position in row-major order (the
    refined anchors of that position). Tap ``(i, j)`` of the kernel at position ``(y, x)`` samples the feature map at
    ``(cx, cy) / stride + R(theta) @ ((j - c) * w, (i - c) * h) / (stride * k)`` with ``c = (k - 1) // 2``, i.e. the
    centres of a ``k x k`` split of the box. Returns ``(B, 2 * k * k, H, W)``: (dy, dx) per tap, taps row-major,
    relative to the plain convolution's sampling point ``(y + i - c, x + j - c)`` (``torchvision.ops.deform_conv2d``).
    """
    height, width = featmap_size
    stride = _check_stride(stride)
    if rboxes.dim() != 3 or rboxes.shape[1] != height * width or rboxes.shape[2] != 5:
        raise ValueError(
            f"rboxes must be (B, {height * width}, 5) for a {height}x{width} map, got {tuple(rboxes.shape)}"
        )
    dtype, device = rboxes.dtype, rboxes.device
    pad = (kernel_size - 1) // 2
    tap = torch.arange(-pad, pad + 1, dtype=dtype, device=device)
    ty = tap.repeat_interleave(kernel_size)  # row offset of each tap (row-major)
    tx = tap.repeat(kernel_size)
    ys = torch.arange(height, dtype=dtype, device=device).repeat_interleave(width)
    xs = torch.arange(width, dtype=dtype, device=device).repeat(height)
    cx, cy, w, h, t = (v.unsqueeze(-1) for v in (rboxes / rboxes.new_tensor([stride] * 4 + [1.0])).unbind(-1))
    cos, sin = torch.cos(t), torch.sin(t)
    px, py = w / kernel_size * tx, h / kernel_size * ty  # (B, HW, K)
    sx = cx + cos * px - sin * py
    sy = cy + sin * px + cos * py
    dx = sx - (xs[:, None] + tx)
    dy = sy - (ys[:, None] + ty)
    off = torch.stack([dy, dx], dim=-1).reshape(rboxes.shape[0], height * width, 2 * kernel_size * kernel_size)
    return off.permute(0, 2, 1).reshape(rboxes.shape[0], -1, height, width)


def _check_stride(stride: float) -> float:
    if not stride > 0 or not math.isfinite(stride):
        raise ValueError(f"stride must be a positive number, got {stride!r}")
    return float(stride)
