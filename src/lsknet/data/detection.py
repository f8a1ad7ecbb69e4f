"""Oriented-detection dataset over DOTA-format folders, box-aware transforms, and a collate function.

A sample is a dict::

    image       float32 tensor (3, H, W), RGB, values in [0, 1]
    polys       float32 (N, 4, 2) corner polygons in pixels (clockwise on screen)
    rboxes      float32 (N, 5) (cx, cy, w, h, theta) pixels/radians, le90 (from ``polys``)
    labels      int64 (N,) indices into the dataset's class list
    difficult   bool (N,) (difficult 1 and split-truncated 2)
    image_id    str
    size        (H, W) of ``image``

Transforms (:mod:`lsknet.data.detection_transforms`, re-exported here) take and return such a dict, moving image
and polygons together and recomputing ``rboxes``; :func:`train_transforms` is the official training recipe.
:func:`to_tv_tensors` gives the same sample as tv_tensors for users who want torchvision's own v2 transforms.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lsknet.data.detection_transforms import (
    Compose,
    RandomFlip,
    RandomRotate,
    RandomRotate90,
    Resize,
    Sample,
    dflip,
    filter_objects,
    hflip,
    refresh,
    rotate,
    rotate90,
    to_tv_tensors,
    train_transforms,
    train_transforms_from_config,
    vflip,
)
from lsknet.data.dota import SkipReport, get_classes, pair_images_and_labels, read_labeltxt
from lsknet.data.imageio import load_rgb
from lsknet.errors import DatasetFormatError

log = logging.getLogger(__name__)

#: How many other images a training dataset draws when its transforms reject a sample (all objects filtered).
MAX_REDRAWS = 100


def collate_detection(batch: Sequence[Sample]) -> dict:
    """Stack same-sized images into (B, 3, H, W) (a list if sizes differ); per-image targets stay lists."""
    images = [s["image"] for s in batch]
    same = all(im.shape == images[0].shape for im in images)
    out: dict = {"images": torch.stack(images) if same else images}
    for key in ("polys", "rboxes", "labels", "difficult", "image_id", "size"):
        out[key] = [s[key] for s in batch]
    return out


def read_image(path: str | Path, image_hook: Callable | None = None) -> torch.Tensor:
    """Image file -> float32 RGB (3, H, W) in [0, 1] (:func:`lsknet.data.imageio.load_rgb`: the decoder and 8-bit
    scaling rule the predictor uses too); raises :class:`DatasetFormatError` if undecodable. ``image_hook`` maps
    the decoded (H, W, 3) uint8 array first (e.g. a corruption)."""
    arr = load_rgb(path)
    if image_hook is not None:
        arr = np.ascontiguousarray(image_hook(arr))
    return torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(255.0)


class DOTADetectionDataset(Dataset):
    """Images + ``labelTxt`` of a DOTA-format folder (``root/images``, ``root/labelTxt``).

    Args:
        root: dataset folder (e.g. the output of ``lsknet dota split`` or ``lsknet data synth``).
        classes: class list (``dota1.0``/names/file); objects of other classes are skipped with a warning.
        transforms: callable on the sample dict (see module doc), e.g. ``Compose([RandomFlip(), ...])``.
        image_ids: restrict to these ids (e.g. a train/val split); default all paired images.
        filter_empty: drop images without (non-difficult or difficult) objects, as MMRotate does for training.
        labels_required: False for unlabeled test folders (samples then have no objects).
        strict: raise on the first bad label line / image instead of skipping it with a warning.
        min_size: objects whose le90 rbox (minimum-area rectangle) has a side below this many pixels are dropped at
            load, each counted in ``report`` (MMRotate's ``poly2obb_np`` returns nothing for w or h < 2 and its
            training set skips those objects); applied before ``filter_empty``. 0 keeps every object.

    When ``transforms`` return ``None`` (e.g. the rotation step filtered every object away) another image is drawn
    at random, as MMRotate's training dataset does; ``redraws`` counts them (per process).
    """

    # Optional (H, W, 3) uint8 -> same-shape uint8 function applied right after decoding (lsknet.analysis.robustness).
    image_hook = None

    def __init__(
        self,
        root: str | Path,
        classes: str | Sequence[str] | None = "dota1.0",
        transforms: Callable[[Sample], Sample] | None = None,
        image_ids: Sequence[str] | None = None,
        filter_empty: bool = False,
        labels_required: bool = True,
        strict: bool = False,
        min_size: float = 0.0,
    ) -> None:
        self.root = Path(root)
        self.classes = get_classes(classes)
        self.transforms = transforms
        self.strict = strict
        self.report = SkipReport(strict=strict)
        items = pair_images_and_labels(self.root, self.report, labels_required=labels_required)
        if image_ids is not None:
            wanted = set(image_ids)
            items = [it for it in items if it[0] in wanted]
            missing = wanted - {it[0] for it in items}
            if missing:
                raise DatasetFormatError(f"{self.root}: image ids not found: {sorted(missing)[:5]}")
        self.items = items
        self.annotations = {
            image_id: read_labeltxt(label, self.classes, self.report) if label is not None else None
            for image_id, _, label in items
        }
        if min_size > 0:
            self._drop_small(float(min_size))
        self.redraws = 0
        if filter_empty:
            self.items = [it for it in self.items if self.annotations[it[0]] and len(self.annotations[it[0]])]
        if not self.items:
            raise DatasetFormatError(f"{self.root}: no usable images")

    def _drop_small(self, min_size: float) -> None:
        from lsknet.ops import poly_to_rbox

        for image_id, ann in self.annotations.items():
            if not ann:
                continue
            rboxes = poly_to_rbox(torch.from_numpy(ann.polys), version="le90")
            small = ((rboxes[:, 2] < min_size) | (rboxes[:, 3] < min_size)).numpy()
            for k in np.nonzero(small)[0]:
                self.report.skip(f"{image_id}: object {k + 1}", f"object smaller than {min_size:g} px")
            if small.any():
                self.annotations[image_id] = ann.select(~small)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def image_ids(self) -> list[str]:
        return [it[0] for it in self.items]

    def __getitem__(self, index: int) -> Sample:
        for _ in range(MAX_REDRAWS + 1):
            sample = self._load(index)
            if self.transforms is not None:
                sample = self.transforms(sample)
            if sample is not None:
                return sample
            self.redraws += 1
            log.debug("%s: no objects left after the transforms; drawing another image", self.items[index][0])
            index = random.randrange(len(self.items))
        raise DatasetFormatError(
            f"{self.root}: the transforms rejected {MAX_REDRAWS + 1} samples in a row (no objects left after the "
            "size filter); check data.augment.min_size and the object sizes"
        )

    def _load(self, index: int) -> Sample:
        image_id, image_path, _ = self.items[index]
        image = read_image(image_path, self.image_hook)
        ann = self.annotations[image_id]
        if ann is not None and len(ann):
            polys = torch.from_numpy(ann.polys).to(torch.float32)
            labels = torch.from_numpy(ann.labels(self.classes))
            difficult = torch.from_numpy(ann.difficult > 0)
        else:
            polys, labels, difficult = (
                torch.zeros((0, 4, 2)),
                torch.zeros(0, dtype=torch.int64),
                torch.zeros(0, dtype=torch.bool),
            )
        sample = {
            "image": image,
            "polys": polys,
            "labels": labels,
            "difficult": difficult,
            "image_id": image_id,
            "size": tuple(image.shape[-2:]),
        }
        return refresh(sample)


__all__ = [
    "MAX_REDRAWS",
    "Compose",
    "DOTADetectionDataset",
    "RandomFlip",
    "RandomRotate",
    "RandomRotate90",
    "Resize",
    "collate_detection",
    "dflip",
    "filter_objects",
    "hflip",
    "read_image",
    "rotate",
    "rotate90",
    "to_tv_tensors",
    "train_transforms",
    "train_transforms_from_config",
    "vflip",
]
