"""Photometric image corruptions for robustness tests (degraded and low-resolution imagery), severities 1..5.

``corrupt(image, name, severity, seed=0)`` takes an (H, W, C) uint8 image and returns a uint8 array of the same
shape. Geometry is never changed, so boxes and masks stay valid. Each corruption is deterministic for a seed, and
its random parts (noise field, cloud field, blur direction) do not depend on the severity, so the distortion grows
monotonically with severity (the PSNR against the clean image never rises from one severity to the next):

================  ======================================================================  =====================
name              what                                                                    severity 1 .. 5
================  ======================================================================  =====================
gaussian_noise    additive i.i.d. Gaussian noise, std in grey levels                      10, 15, 20, 25, 30
gaussian_blur     separable Gaussian blur (reflect borders), sigma in pixels              0.8, 1.2, 1.8, 2.5, 3.5
motion_blur       binomial line blur along a random direction, passes of [1/4, 1/2, 1/4]  2, 4, 8, 14, 24
jpeg              JPEG re-encoding at this quality                                        30, 20, 12, 7, 3
downsample        box down-scaling by this factor and bilinear up-scaling back            2, 3, 4, 6, 8
brightness        add this fraction of 255 (clipped)                                      0.1, 0.2, 0.3, 0.4, 0.5
contrast          scale deviations from the per-channel mean by this factor               0.6, 0.45, 0.3, 0.2, 0.1
haze              blend to a bright airlight: 1 - exp(-beta * depth), smooth random depth  beta 0.3 .. 1.5
cloud             opaque white clouds where a smooth random field exceeds a threshold    cover ~10% .. ~60%
================  ======================================================================  =====================
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "psnr"]

SEVERITIES = (1, 2, 3, 4, 5)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), sum(map(ord, name))])


def _smooth_field(rng: np.random.Generator, h: int, w: int, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1], (h, w): bilinearly enlarged random grids, coarse ones weighted more."""
    field = np.zeros((h, w), np.float64)
    total = 0.0
    for octave in range(octaves):
        cells = 2 ** (octave + 2)
        grid = rng.random((cells + 1, cells + 1))
        img = Image.fromarray(grid.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
        weight = 0.5**octave
        field += weight * np.asarray(img, np.float64)
        total += weight
    field /= total
    lo, hi = field.min(), field.max()
    return (field - lo) / (hi - lo) if hi > lo else np.zeros_like(field)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _gaussian_noise(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (10, 15, 20, 25, 30)[s - 1]
    return _to_uint8(img + sigma * rng.standard_normal(img.shape))


def _convolve_separable(img: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    x = img.astype(np.float64)
    rx, ry = len(kx) // 2, len(ky) // 2
    x = np.pad(x, ((ry, ry), (rx, rx), (0, 0)), mode="reflect" if min(img.shape[:2]) > max(rx, ry) else "edge")
    h, w = img.shape[:2]
    tmp = sum(kx[i] * x[:, i : i + w] for i in range(len(kx)))
    return sum(ky[i] * tmp[i : i + h] for i in range(len(ky)))


def _gaussian_blur(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.8, 1.2, 1.8, 2.5, 3.5)[s - 1]
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    return _to_uint8(_convolve_separable(img, k, k))


def _motion_blur(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    # m passes of the 3-tap [1/4, 1/2, 1/4] along one of 8 directions (drawn the same for every severity): a
    # binomial line blur about 2 sqrt(2 m) pixels long. Its frequency response ((1 + cos f) / 2)^m shrinks with m
    # at every frequency, so the distortion grows with severity on any image (a box line blur does not).
    passes = (2, 4, 8, 14, 24)[s - 1]
    dy, dx = [(0, 1), (1, 1), (1, 0), (1, -1)][int(rng.integers(4))]
    h, w = img.shape[:2]
    x = img.astype(np.float64)
    fwd = (np.clip(np.arange(h) + dy, 0, h - 1), np.clip(np.arange(w) + dx, 0, w - 1))
    bwd = (np.clip(np.arange(h) - dy, 0, h - 1), np.clip(np.arange(w) - dx, 0, w - 1))
    for _ in range(passes):
        x = 0.5 * x + 0.25 * (x[fwd[0]][:, fwd[1]] + x[bwd[0]][:, bwd[1]])
    return _to_uint8(x)


def _jpeg(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    quality = (30, 20, 12, 7, 3)[s - 1]
    squeeze = img.shape[2] == 1
    pil = Image.fromarray(img[:, :, 0] if squeeze else img[:, :, :3])
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=quality)
    out = np.asarray(Image.open(buffer).convert(pil.mode))
    out = out[:, :, None] if squeeze else out
    if img.shape[2] > 3:  # extra bands (alpha, NIR) pass through unchanged
        out = np.concatenate([out, img[:, :, 3:]], axis=2)
    return out


def _downsample(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    factor = (2, 3, 4, 6, 8)[s - 1]
    h, w = img.shape[:2]
    small = (max(1, round(w / factor)), max(1, round(h / factor)))
    bands = []
    for c in range(img.shape[2]):
        band = Image.fromarray(img[:, :, c]).resize(small, Image.BOX).resize((w, h), Image.BILINEAR)
        bands.append(np.asarray(band))
    return np.stack(bands, axis=2)


def _brightness(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(img.astype(np.float64) + 255.0 * (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1])


def _contrast(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.6, 0.45, 0.3, 0.2, 0.1)[s - 1]
    x = img.astype(np.float64)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8(mean + (x - mean) * c)


def _haze(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    beta = (0.3, 0.6, 0.9, 1.2, 1.5)[s - 1]
    depth = 0.5 + _smooth_field(rng, *img.shape[:2], octaves=3)  # 0.5 .. 1.5
    t = np.exp(-beta * depth)[:, :, None]
    return _to_uint8(img * t + 230.0 * (1.0 - t))


def _cloud(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    field = _smooth_field(rng, *img.shape[:2], octaves=5)
    threshold = np.quantile(field, (0.9, 0.8, 0.65, 0.5, 0.4)[s - 1])
    alpha = np.clip((field - threshold) / 0.08, 0.0, 1.0)[:, :, None] * 0.95
    return _to_uint8(img * (1.0 - alpha) + 245.0 * alpha)


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur,
    "jpeg": _jpeg,
    "downsample": _downsample,
    "brightness": _brightness,
    "contrast": _contrast,
    "haze": _haze,
    "cloud": _cloud,
}


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupted copy of an (H, W, C) or (H, W) uint8 ``image``: corruption ``name`` (see :data:`CORRUPTIONS`)
    at ``severity`` 1..5, deterministic for ``seed``. Same shape and dtype as the input."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, not {severity!r}")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"corrupt expects an (H, W[, C]) uint8 image, got {arr.dtype} {arr.shape}")
    x = arr[:, :, None] if arr.ndim == 2 else arr
    out = np.array(CORRUPTIONS[name](x, int(severity), _rng(seed, name)), dtype=np.uint8)  # writable copy
    return out[:, :, 0] if arr.ndim == 2 else out


def psnr(clean: np.ndarray, other: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when identical)."""
    mse = float(np.mean((clean.astype(np.float64) - other.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
