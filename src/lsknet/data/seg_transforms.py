"""Segmentation training transforms: the plain :class:`SegTransform` (tensors) and GeoSeg's UNetFormer pipeline
:class:`GeoSegTransform` (uint8 arrays, before normalisation), plus the mosaic of four samples.

GeoSeg (``geoseg/datasets/*_dataset.py``, ``transform.py``, ``config/*/unetformer.py``), per training sample:

1. mosaic with probability ``mosaic_ratio`` (0.25): four samples (this one + three random), a split point drawn
   uniformly in the middle half of a ``size`` canvas, a random crop of each sample fills one quadrant
   (:func:`mosaic`);
2. random scale: a factor drawn from a discrete list, bicubic image / nearest mask (:func:`random_scale`);
3. SmartCrop: random ``crop_size`` crops (images smaller than the crop padded centred with ``(crop - side)//2 + 1``
   on both sides: 0 / ignore), redrawn up to 10 times until no class covers ``max_ratio`` (0.75) or more of the
   non-ignored pixels of the crop (:func:`smart_crop`, rule :func:`crop_is_balanced`);
4. albumentations-style flips (p each), ``RandomRotate90`` (with probability p a rotation by k*90, k uniform in
   0..3), ``RandomBrightnessContrast`` (``v * alpha + beta * 255`` clipped, floored, alpha = 1 + U(-c, c),
   beta = U(-b, b), probability p); then ImageNet normalisation (:func:`to_tensor`).

Deviation: GeoSeg's ``RandomScale`` computes the new size from PIL's ``(width, height)`` as if it were
``(height, width)`` (it transposes the aspect of non-square images); here both sides scale by the factor (the same
on GeoSeg's square 1024 tiles).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lsknet.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Pair = tuple[np.ndarray, np.ndarray]  # image (H, W, C) uint8, mask (H, W) integer class indices


def to_tensor(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(H, W, C)`` uint8 -> normalised float ``(C, H, W)`` (``(x / 255 - mean) / std``, channel by channel)."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    c = x.shape[0]
    m = torch.tensor((list(mean) * c)[:c]).view(-1, 1, 1)
    s = torch.tensor((list(std) * c)[:c]).view(-1, 1, 1)
    return (x - m) / s


class SegTransform:
    """Aligned augmentation of an image ``(C, H, W)`` float tensor and its mask ``(H, W)`` long tensor.

    Random scale (factor drawn from ``scale_range``, bilinear image / nearest mask), random crop to ``crop_size``
    (padding with 0 / ``ignore_index`` when smaller), horizontal and vertical flips (probability 0.5 each) and
    90-degree rotations (k uniform in 0..3). With everything off it is the identity.
    """

    def __init__(
        self,
        crop_size: int | None = None,
        scale_range: Sequence[float] = (1.0, 1.0),
        hflip: bool = False,
        vflip: bool = False,
        rot90: bool = False,
        ignore_index: int = 255,
    ) -> None:
        self.crop_size = crop_size
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.scale_range
        if (lo, hi) != (1.0, 1.0):
            f = random.uniform(lo, hi)
            size = (max(1, round(image.shape[1] * f)), max(1, round(image.shape[2] * f)))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
        if self.crop_size:
            image, mask = self._crop(image, mask, self.crop_size)
        if self.hflip and random.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.vflip and random.random() < 0.5:
            image, mask = image.flip(-2), mask.flip(-2)
        if self.rot90:
            k = random.randrange(4)
            if k:
                image, mask = image.rot90(k, (-2, -1)), mask.rot90(k, (-2, -1))
        return image.contiguous(), mask.contiguous()

    def _crop(self, image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = mask.shape
        ph, pw = max(0, size - h), max(0, size - w)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            mask = F.pad(mask, (0, pw, 0, ph), value=self.ignore_index)
            h, w = mask.shape
        y, x = random.randint(0, h - size), random.randint(0, w - size)
        return image[:, y : y + size, x : x + size], mask[y : y + size, x : x + size]


# ------------------------------------------------------------------------------------------- GeoSeg pipeline
def _resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """PIL resize of an ``(H, W)`` or ``(H, W, C)`` uint8 array to ``size = (h, w)``, channel by channel if needed."""
    from PIL import Image

    h, w = size
    if array.ndim == 2 or array.shape[2] in (1, 3):
        squeeze = array.ndim == 3 and array.shape[2] == 1
        img = Image.fromarray(array[..., 0] if squeeze else array).resize((w, h), resample)
        out = np.asarray(img)
        return out[..., None] if squeeze else out
    return np.stack([_resize(array[..., c], size, resample) for c in range(array.shape[2])], axis=-1)


def random_scale(image: np.ndarray, mask: np.ndarray, scales: Sequence[float], rng: random.Random = random) -> Pair:
    """Resize by a factor drawn uniformly from ``scales``: ``(int(f * H), int(f * W))``, bicubic / nearest."""
    from PIL import Image

    f = float(rng.choice(list(scales)))
    h, w = mask.shape
    size = (max(1, int(f * h)), max(1, int(f * w)))
    if size == (h, w):
        return image, mask
    return _resize(image, size, Image.BICUBIC), _resize(mask.astype(np.uint8), size, Image.NEAREST)


def pad_to_crop(image: np.ndarray, mask: np.ndarray, size: int, ignore_index: int) -> Pair:
    """GeoSeg's ``RandomCrop`` padding: a side shorter than ``size`` gets ``(size - side) // 2 + 1`` pixels on both
    ends (image 0, mask ``ignore_index``)."""
    h, w = mask.shape
    ph = (size - h) // 2 + 1 if size > h else 0
    pw = (size - w) // 2 + 1 if size > w else 0
    if not (ph or pw):
        return image, mask
    image = np.pad(image, ((ph, ph), (pw, pw), (0, 0)), constant_values=0)
    mask = np.pad(mask, ((ph, ph), (pw, pw)), constant_values=ignore_index)
    return image, mask


def crop_is_balanced(mask: np.ndarray, max_ratio: float, ignore_index: int) -> bool:
    """GeoSeg's SmartCrop acceptance: at least two non-ignored classes and the largest one below ``max_ratio`` of the
    non-ignored pixels."""
    labels, counts = np.unique(mask, return_counts=True)
    counts = counts[labels != ignore_index]
    return len(counts) > 1 and counts.max() / counts.sum() < max_ratio


def smart_crop(
    image: np.ndarray, mask: np.ndarray, size: int, max_ratio: float = 0.75, ignore_index: int = 255,
    rng: random.Random = random, max_tries: int = 11,
) -> Pair:  # fmt: skip
    """Random ``size`` crops until :func:`crop_is_balanced` holds, at most ``max_tries`` (GeoSeg: 11; the last
    crop is kept when none passes)."""
    image, mask = pad_to_crop(image, mask, size, ignore_index)
    h, w = mask.shape
    if (h, w) == (size, size):
        return image, mask
    for _ in range(max_tries):
        y = rng.randint(0, h - size) if h > size else 0
        x = rng.randint(0, w - size) if w > size else 0
        crop = image[y : y + size, x : x + size], mask[y : y + size, x : x + size]
        if crop_is_balanced(crop[1], max_ratio, ignore_index):
            break
    return crop


def brightness_contrast(image: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """uint8 ``floor(clip(v * alpha + beta * 255, 0, 255))`` per value (albumentations' lookup table)."""
    lut = np.clip(np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta * 255.0), 0, 255)
    return lut.astype(np.uint8)[image]


