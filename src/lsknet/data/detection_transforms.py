"""Box-aware training transforms for oriented detection: the official LSKNet / MMRotate 0.3.4 pipeline.

A sample is the dict of :mod:`lsknet.data.detection` (``image`` (3, H, W) in [0, 1], ``polys`` (N, 4, 2) pixels,
``rboxes`` (N, 5) le90 from the polygons, ``labels``, ``difficult``, ``size``). Every transform moves image and
polygons together and recomputes ``rboxes``. :func:`train_transforms` is THE training recipe (the data module and
the tests both use it); its steps follow the official ``train_pipeline``:

- :class:`Resize` = ``RResize`` (keep ratio: long side to ``max(size)``, short side at most ``min(size)``; new side
  ``int(side * scale + 0.5)`` as mmcv).
- :class:`RandomFlip` = ``RRandomFlip(flip_ratio=[0.25] * 3, direction=[horizontal, vertical, diagonal])``: the
  official le90 geometry maps a centre ``x -> W - 1 - x`` (``y -> H - 1 - y``) on a pixel-mirrored image.
- :class:`RandomRotate` = ``PolyRandomRotate(rotate_ratio, angles_range, auto_bound=False, rect_classes)``: with
  probability ``p`` an angle uniform in ``[-range, range]`` degrees, or, when the image holds a rect class, one of
  ``90, 180, -90, -180`` (any image size; the canvas is kept, so non-square images crop). Coordinates turn about
  ``(W / 2, H / 2)`` (OpenCV's ``getRotationMatrix2D``), the image about its centre, bilinear, zero fill. Rotated
  or not, it then keeps only objects whose rbox centre is strictly inside the canvas and whose rbox sides are both
  larger than ``min_size`` (5 px): its ``filter_border``. A sample left without objects becomes ``None`` and the
  dataset draws another image (MMRotate returns ``None`` and its dataset draws again).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lsknet.ops import keep_ratio_size

Sample = dict

#: PolyRandomRotate's discrete angles (degrees) for images that hold a rect class.
RECT_ANGLES = (90, 180, -90, -180)
#: The official DOTA rect classes (``rect_classes=[9, 11]``).
DOTA_RECT_CLASSES = ("storage-tank", "roundabout")


def rboxes_from_polys(polys: torch.Tensor) -> torch.Tensor:
    """(N, 4, 2) polygons -> (N, 5) le90 rboxes (minimum-area rectangles), float32."""
    from lsknet.ops import poly_to_rbox

    if polys.shape[0] == 0:
        return torch.zeros((0, 5), dtype=torch.float32)
    return poly_to_rbox(polys.to(torch.float64), version="le90").to(torch.float32)


def refresh(sample: Sample) -> Sample:
    """Recompute ``rboxes`` from ``polys`` (in place) and return the sample."""
    sample["rboxes"] = rboxes_from_polys(sample["polys"])
    return sample


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


def _with(sample: Sample, image: torch.Tensor, polys: torch.Tensor) -> Sample:
    out = dict(sample)
    out["image"] = image
    out["polys"] = _clockwise(polys.to(torch.float32))
    out["size"] = tuple(image.shape[-2:])
    return refresh(out)


def select(sample: Sample, keep: torch.Tensor) -> Sample:
    """The sample with only the objects at ``keep`` (boolean mask or indices)."""
    out = dict(sample)
    for key in ("polys", "rboxes", "labels", "difficult"):
        out[key] = sample[key][keep]
    return out


class Compose:
    """Apply transforms in order; a transform returning ``None`` (sample rejected) ends the chain with ``None``."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample | None]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample | None:
        for t in self.transforms:
            sample = t(sample)
            if sample is None:
                return None
        return sample


def hflip(sample: Sample) -> Sample:
    """Mirror left-right: pixel columns reversed, coordinates ``x -> W - 1 - x`` (MMRotate ``RRandomFlip``)."""
    w = sample["size"][1]
    polys = sample["polys"].clone()
    polys[..., 0] = (w - 1) - polys[..., 0]
    return _with(sample, sample["image"].flip(-1), polys)


