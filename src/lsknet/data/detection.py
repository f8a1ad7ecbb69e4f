"""Oriented-detection dataset over DOTA-format folders, box-aware transforms, and a collate function.

A sample is a dict::

    image       float32 tensor (3, H, W), RGB, values in [0, 1]
    polys       float32 (N, 4, 2) corner polygons in pixels (clockwise on screen)
    rboxes      float32 (N, 5) (cx, cy, w, h, theta) pixels/radians, le90 (from ``polys``)
    labels      int64 (N,) indices into the dataset's class list
    difficult   bool (N,) (difficult 1 and split-truncated 2)
    image_id    str
    size        (H, W) of ``image``

Transforms take and return such a dict; geometry is done by torchvision v2 on the image and a
``tv_tensors.BoundingBoxes`` in ``XYXYXYXY`` format together, then ``rboxes`` are recomputed from the
polygons, so image and boxes always agree. :func:`to_tv_tensors` gives the same sample as tv_tensors for
users who want torchvision's own v2 transforms.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from lsknet.data.dota import SkipReport, get_classes, pair_images_and_labels, read_labeltxt
from lsknet.errors import DatasetFormatError

Sample = dict


def _rboxes_from_polys(polys: torch.Tensor) -> torch.Tensor:
    from lsknet.ops import poly_to_rbox

    if polys.shape[0] == 0:
        return torch.zeros((0, 5), dtype=torch.float32)
    return poly_to_rbox(polys.to(torch.float64), version="le90").to(torch.float32)


def _clockwise(polys: torch.Tensor) -> torch.Tensor:
    x, y = polys[..., 0], polys[..., 1]
    signed = (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1)
    out = polys.clone()
    ccw = signed < 0
    out[ccw] = polys[ccw][:, [0, 3, 2, 1]]
    return out


def to_tv_tensors(sample: Sample) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes]:
    """The sample's image and polygons as torchvision tv_tensors (``XYXYXYXY``, no clamping)."""
    h, w = sample["image"].shape[-2:]
    boxes = tv_tensors.BoundingBoxes(
        sample["polys"].reshape(-1, 8), format="XYXYXYXY", canvas_size=(h, w), clamping_mode=None
    )
    return tv_tensors.Image(sample["image"]), boxes


def _apply(sample: Sample, fn: Callable) -> Sample:
    """Run a torchvision functional op on image + polygons; refresh rboxes, size, orientation."""
    image, boxes = to_tv_tensors(sample)
    image, boxes = fn(image), fn(boxes)
    out = dict(sample)
    out["image"] = image.as_subclass(torch.Tensor)
    polys = _clockwise(boxes.as_subclass(torch.Tensor).reshape(-1, 4, 2).to(torch.float32))
    out["polys"] = polys
    out["size"] = tuple(out["image"].shape[-2:])
    return _refresh(out)


def _refresh(sample: Sample) -> Sample:
    sample["rboxes"] = _rboxes_from_polys(sample["polys"])
    return sample


def _select(sample: Sample, keep: torch.Tensor) -> Sample:
    out = dict(sample)
    for key in ("polys", "rboxes", "labels", "difficult"):
        out[key] = sample[key][keep]
    return out


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample


class RandomFlip:
    """Flip horizontally, vertically or diagonally (both axes, as MMRotate's ``diagonal``) with the given
    probabilities (official LSKNet recipe: 0.25 each); at most one flip per call."""

    def __init__(self, horizontal: float = 0.25, vertical: float = 0.25, diagonal: float = 0.25) -> None:
        if min(horizontal, vertical, diagonal) < 0 or horizontal + vertical + diagonal > 1 + 1e-9:
            raise ValueError("flip probabilities must be >= 0 and sum to <= 1")
        self.probs = (horizontal, vertical, diagonal)

    def __call__(self, sample: Sample) -> Sample:
        r = random.random()
        h, v, d = self.probs
        if r < h:
            return hflip(sample)
        if r < h + v:
            return vflip(sample)
        if r < h + v + d:
            return vflip(hflip(sample))
        return sample


def hflip(sample: Sample) -> Sample:
    """Mirror left-right."""
    return _apply(sample, TF.horizontal_flip)


def vflip(sample: Sample) -> Sample:
    """Mirror top-bottom."""
    return _apply(sample, TF.vertical_flip)


def rotate90(sample: Sample, k: int = 1) -> Sample:
    """Rotate by ``k * 90`` degrees counter-clockwise on screen (the canvas turns with the image)."""
    k = k % 4
    if k == 0:
        return sample
    return _apply(sample, lambda x: TF.rotate(x, 90.0 * k, expand=True))


