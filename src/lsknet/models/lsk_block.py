"""The Large Selective Kernel (LSK) block of LSKNet and its ablation variants.

:class:`LSKModule` is the ``attn.spatial_gating_unit`` of every LSKNet block (official module names ``conv0``,
``conv_spatial``, ``conv1``, ``conv2``, ``conv_squeeze``, ``conv``); :func:`lsk_options` validates the variant options
(``lsk_kernels``, ``lsk_selection``, ``lsk_pool``) that :class:`lsknet.models.backbone.LSKNet` and timm accept.
Inputs and outputs are NCHW feature maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsknet.errors import ConfigError

__all__ = ["LSK_POOLS", "LSK_SELECTIONS", "OFFICIAL_LSK_KERNELS", "LSKModule", "lsk_options"]

OFFICIAL_LSK_KERNELS: tuple[tuple[int, int], ...] = ((5, 1), (7, 3))
LSK_SELECTIONS = ("spatial", "none", "channel")
LSK_POOLS = ("avg", "max")


def lsk_options(
    kernels: Sequence[Sequence[int]] | None = None,
    selection: str | None = None,
    pool: Sequence[str] | str | None = None,
) -> tuple[tuple[tuple[int, int], ...], str, tuple[str, ...]]:
    """Validate LSK block options (``None`` = official) -> ``(kernels, selection, pool)`` as tuples.

    ``kernels``: ``[(k, d), ...]`` odd kernel sizes >= 1 and dilations >= 1, one pair per branch (>= 1 branch).
    ``selection``: ``spatial`` (official) | ``none`` | ``channel``. ``pool``: non-empty subset of ``("avg", "max")``
    in the order the squeeze conv sees them (used by ``spatial`` only). Raises :class:`ConfigError`.
    """
    if kernels is None:
        kernels = OFFICIAL_LSK_KERNELS
    try:
        pairs = tuple((int(k), int(d)) for k, d in kernels)
    except (TypeError, ValueError):
        raise ConfigError(f"lsk_kernels: expected a list of [kernel, dilation] pairs, got {kernels!r}") from None
    if not pairs or any(k < 1 or k % 2 == 0 or d < 1 for k, d in pairs):
        raise ConfigError(f"lsk_kernels: need >= 1 pair of odd kernel >= 1 and dilation >= 1, got {kernels!r}")
    selection = "spatial" if selection is None else str(selection)
    if selection not in LSK_SELECTIONS:
        raise ConfigError(f"lsk_selection: expected one of {', '.join(LSK_SELECTIONS)}, got {selection!r}")
    pool = LSK_POOLS if pool is None else ((pool,) if isinstance(pool, str) else tuple(str(p) for p in pool))
    if not pool or len(set(pool)) != len(pool) or any(p not in LSK_POOLS for p in pool):
        raise ConfigError(f"lsk_pool: expected a non-empty subset of {LSK_POOLS}, got {pool!r}")
    return pairs, selection, pool



def _dw_name(i: int) -> str:
    """Depth-wise conv of branch i: official names for the first two (``conv0``, ``conv_spatial``)."""
    return "conv0" if i == 0 else ("conv_spatial" if i == 1 else f"conv_spatial{i}")


class LSKModule(nn.Module):
    """Large selective kernel (official: ``kernels=((5, 1), (7, 3))``, receptive field 23, ``spatial`` selection
    over ``("avg", "max")`` channel pooling).

    Branch i is a depth-wise conv (kernel k_i, dilation d_i, "same" padding d_i (k_i - 1) / 2) of branch i-1's
    depth-wise output (branch 0 of the input), reduced to C/2 by its own 1x1 conv (``conv{i+1}``). Selection:

    - ``spatial``: channel-mean / channel-max (per ``pool``) of the concatenated branches -> 7x7 conv
      (len(pool) -> n, ``conv_squeeze``) -> sigmoid -> gate-weighted sum of the branches;
    - ``none``: the plain sum of the branches (no ``conv_squeeze``);
    - ``channel``: SKNet-style (Li et al. 2019): global average pool of the branch sum (C/2) -> 1x1 conv C/2 -> d
      + ReLU (``fc_squeeze``, d = max(C/2 // 16, 32)) -> 1x1 conv d -> n C/2 (``fc_select``) -> softmax over the n
      branches per channel -> weighted sum; (C/2) d + d + d n C/2 + n C/2 parameters.

    Then a 1x1 conv C/2 -> C (``conv``) whose output multiplies the input.
    """

    def __init__(
        self,
        dim: int,
        kernels: Sequence[Sequence[int]] | None = None,
        selection: str | None = None,
        pool: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.kernels, self.selection, self.pool = lsk_options(kernels, selection, pool)
        n, half = len(self.kernels), dim // 2
        for i, (k, d) in enumerate(self.kernels):
            conv = nn.Conv2d(dim, dim, k, padding=d * (k - 1) // 2, groups=dim, dilation=d)
            setattr(self, _dw_name(i), conv)
        for i in range(n):
            setattr(self, f"conv{i + 1}", nn.Conv2d(dim, half, 1))
        if self.selection == "spatial":
            self.conv_squeeze = nn.Conv2d(len(self.pool), n, 7, padding=3)
        elif self.selection == "channel":
            hidden = max(half // 16, 32)
            self.fc_squeeze = nn.Conv2d(half, hidden, 1)
            self.fc_select = nn.Conv2d(hidden, n * half, 1)
        self.conv = nn.Conv2d(half, dim, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        """The n reduced branch outputs, each (B, C/2, H, W)."""
        feats, y = [], x
        for i in range(len(self.kernels)):
            y = getattr(self, _dw_name(i))(y)
            feats.append(y)
        return [getattr(self, f"conv{i + 1}")(f) for i, f in enumerate(feats)]

    def forward(self, x: Tensor) -> Tensor:
        parts = self.branches(x)
        if self.selection == "spatial":
            both = torch.cat(parts, dim=1)
            stats = {"avg": lambda: both.mean(dim=1, keepdim=True), "max": lambda: both.amax(dim=1, keepdim=True)}
            pooled = torch.cat([stats[p]() for p in self.pool], dim=1)
            gate = self.conv_squeeze(pooled).sigmoid()
            selected = parts[0] * gate[:, 0:1]
            for i in range(1, len(parts)):
                selected = selected + parts[i] * gate[:, i : i + 1]
        elif self.selection == "none":
            selected = parts[0]
            for part in parts[1:]:
                selected = selected + part
        else:
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            z = F.relu(self.fc_squeeze(total.mean(dim=(2, 3), keepdim=True)))
            b, half = total.shape[:2]
            weights = self.fc_select(z).reshape(b, len(parts), half, 1, 1).softmax(dim=1)
            selected = parts[0] * weights[:, 0]
            for i in range(1, len(parts)):
                selected = selected + parts[i] * weights[:, i]
        return x * self.conv(selected)