def vflip(sample: Sample) -> Sample:
    """Mirror top-bottom: pixel rows reversed, coordinates ``y -> H - 1 - y`` (MMRotate ``RRandomFlip``)."""
    h = sample["size"][0]
    polys = sample["polys"].clone()
    polys[..., 1] = (h - 1) - polys[..., 1]
    return _with(sample, sample["image"].flip(-2), polys)


def dflip(sample: Sample) -> Sample:
    """MMRotate's ``diagonal`` flip: both mirrors (a 180-degree turn about ``((W - 1) / 2, (H - 1) / 2)``)."""
    return vflip(hflip(sample))


class RandomFlip:
    """Flip horizontally, vertically or diagonally with the given probabilities (official: 0.25 each, so 0.25 no
    flip); at most one flip per call."""

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
            return dflip(sample)
        return sample


def rotate90(sample: Sample, k: int = 1) -> Sample:
    """Rotate by ``k * 90`` degrees counter-clockwise on screen, the canvas turning with the image (no crop)."""
    k = k % 4
    if k == 0:
        return sample
    image, boxes = to_tv_tensors(sample)
    image = TF.rotate(image, 90.0 * k, expand=True).as_subclass(torch.Tensor)
    polys = TF.rotate(boxes, 90.0 * k, expand=True).as_subclass(torch.Tensor).reshape(-1, 4, 2)
    return _with(sample, image, polys)


