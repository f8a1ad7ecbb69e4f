"""Winograd convolution F(m x m, 3 x 3): a stride-1 3x3 convolution with fewer multiplications, exact up to float
rounding (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).

Each ``(m + 2) x (m + 2)`` input tile ``d`` (tiles overlap by 2 pixels) gives an ``m x m`` output tile

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (``*`` elementwise, summed over input channels)

so a 3x3 conv with C_in -> C_out channels becomes ``(m + 2)^2`` independent GEMMs of (tiles x C_in) @ (C_in x
C_out): ``9 m^2 / (m + 2)^2`` times fewer multiply-adds than direct convolution (2.25x for m = 2, 4x for m = 4).
The transforms are small GEMMs with Kronecker matrices. Rounding grows with m (interpolation at larger points):
relative to the output's magnitude about 1e-7 (m = 2), 1e-6 (m = 4) in float32.

The matrices come from the Toom-Cook construction: interpolation points ``0, 1, -1, 2, -2, 1/2, -1/2, ...`` and
infinity; ``A^T`` = Vandermonde of the points (m powers), ``G`` = Vandermonde (3 powers), ``B^T`` = inverse transpose
of the n x n Vandermonde, computed exactly in rationals and scaled to integer rows (the scale goes into ``G``).

Layout: activations NHWC inside (channels-last NCHW tensors in and out), work done over bands of tile rows so the
transformed tiles stay a few MB (cache-resident, no page faults for huge temporaries).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import cache

import torch
from torch import Tensor

from lsknet.ops.workspace import scratch

__all__ = ["winograd_conv3x3", "winograd_matrices", "winograd_weight"]

_POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2), Fraction(-1, 2))


def _inverse(mat: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact inverse of a small rational matrix (Gauss-Jordan)."""
    n = len(mat)
    aug = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(mat)]
    for col in range(n):
        piv = next(r for r in range(col, n) if aug[r][col] != 0)
        aug[col], aug[piv] = aug[piv], aug[col]
        p = aug[col][col]
        aug[col] = [v / p for v in aug[col]]
        for r in range(n):
            if r != col and aug[r][col] != 0:
                f = aug[r][col]
                aug[r] = [a - f * b for a, b in zip(aug[r], aug[col])]
    return [row[n:] for row in aug]