class RandomRotate90:
    """With probability ``p`` rotate by a random multiple of 90 degrees (90, 180 or 270)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        if random.random() >= self.p:
            return sample
        return rotate90(sample, random.randint(1, 3))


def rotate(sample: Sample, angle: float, fill: float = 0.0, min_visible: float = 0.0) -> Sample:
    """Rotate by ``angle`` degrees counter-clockwise on screen about the image centre, keeping the canvas.

    Objects whose centre leaves the image are dropped (as MMRotate's ``RRandomRotate``); with
    ``min_visible`` > 0 also objects that keep less than that fraction of their area inside the canvas.
    """
    out = _apply(sample, lambda x: TF.rotate(x, float(angle), expand=False, fill=fill))
    if out["polys"].shape[0] == 0:
        return out
    h, w = out["size"]
    c = out["polys"].mean(1)
    keep = (c[:, 0] >= 0) & (c[:, 0] < w) & (c[:, 1] >= 0) & (c[:, 1] < h)
    if min_visible > 0:
        from lsknet.ops import poly_iof

        canvas = torch.tensor([[[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]]], dtype=torch.float64)
        vis = poly_iof(out["polys"].to(torch.float64), canvas).reshape(-1)
        keep &= vis >= min_visible
    return _select(out, keep)


class RandomRotate:
    """With probability ``p`` rotate by an angle uniform in ``[-angle_range, angle_range]`` degrees; when the
    image holds an object of ``rect_classes`` (indices; the official recipe: storage-tank, roundabout) the angle
    is a random multiple of 90 degrees instead, so their axis-aligned boxes stay tight."""

    def __init__(self, p: float = 0.5, angle_range: float = 180.0, rect_classes: Sequence[int] = ()) -> None:
        self.p, self.angle_range = p, angle_range
        self.rect_classes = torch.as_tensor(list(rect_classes), dtype=torch.int64)

    def __call__(self, sample: Sample) -> Sample:
        if random.random() >= self.p:
            return sample
        if len(self.rect_classes) and torch.isin(sample["labels"], self.rect_classes).any():
            return rotate90(sample, random.randint(1, 3)) if sample["size"][0] == sample["size"][1] else sample
        return rotate(sample, random.uniform(-self.angle_range, self.angle_range))


class Resize:
    """Resize to ``size`` = (H, W), or scale the longer side to ``max(size)`` and the shorter side to at most
    ``min(size)`` when ``keep_ratio`` (MMRotate's default for DOTA)."""

    def __init__(self, size: int | Sequence[int], keep_ratio: bool = False) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.keep_ratio = keep_ratio

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["size"]
        if self.keep_ratio:
            long_side, short_side = max(self.size), min(self.size)
            scale = min(long_side / max(h, w), short_side / min(h, w))
            target = [int(round(h * scale)), int(round(w * scale))]
        else:
            target = list(self.size)
        if target == [h, w]:
            return sample
        # corners are scaled exactly (torchvision would re-fit rectangles under anisotropic scaling)
        out = dict(sample)
        out["image"] = TF.resize(sample["image"], target, antialias=True)
        scale = torch.tensor([target[1] / w, target[0] / h], dtype=torch.float32)
        out["polys"] = sample["polys"] * scale
        out["size"] = tuple(target)
        return _refresh(out)


def collate_detection(batch: Sequence[Sample]) -> dict:
    """Stack same-sized images into (B, 3, H, W) (a list if sizes differ); per-image targets stay lists."""
    images = [s["image"] for s in batch]
    same = all(im.shape == images[0].shape for im in images)
    out: dict = {"images": torch.stack(images) if same else images}
    for key in ("polys", "rboxes", "labels", "difficult", "image_id", "size"):
        out[key] = [s[key] for s in batch]
    return out


def read_image(path: str | Path, image_hook: Callable | None = None) -> torch.Tensor:
    """RGB image file -> float32 (3, H, W) in [0, 1]; raises :class:`DatasetFormatError` if undecodable.
    ``image_hook`` maps the decoded (H, W, 3) uint8 array first (e.g. a corruption)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetFormatError(f"{path}: cannot decode image ({err})") from err
    if image_hook is not None:
        arr = image_hook(arr)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


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
        if filter_empty:
            self.items = [it for it in self.items if self.annotations[it[0]] and len(self.annotations[it[0]])]
        if not self.items:
            raise DatasetFormatError(f"{self.root}: no usable images")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def image_ids(self) -> list[str]:
        return [it[0] for it in self.items]

    def __getitem__(self, index: int) -> Sample:
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
        sample = _refresh(sample)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


def train_transforms(
    classes: Sequence[str], size: int | None = None, rotate_p: float = 0.0, angle_range: float = 180.0
) -> Compose:
    """The official LSKNet DOTA augmentation: optional resize, flips (h/v/diagonal 0.25 each) and, with
    ``rotate_p`` > 0, free rotation (storage-tank and roundabout only by multiples of 90 degrees)."""
    steps: list[Callable[[Sample], Sample]] = []
    if size is not None:
        steps.append(Resize(size))
    steps.append(RandomFlip())
    if rotate_p > 0:
        rect = [i for i, c in enumerate(classes) if c in ("storage-tank", "roundabout")]
        steps.append(RandomRotate(rotate_p, angle_range, rect))
    return Compose(steps)


__all__ = [
    "Compose",
    "DOTADetectionDataset",
    "RandomFlip",
    "RandomRotate",
    "RandomRotate90",
    "Resize",
    "collate_detection",
    "hflip",
    "read_image",
    "rotate",
    "rotate90",
    "to_tv_tensors",
    "train_transforms",
    "vflip",
]