class RandomRotate90:
    """With probability ``p`` rotate by a random multiple of 90 degrees (90, 180 or 270), canvas turning."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        if random.random() >= self.p:
            return sample
        return rotate90(sample, random.randint(1, 3))


def rotation_matrix(angle: float, w: int, h: int) -> torch.Tensor:
    """(2, 3) float64 map of pixel coordinates for a rotation by ``angle`` degrees counter-clockwise on screen about
    ``(w / 2, h / 2)`` (OpenCV ``getRotationMatrix2D`` with scale 1)."""
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    cx, cy = w / 2.0, h / 2.0
    return torch.tensor([[c, s, (1 - c) * cx - s * cy], [-s, c, s * cx + (1 - c) * cy]], dtype=torch.float64)


def rotate(sample: Sample, angle: float, fill: float = 0.0) -> Sample:
    """Rotate by ``angle`` degrees counter-clockwise on screen, keeping the canvas (``auto_bound=False``): image
    bilinear about its centre, coordinates by :func:`rotation_matrix`. All objects are kept (see
    :func:`filter_objects`)."""
    h, w = sample["size"]
    m = rotation_matrix(angle, w, h)
    polys = sample["polys"].to(torch.float64)
    polys = polys @ m[:, :2].T + m[:, 2]
    image = TF.rotate(sample["image"], float(angle), interpolation=InterpolationMode.BILINEAR, fill=fill)
    return _with(sample, image, polys)


def filter_objects(sample: Sample, min_size: float = 5.0) -> Sample:
    """PolyRandomRotate's ``filter_border``: keep objects whose rbox centre is strictly inside ``(0, W) x (0, H)``
    and whose rbox sides are both larger than ``min_size`` pixels."""
    h, w = sample["size"]
    r = sample["rboxes"]
    keep = (r[:, 0] > 0) & (r[:, 0] < w) & (r[:, 1] > 0) & (r[:, 1] < h) & (r[:, 2] > min_size) & (r[:, 3] > min_size)
    return sample if bool(keep.all()) else select(sample, keep)


class RandomRotate:
    """PolyRandomRotate (see module docstring): with probability ``p`` rotate by a uniform angle in
    ``[-angle_range, angle_range]`` degrees, or by one of 90, 180, -90, -180 when the image holds an object of
    ``rect_classes`` (indices); then, rotated or not, :func:`filter_objects` with ``min_size``. Returns ``None``
    when that leaves a sample that had objects without any."""

    def __init__(
        self, p: float = 0.5, angle_range: float = 180.0, rect_classes: Sequence[int] = (), min_size: float = 5.0
    ) -> None:
        self.p, self.angle_range, self.min_size = p, angle_range, min_size
        self.rect_classes = torch.as_tensor(list(rect_classes), dtype=torch.int64)

    def __call__(self, sample: Sample) -> Sample | None:
        if random.random() < self.p:
            angle = random.uniform(-self.angle_range, self.angle_range)
            if len(self.rect_classes) and bool(torch.isin(sample["labels"], self.rect_classes).any()):
                angle = random.choice(RECT_ANGLES)
            sample = rotate(sample, angle)
        had_objects = len(sample["labels"]) > 0
        sample = filter_objects(sample, self.min_size)
        return None if had_objects and len(sample["labels"]) == 0 else sample


class Resize:
    """Resize to ``size`` = (H, W), or with ``keep_ratio`` (MMRotate ``RResize``) scale by
    ``min(max(size) / long side, min(size) / short side)``, sides ``int(side * scale + 0.5)``. Corners are scaled
    exactly (an anisotropic scale turns rectangles into parallelograms; their rboxes are refitted)."""

    def __init__(self, size: int | Sequence[int], keep_ratio: bool = False) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.keep_ratio = keep_ratio

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["size"]
        if self.keep_ratio:
            target = list(keep_ratio_size(h, w, self.size))
        else:
            target = list(self.size)
        if target == [h, w]:
            return sample
        image = TF.resize(sample["image"], target, antialias=True)
        scale_xy = torch.tensor([target[1] / w, target[0] / h], dtype=torch.float32)
        out = dict(sample)
        out["image"] = image
        out["polys"] = sample["polys"] * scale_xy
        out["size"] = tuple(target)
        return refresh(out)


def train_transforms(
    classes: Sequence[str],
    size: int | Sequence[int] | None = None,
    keep_ratio: bool = True,
    flip: bool = True,
    rotate_p: float = 0.0,
    angle_range: float = 180.0,
    rect_classes: Sequence[str] = DOTA_RECT_CLASSES,
    min_size: float = 5.0,
) -> Compose:
    """The official LSKNet training augmentation (module docstring): ``RResize`` to ``size`` (None: native),
    ``RRandomFlip`` (h/v/diagonal 0.25 each) when ``flip``, and with ``rotate_p`` > 0 ``PolyRandomRotate`` with
    ``rect_classes`` (names; those not in ``classes`` are ignored) and its ``min_size`` filter."""
    steps: list[Callable[[Sample], Sample | None]] = []
    if size:
        size = int(size) if isinstance(size, (int, float)) else [int(v) for v in size]
        steps.append(Resize(size, keep_ratio=keep_ratio))
    if flip:
        steps.append(RandomFlip())
    if rotate_p > 0:
        rect = [i for i, c in enumerate(classes) if c in set(rect_classes)]
        steps.append(RandomRotate(rotate_p, angle_range, rect, min_size))
    return Compose(steps)


def train_transforms_from_config(data_cfg: dict, classes: Sequence[str]) -> Compose:
    """:func:`train_transforms` for a config's ``data`` section (``image_size``, ``keep_ratio``, ``augment``:
    ``flip``, ``rotate_p``, ``angle_range``, ``rect_classes``, ``min_size``)."""
    aug = dict(data_cfg.get("augment") or {})
    return train_transforms(
        classes,
        size=data_cfg.get("image_size"),
        keep_ratio=bool(data_cfg.get("keep_ratio", True)),
        flip=bool(aug.get("flip", True)),
        rotate_p=float(aug.get("rotate_p", 0.0)),
        angle_range=float(aug.get("angle_range", 180.0)),
        rect_classes=tuple(aug.get("rect_classes", DOTA_RECT_CLASSES) or ()),
        min_size=float(aug.get("min_size", 5.0)),
    )


__all__ = [
    "Compose",
    "RandomFlip",
    "RandomRotate",
    "RandomRotate90",
    "Resize",
    "dflip",
    "filter_objects",
    "hflip",
    "refresh",
    "rotate",
    "rotate90",
    "rotation_matrix",
    "to_tv_tensors",
    "train_transforms",
    "train_transforms_from_config",
    "vflip",
]
