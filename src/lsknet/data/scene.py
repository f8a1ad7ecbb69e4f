"""Scene-classification data: class-per-folder trees, image decoding, seeded stratified splits, aerial augmentations.

Layout (UC Merced, AID, NWPU-RESISC45 and any custom set)::

    root/
      Airport/  airport_1.jpg airport_2.jpg ...
      Beach/    ...

Class names are the sub-folder names, sorted; files at the top level (README, CSV) are ignored.

Image decoding (:func:`load_image`) always returns an ``(H, W, 3)`` ``uint8`` array:

- 8-bit images are used as stored; palette / CMYK / YCbCr images are converted to RGB.
- grayscale (1 channel, or 2 with alpha) is repeated to 3 channels; **alpha is dropped** (RGBA -> RGB,
  not composited on a background), so a transparent pixel keeps its stored colour.
- images with more than 8 bits per sample (16-bit PNG/TIFF, 32-bit integer, float TIFF) are scaled to 8 bits
  **per image**: ``high_bit="percentile"`` (default) maps the 1st..99th percentile of all channels linearly to
  0..255 and clips (the usual display stretch for 11-/12-bit sensors stored in 16 bits); ``high_bit="range"``
  divides by the type's maximum (65535 for 16-bit, so 65535 -> 255). Float images always use the stretch.
- more than 4 channels (multispectral) is a :class:`~lsknet.errors.DatasetFormatError`.

Decoding, bit depth and channels follow :mod:`lsknet.data.imageio`, the one decoder of all tasks (TIFFs that
Pillow cannot read go through ``rasterio`` when installed: ``pip install lsknet[geo]``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lsknet.data.imageio import IMAGE_EXTENSIONS, is_image_file, load_rgb  # noqa: F401
from lsknet.errors import DatasetFormatError, DataSkipWarning

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str | Path, high_bit: str = "percentile") -> np.ndarray:
    """Decode an image to an (H, W, 3) uint8 RGB array: :func:`lsknet.data.imageio.load_rgb` (the one decoder and
    scaling rule of every task)."""
    return load_rgb(path, high_bit)


# ---------------------------------------------------------------------------------------------------------------------
# folder scanning and splits


@dataclass
class ScanSummary:
    """What a folder scan found: kept samples per class and the files skipped (path, reason)."""

    root: Path
    classes: list[str]
    counts: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        total = sum(self.counts.values())
        text = f"{self.root}: {total} images in {len(self.classes)} classes"
        if self.skipped:
            text += f", {len(self.skipped)} unreadable file(s) skipped"
        return text


def find_classes(root: str | Path) -> list[str]:
    """Sorted class names (sub-folders of ``root``, hidden ones excluded); DatasetFormatError if there are none."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: dataset folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetFormatError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    return classes


def scan_scene_folder(
    root: str | Path,
    classes: Sequence[str] | None = None,
    verify: bool = True,
    strict: bool = False,
    high_bit: str = "percentile",
) -> tuple[list[tuple[Path, int]], ScanSummary]:
    """List ``(path, class_index)`` for every image under ``root/<class>/`` (recursively), sorted by path.

    ``classes`` fixes the class order (e.g. from the training set); ``None`` uses :func:`find_classes`.
    With ``verify`` every image is decoded once: an unreadable one is skipped with a :class:`DataSkipWarning`
    naming it and counted in the summary, or raises :class:`DatasetFormatError` when ``strict``.
    A class folder without images raises :class:`DatasetFormatError`.
    """
    root = Path(root)
    classes = list(classes) if classes is not None else find_classes(root)
    samples: list[tuple[Path, int]] = []
    summary = ScanSummary(root=root, classes=classes, counts={})
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise DatasetFormatError(f"{folder}: class folder not found (classes: {', '.join(classes)})")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))
        kept = 0
        for path in files:
            if verify:
                try:
                    load_image(path, high_bit)
                except DatasetFormatError as err:
                    if strict:
                        raise
                    warnings.warn(f"skipping unreadable image {path}: {err}", DataSkipWarning, stacklevel=2)
                    summary.skipped.append((str(path), str(err)))
                    continue
            samples.append((path, index))
            kept += 1
        if kept == 0:
            what = "no readable images" if files else f"no images (extensions: {', '.join(IMAGE_EXTENSIONS)})"
            raise DatasetFormatError(f"{folder}: empty class folder: {what}")
        summary.counts[name] = kept
    log.info("%s", summary)
    return samples, summary


def stratified_split(labels: Sequence[int], train_ratio: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded stratified split of sample indices into (train, held-out), both sorted.

    Each class contributes ``round(n_c * train_ratio)`` samples to train, clamped so that a class with at least
    two samples has one on each side (the protocols of AID 20%/50% and NWPU 10%/20% training ratios).
    The draw depends only on ``seed`` and the labels, so every process of a multi-process run gets the same split.
    """
    if not 0.0 < float(train_ratio) < 1.0:
        raise DatasetFormatError(f"train ratio must be in (0, 1), got {train_ratio}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    held_out: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_train = int(round(len(members) * float(train_ratio)))
        if len(members) >= 2:
            n_train = min(max(n_train, 1), len(members) - 1)
        train.extend(int(i) for i in members[:n_train])
        held_out.extend(int(i) for i in members[n_train:])
    return sorted(train), sorted(held_out)


class SceneFolderDataset(Dataset):
    """Images with class labels; returns ``(image_tensor, class_index)``.

    ``samples`` are ``(path, class_index)`` pairs (see :func:`scan_scene_folder`); ``transform`` receives a
    ``(3, H, W)`` uint8 tensor.
    """

    # Optional (H, W, 3) uint8 -> same-shape uint8 function applied right after decoding (lsknet.analysis.robustness).
    image_hook = None

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        high_bit: str = "percentile",
    ) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.high_bit = high_bit

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """Class index of every sample."""
        return [label for _, label in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        array = load_image(path, self.high_bit)
        if self.image_hook is not None:
            array = self.image_hook(array)
        image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            image = self.transform(image)
        return image, label


# ---------------------------------------------------------------------------------------------------------------------
# transforms


class RandomRot90(torch.nn.Module):
    """Rotate a (..., H, W) tensor by a uniformly drawn multiple of 90 degrees (aerial scenes have no 'up')."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(image, k, dims=(-2, -1)) if k else image


def build_transforms(image_size: int, train: bool, aug: dict[str, Any] | None = None) -> v2.Compose:
    """Transforms from a uint8 (3, H, W) tensor to a normalised float tensor of ``image_size`` x ``image_size``.

    Training (``aug`` keys, defaults in brackets): random resized crop with ``scale`` [[0.5, 1.0]] and
    ``ratio`` [[0.75, 1.333]], horizontal and vertical ``flip`` [true], ``rot90`` [true], ``color_jitter``
    strength [0.0 = off]. Evaluation: resize to ``image_size`` (square). Both normalise with ImageNet mean/std.
    """
    aug = dict(aug or {})
    size = (int(image_size), int(image_size))
    steps: list[torch.nn.Module] = []
    if train:
        scale = tuple(float(s) for s in aug.get("scale", (0.5, 1.0)))
        ratio = tuple(float(r) for r in aug.get("ratio", (3 / 4, 4 / 3)))
        steps.append(v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True))
        if aug.get("flip", True):
            steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        if aug.get("rot90", True):
            steps.append(RandomRot90())
        jitter = float(aug.get("color_jitter", 0.0))
        if jitter > 0:
            steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    else:
        steps.append(v2.Resize(size, antialias=True))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)