@cache
def winograd_matrices(m: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(A^T, G, B^T)`` of F(m, 3) in float64: shapes (m, n), (n, 3), (n, n) with n = m + 2.

    1-D correlation ``y_i = sum_j d_(i+j) g_j`` (i < m) equals ``A^T [(G g) * (B^T d)]`` exactly."""
    n = m + 2
    if not 1 <= m <= len(_POINTS) - 1:
        raise ValueError(f"F({m}, 3) needs {n - 1} finite interpolation points; m must be in 1..{len(_POINTS) - 1}")
    pts = _POINTS[: n - 1]

    def vander(cols: int) -> list[list[Fraction]]:  # rows: points, then infinity (the leading coefficient)
        rows = [[p**j for j in range(cols)] for p in pts]
        return rows + [[Fraction(int(j == cols - 1)) for j in range(cols)]]

    at = [list(col) for col in zip(*vander(m))]  # (m, n)
    g = vander(3)  # (n, 3)
    bt = [list(col) for col in zip(*_inverse(vander(n)))]  # inverse transpose, (n, n)
    for k, row in enumerate(bt):  # integer rows in B^T, the scale moved into G
        scale = Fraction(math.lcm(*(v.denominator for v in row)))
        scale /= math.gcd(*(int(v * scale) for v in row)) or 1
        bt[k] = [v * scale for v in row]
        g[k] = [v / scale for v in g[k]]

    def t(rows: list[list[Fraction]]) -> Tensor:
        return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)

    return t(at), t(g), t(bt)


def winograd_weight(weight: Tensor, m: int) -> Tensor:
    """Transformed 3x3 kernels ``G g G^T`` of a (C_out, C_in, 3, 3) conv weight, as ((m + 2)^2, C_in, C_out) in the
    weight's dtype (computed in float64)."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"expected a (C_out, C_in, 3, 3) weight, got {tuple(weight.shape)}")
    _, g, _ = winograd_matrices(m)
    g = g.to(weight.device)
    u = torch.einsum("ui,ocij,vj->uvco", g, weight.double(), g)  # (n, n, C_in, C_out)
    n = m + 2
    return u.reshape(n * n, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


@cache
def _transforms(m: int, dtype: torch.dtype, device: str) -> tuple[Tensor, Tensor]:
    _, _, bt = winograd_matrices(m)
    at, _, _ = winograd_matrices(m)
    return bt.to(dtype=dtype, device=device), at.to(dtype=dtype, device=device)


def winograd_conv3x3(
    x: Tensor,
    weight_t: Tensor,
    bias: Tensor | None = None,
    *,
    m: int = 4,
    padding: int = 1,
    relu: bool = False,
    band_bytes: int = 16 << 20,
    allocate: Callable[[Sequence[int], Tensor], Tensor] | None = None,
    head: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (stride 1, dilation 1), optionally followed by ReLU and a
    per-pixel ``head``, by Winograd F(m x m, 3 x 3).

    Args:
        x: (B, C_in, H, W) input (any memory format).
        weight_t: :func:`winograd_weight` of the (C_out, C_in, 3, 3) kernel with the same ``m``.
        bias: (C_out,) or None.
        padding: zero padding on every side (output (B, C_out, H + 2p - 2, W + 2p - 2)).
        band_bytes: size of the transformed input tiles processed at once.
        allocate: ``allocate(shape, like)`` gives the uninitialised (B, H', W', C_out) NHWC output buffer; default
            ``like.new_empty(shape)``. The temporaries come from :func:`lsknet.ops.workspace.scratch` (reused
            inside an active workspace).
        head: a per-pixel map of (pixels, C_out) -> (pixels, C_head) (e.g. a 1x1 conv as a GEMM) applied to each
            band's output while it is in cache; the conv's own output is then never written out.

    Returns the (B, C_out, H', W') output (or (B, C_head, H', W') with ``head``) in channels-last memory.
    """
    n = m + 2
    b, c_in, h, w = x.shape
    if weight_t.shape[0] != n * n or weight_t.shape[1] != c_in:
        raise ValueError(f"weight_t {tuple(weight_t.shape)} does not fit F({m}, 3) with {c_in} input channels")
    c_out = weight_t.shape[2]
    ho, wo = h + 2 * padding - 2, w + 2 * padding - 2
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} with padding {padding} is too small for a 3x3 kernel")
    th, tw = -(-ho // m), -(-wo // m)
    hp, wp = th * m + 2, tw * m + 2
    # zero-padded NHWC input: top/left by `padding`, bottom/right up to whole tiles
    xp = scratch("winograd.input", (b, hp, wp, c_in), x)  # only the border is zeroed: the interior is overwritten
    xp[:, :padding].zero_()
    xp[:, padding + h :].zero_()
    xp[:, padding : padding + h, :padding].zero_()
    xp[:, padding : padding + h, padding + w :].zero_()
    xp[:, padding : padding + h, padding : padding + w] = x.permute(0, 2, 3, 1)
    bt, at = _transforms(m, x.dtype, str(x.device))
    out: Tensor | None = None
    rows = max(1, min(th, band_bytes // max(1, n * n * tw * c_in * x.element_size())))
    sb, sh, sw, sc = xp.stride()
    for i in range(b):
        for t0 in range(0, th, rows):
            nt = min(rows, th - t0)
            tiles = nt * tw
            # (n, n, nt, tw, C_in) overlapping view of the band's input tiles -> (n*n, tiles * C_in)
            start = xp.storage_offset() + i * sb + t0 * m * sh
            d = scratch("winograd.tiles", (n, n, nt, tw, c_in), x)
            d.copy_(xp.as_strided((n, n, nt, tw, c_in), (sh, sw, m * sh, m * sw, sc), start))  # (i, j, tile, c)
            # B^T d B as two passes of small GEMMs: over rows i (one GEMM per column j), then over columns j (one
            # per row u); batched GEMMs, not one (6 x 6) @ (6 x huge) mm, which MKL runs on one thread only
            cols = tiles * c_in
            r = scratch("winograd.rows", (n, n, cols), x)
            torch.bmm(bt.expand(n, n, n), d.view(n, n, cols).transpose(0, 1), out=r.transpose(0, 1))
            v = scratch("winograd.transformed", (n, n, cols), x)
            torch.bmm(bt.expand(n, n, n), r, out=v)
            y = scratch("winograd.products", (n * n, tiles, c_out), x)
            torch.bmm(v.view(n * n, tiles, c_in), weight_t, out=y)  # one GEMM per tile position (u, v)
            # A^T y A: over columns v per row u, then over rows u (one GEMM per output column)
            cols = tiles * c_out
            ya = scratch("winograd.cols_out", (n, m, cols), x)
            torch.bmm(at.expand(n, m, n), y.view(n, n, cols), out=ya)
            z = scratch("winograd.rows_out", (m, m, cols), x)
            torch.bmm(at.expand(m, m, n), ya.transpose(0, 1), out=z.transpose(0, 1))
            z = z.view(m, m, nt, tw, c_out)
            fold_bias = bias is not None and (relu or head is not None)
            if fold_bias:  # bias, ReLU and head on the band's tiles in place, while they are in cache
                z.add_(bias)
            if relu:
                z.clamp_min_(0.0)
            if head is not None:
                z = head(z.view(-1, c_out))
                z = z.view(m, m, nt, tw, z.shape[-1])
            if out is None:
                out_shape = (b, ho, wo, z.shape[-1])
                out = allocate(out_shape, x) if allocate is not None else x.new_empty(out_shape)
            _scatter_tiles(z, out, i, t0 * m, bias if bias is not None and not fold_bias else None)
    return out.permute(0, 3, 1, 2)


def _scatter_tiles(z: Tensor, out: Tensor, image: int, row0: int, bias: Tensor | None) -> None:
    """Write a band's output tiles ``z`` (m, m, nt, tw, C) (pixel ``(row0 + t m + u, c m + v)`` of ``image``) into
    the NHWC ``out`` (+ ``bias``), dropping the parts of the last tile row / column that overhang the map."""
    m, _, nt, tw, ch = z.shape
    ho, wo = out.shape[1:3]
    ob, oh, ow, oc = out.stride()
    full_rows = min(nt, (ho - row0) // m)
    full_cols = min(tw, wo // m)
    row_parts = [(0, full_rows, m), (full_rows, nt, ho - row0 - full_rows * m)]
    col_parts = [(0, full_cols, m), (full_cols, tw, wo - full_cols * m)]
    for r_a, r_b, rows in row_parts:
        for c_a, c_b, cols in col_parts:
            if r_b <= r_a or c_b <= c_a:
                continue
            start = out.storage_offset() + image * ob + (row0 + r_a * m) * oh + c_a * m * ow
            dst = out.as_strided((rows, cols, r_b - r_a, c_b - c_a, ch), (oh, ow, m * oh, m * ow, oc), start)
            src = z[:rows, :cols, r_a:r_b, c_a:c_b]
            if bias is not None:
                torch.add(src, bias, out=dst)
            else:
                dst.copy_(src)