def mosaic(
    samples: Sequence[Pair], size: tuple[int, int], rng: random.Random = random, ignore_index: int = 255
) -> Pair:
    """GeoSeg's mosaic of four samples on a ``size = (h, w)`` canvas: split point ``(ox, oy)`` with ``ox`` uniform
    in ``[w // 4, w - w // 4]`` (``oy`` alike); quadrants top-left, top-right, bottom-left, bottom-right are random
    crops of samples 0..3 of sizes ``(oy, ox)``, ``(oy, w - ox)``, ``(h - oy, ox)``, ``(h - oy, w - ox)`` (a sample
    smaller than its quadrant is padded at the bottom/right: image 0, mask ``ignore_index``)."""
    h, w = size
    ox = rng.randint(w // 4, w - w // 4)
    oy = rng.randint(h // 4, h - h // 4)
    boxes = [(0, 0, oy, ox), (0, ox, oy, w - ox), (oy, 0, h - oy, ox), (oy, ox, h - oy, w - ox)]
    channels = samples[0][0].shape[2]
    canvas = np.zeros((h, w, channels), dtype=np.uint8)
    labels = np.full((h, w), ignore_index, dtype=np.uint8)
    for (image, mask), (y0, x0, ch, cw) in zip(samples, boxes):
        if image.shape[2] != channels:
            raise ConfigError(f"mosaic: samples with {channels} and {image.shape[2]} channels")
        mh, mw = mask.shape
        y = rng.randint(0, mh - ch) if mh > ch else 0
        x = rng.randint(0, mw - cw) if mw > cw else 0
        part_img, part_mask = image[y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw]
        ph, pw = part_mask.shape
        canvas[y0 : y0 + ph, x0 : x0 + pw] = part_img
        labels[y0 : y0 + ph, x0 : x0 + pw] = part_mask
    return canvas, labels


def _probability(value: Any, default: float, name: str) -> float:
    if value is True:
        return default
    p = float(value or 0.0)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"data.{name} must be true/false or a probability in [0, 1], got {value!r}")
    return p


class GeoSegTransform:
    """GeoSeg's UNetFormer training augmentation on uint8 arrays (see module doc), steps in this order: scale,
    SmartCrop, horizontal flip, vertical flip, rot90, brightness/contrast. ``hflip``/``vflip``/``rot90``: true
    (probability 0.5, as GeoSeg's albumentations calls) or a probability; ``brightness_contrast``:
    ``{brightness: 0.25, contrast: 0.25, p: 0.25}`` or None."""

    def __init__(
        self,
        scales: Sequence[float] | None = None,
        crop_size: int | None = None,
        max_ratio: float = 0.75,
        hflip: bool | float = False,
        vflip: bool | float = False,
        rot90: bool | float = False,
        brightness_contrast: dict[str, float] | None = None,
        ignore_index: int = 255,
    ) -> None:
        self.scales = [float(s) for s in scales] if scales else None
        self.crop_size = int(crop_size) if crop_size else None
        self.max_ratio = float(max_ratio)
        self.p_hflip = _probability(hflip, 0.5, "hflip")
        self.p_vflip = _probability(vflip, 0.5, "vflip")
        self.p_rot90 = _probability(rot90, 0.5, "rot90")
        bc = dict(brightness_contrast or {})
        unknown = set(bc) - {"brightness", "contrast", "p"}
        if unknown:
            raise ConfigError(f"data.brightness_contrast: unknown keys {sorted(unknown)} (brightness, contrast, p)")
        self.bc = (float(bc.get("brightness", 0.25)), float(bc.get("contrast", 0.25)), float(bc.get("p", 0.25)))
        self.bc_on = bool(brightness_contrast)
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: random.Random = random) -> Pair:
        if self.scales:
            image, mask = random_scale(image, mask, self.scales, rng)
        if self.crop_size:
            image, mask = smart_crop(image, mask, self.crop_size, self.max_ratio, self.ignore_index, rng)
        if self.p_hflip and rng.random() < self.p_hflip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.p_vflip and rng.random() < self.p_vflip:
            image, mask = image[::-1], mask[::-1]
        if self.p_rot90 and rng.random() < self.p_rot90:
            k = rng.randint(0, 3)
            image, mask = np.rot90(image, k), np.rot90(mask, k)
        if self.bc_on and rng.random() < self.bc[2]:
            alpha = 1.0 + rng.uniform(-self.bc[1], self.bc[1])
            beta = rng.uniform(-self.bc[0], self.bc[0])
            image = brightness_contrast(image, alpha, beta)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)
