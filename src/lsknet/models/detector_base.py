"""What every lsknet detector shares: input checks, normalisation and padding, training-target checks, the
official test-time ``RResize``, the per-image test loop, and the backbone built the official way.

A detector (Oriented R-CNN, RoI Transformer, S2A-Net, R3Det) subclasses :class:`Detector` and implements
``loss_batch`` (training) and ``predict_batch`` (inference) on a normalised, padded batch. The call is the same for
all::

    losses = model(images, targets)          # train mode: dict of losses (keys ``loss_*`` are summed by the task)
    model.eval(); results = model(images)    # list of {"rboxes": (N, 5) le90, "scores": (N,), "labels": (N,)}

``images``: a list of (3, H, W) RGB tensors in 0..255 (uint8 or float), any sizes. ``targets``: per image
``{"rboxes": (N, 5), "labels": (N,) in [0, num_classes)}``; boxes ``(cx, cy, w, h, theta)`` in input pixels and
radians, le90.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from lsknet.errors import CheckpointError, ConfigError
from lsknet.models.checkpoint import (
    load_backbone_weights,
    load_checkpoint_file,
    load_state_dict_checked,
    normalize_state_dict,
    unwrap_checkpoint,
)
from lsknet.ops import keep_ratio_size

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "Detector",
    "build_detector_backbone",
    "check_images",
    "load_detector_checkpoint",
    "load_detector_weights",
    "options_dataclass",
    "read_detector_state_dict",
]

_log = logging.getLogger(__name__)

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
_VARIANTS = {"t": "lsknet_t", "s": "lsknet_s", "lsknet_t": "lsknet_t", "lsknet_s": "lsknet_s"}


def check_images(images: Sequence[torch.Tensor] | torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """A list of (3, H, W) images and their (H, W); raises ``ValueError`` naming the bad image."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"expected a (B, 3, H, W) tensor or a list of (3, H, W) tensors, got {images.shape}")
        images = list(images)
    if len(images) == 0:
        raise ValueError("no images given")
    sizes = []
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image {i}: expected shape (3, H, W) RGB, got {tuple(img.shape)}")
        if min(img.shape[1:]) < 1:
            raise ValueError(f"image {i}: empty image {tuple(img.shape)}")
        sizes.append((int(img.shape[1]), int(img.shape[2])))
    return list(images), sizes


def build_detector_backbone(
    variant: str = "lsknet_t",
    *,
    drop_path_rate: float = 0.1,
    proj_drop_rate: float = 0.1,
    **backbone_kwargs: Any,
) -> tuple[nn.Module, list[int] | None, list[int]]:
    """The backbone of a detector, built as the official configs do: ``(backbone, backbone_indices, channels)``.

    ``variant``: ``"lsknet_t"``/``"t"``, ``"lsknet_s"``/``"s"`` or any timm model with feature levels of strides 4, 8,
    16, 32 (``channels`` lists their widths, finest first). For LSKNet (and any timm model with
    ``forward_intermediates``) the bare model is returned with ``backbone_indices``, so parameter names carry no
    wrapper prefix (the official ``backbone.*`` layout); otherwise a ``features_only`` wrapper and ``None``.
    """
    name = _VARIANTS.get(str(variant).lower(), str(variant))
    kwargs = dict(backbone_kwargs)
    if name in ("lsknet_t", "lsknet_s"):
        import lsknet.models.backbone  # noqa: F401  (registers the timm models)

        kwargs.setdefault("proj_drop_rate", proj_drop_rate)
    try:
        features = timm.create_model(name, features_only=True, drop_path_rate=drop_path_rate, **kwargs)
    except RuntimeError as err:
        raise ConfigError(f"unknown backbone {variant!r}: {err}") from None
    reductions = features.feature_info.reduction()
    indices = [i for i, r in enumerate(reductions) if r in (4, 8, 16, 32)]
    if [reductions[i] for i in indices] != [4, 8, 16, 32]:
        raise ConfigError(f"backbone {name!r} lacks feature levels of strides 4, 8, 16, 32 (has {reductions})")
    channels = [features.feature_info.channels()[i] for i in indices]
    inner = getattr(features, "model", None)
    if inner is not None and hasattr(inner, "forward_intermediates"):
        return inner, indices, channels  # parameter names without a wrapper prefix (official layout)
    if len(reductions) != 4:
        features = timm.create_model(
            name, features_only=True, out_indices=tuple(indices), drop_path_rate=drop_path_rate, **kwargs
        )
    return features, None, channels


def options_dataclass(cls: type, value: Any, what: str) -> Any:
    """A config mapping as the options dataclass ``cls`` (``None`` and ``cls`` instances pass through); a wrong field
    or type raises :class:`ConfigError` naming ``what`` (e.g. ``"head.test_cfg"``)."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls(**value)
        except TypeError as err:
            raise ConfigError(f"{what}: {err}") from None
    raise ConfigError(f"{what}: expected a mapping, got {type(value).__name__}")


class Detector(nn.Module):
    """Base of the detectors: owns ``backbone`` and ``neck`` and the input handling; subclasses add their heads and
    implement :meth:`loss_batch` and :meth:`predict_batch`.

    Args:
        backbone: module producing the 4 feature maps of strides 4, 8, 16, 32 (finest first).
        neck: the FPN (it picks the levels it uses).
        backbone_indices: when given, features come from ``backbone.forward_intermediates(x, indices,
            intermediates_only=True)`` (timm models); otherwise from ``backbone(x)``.
        pixel_mean, pixel_std: normalisation in 0..255 units, RGB.
        size_divisor: images are padded to a multiple of this.
        batch_same_size: at inference, run images of the same padded size as one batch (faster on a GPU; results
            then equal the one-by-one results only up to float rounding, which can flip NMS decisions). Default
            ``False``: each image runs alone, as the official batch-1 test, so results never depend on the batch.
        test_resize: at inference, rescale each image with its aspect ratio kept to fit this size (an int or
            (H, W); small images are enlarged) and map the boxes back, as MMRotate's test ``RResize`` +
            ``rescale=True`` (HRSC2016: 800; DOTA multi-scale patches: 1024). ``None``: native size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        backbone_indices: Sequence[int] | None = None,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        size_divisor: int = 32,
        batch_same_size: bool = False,
        test_resize: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.backbone_indices = list(backbone_indices) if backbone_indices is not None else None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        self.size_divisor = size_divisor
        self.batch_same_size = batch_same_size
        self.test_resize = test_resize

    # ---- what a detector implements ----------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of object classes (background excluded)."""
        raise NotImplementedError

    @staticmethod
    def checkpoint_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
        """Number of classes a state dict of this detector was trained for (read from its classifier layer), or
        ``None`` when it cannot tell; used to name a class-count mismatch clearly when loading."""
        return None

    def loss_batch(
        self,
        batch: torch.Tensor,
        sizes: list[tuple[int, int]],
        gt_rboxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Training losses of a normalised, padded (B, 3, H, W) batch; ``sizes`` are the (H, W) before padding."""
        raise NotImplementedError

    def predict_batch(
        self,
        batch: torch.Tensor,
        sizes: list[tuple[int, int]],
        scale_factors: list[tuple[float, float]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections of a normalised, padded batch: per image ``{"rboxes" (N, 5) le90, "scores", "labels"}`` in the
        pixels of the image as given to ``forward`` (boxes divided by ``scale_factors`` ``(w_scale, h_scale)`` when
        the image was rescaled by ``test_resize``)."""
        raise NotImplementedError

    # ---- shared ----------------------------------------------------------------------------------------

    def preprocess(self, images: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalise and pad a list of (3, H, W) 0..255 RGB images into a (B, 3, H', W') batch; also return each
        image's (H, W) before padding."""
        images, sizes = check_images(images)
        pad_h, pad_w = self.padded_size(max(h for h, _ in sizes), max(w for _, w in sizes))
        device, dtype = self.pixel_mean.device, self.pixel_mean.dtype
        batch = torch.zeros(len(images), 3, pad_h, pad_w, device=device, dtype=dtype)
        for i, img in enumerate(images):
            img = img.to(device=device, dtype=dtype)
            batch[i, :, : img.shape[1], : img.shape[2]] = (img - self.pixel_mean) / self.pixel_std
        return batch, sizes

    def extract_feats(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Pyramid features (the neck's levels) of a normalised, padded batch."""
        if self.backbone_indices is not None:
            feats = self.backbone.forward_intermediates(batch, indices=self.backbone_indices, intermediates_only=True)
        else:
            feats = self.backbone(batch)
        return self.neck(list(feats))

    def forward(
        self,
        images: Sequence[torch.Tensor] | torch.Tensor,
        targets: Sequence[Mapping[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training (``self.training``, targets required): dict of losses (keys ``loss_*`` are losses, others such
        as ``acc`` are only logged); the batch is padded to its largest image (as MMDetection's collate does). Eval
        mode: per-image result dicts, each image padded on its own (see :meth:`predict_images`)."""
        if not self.training:
            return self.predict_images(images)
        batch, sizes = self.preprocess(images)
        gt_rboxes, gt_labels = self.check_targets(targets, len(sizes), batch.device)
        return self.loss_batch(batch, sizes, gt_rboxes, gt_labels)

    def check_targets(
        self, targets: Sequence[Mapping[str, torch.Tensor]] | None, num_images: int, device: torch.device
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Training targets as ``(gt_rboxes, gt_labels)`` lists on ``device``: (G, 5) float32 rboxes and (G,) int64
        labels per image. Raises ``ValueError`` when they are missing, fewer or more than the images, or a label is
        outside ``[0, num_classes)``."""
        if targets is None:
            raise ValueError("training mode needs targets (call model.eval() for inference)")
        if len(targets) != num_images:
            raise ValueError(f"{num_images} images but {len(targets)} targets")
        gt_rboxes, gt_labels = [], []
        for t in targets:
            boxes = torch.as_tensor(t["rboxes"], dtype=torch.float32, device=device).reshape(-1, 5)
            labels = torch.as_tensor(t["labels"], dtype=torch.long, device=device).reshape(-1)
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"labels must be in [0, {self.num_classes}), got {labels.tolist()[:10]}")
            gt_rboxes.append(boxes)
            gt_labels.append(labels)
        return gt_rboxes, gt_labels

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) rounded up to multiples of ``size_divisor``: the input size of an image tested on its own."""
        d = self.size_divisor
        return int(math.ceil(height / d) * d), int(math.ceil(width / d) * d)

    def predict_images(self, images: Sequence[torch.Tensor] | torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Inference with each image padded on its own to a multiple of ``size_divisor`` and run alone (official
        batch-1 testing), so results never depend on the batch's make-up; see ``batch_same_size``."""
        images, sizes = check_images(images)
        scales: list[tuple[float, float]] | None = None
        if self.test_resize is not None:
            images, scales = zip(*(self.resize_for_test(img) for img in images))
            sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        groups: dict[object, list[int]] = {}
        for i, (h, w) in enumerate(sizes):
            groups.setdefault(self.padded_size(h, w) if self.batch_same_size else i, []).append(i)
        results: list[dict[str, torch.Tensor]] = [{} for _ in images]
        for idx in groups.values():
            batch, sub_sizes = self.preprocess([images[i] for i in idx])
            sub_scales = [scales[i] for i in idx] if scales is not None else None
            for i, res in zip(idx, self.predict_batch(batch, sub_sizes, sub_scales)):
                results[i] = res
        return results

    def resize_for_test(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
        """One (3, H, W) 0..255 image rescaled by ``test_resize`` (keep ratio; bilinear without antialiasing and
        rounded to integers, as OpenCV's ``INTER_LINEAR`` on 8-bit images) and its ``(w_scale, h_scale)``."""
        h, w = int(image.shape[1]), int(image.shape[2])
        new_h, new_w = keep_ratio_size(h, w, self.test_resize)
        if (new_h, new_w) == (h, w):
            return image, (1.0, 1.0)
        out = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False)
        return out[0].round().clamp(0, 255), (new_w / w, new_h / h)


def read_detector_state_dict(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """``(state_dict, ignored_keys, source_name)`` of a detector checkpoint: an MMRotate 0.x file
    (``{"meta", "state_dict"}``), a plain state dict, or an lsknet Lightning checkpoint (``model.`` prefix removed).

    ``ema_*`` entries (MMDetection's EMA hook buffers) are left out and listed in ``ignored``: that hook swaps the
    EMA weights into the model before each checkpoint is saved, so the plain keys of an official EMA checkpoint
    (LSKNet-S*) already hold the EMA weights and the ``ema_*`` buffers the raw training weights. ``module.``
    prefixes are removed.
    """
    if isinstance(source, (str, Path)):
        state, name = unwrap_checkpoint(load_checkpoint_file(source), use_ema=False, source=str(source)), str(source)
    else:
        state, name = unwrap_checkpoint(source, use_ema=False, source="state dict"), "state dict"
    cleaned: dict[str, torch.Tensor] = {}
    ignored = []
    for key, value in normalize_state_dict(state, prefix="").items():
        if key.startswith("ema_"):
            ignored.append(key)
            continue
        cleaned[key] = value
    if cleaned and all(k.startswith("model.") for k in cleaned):
        cleaned = {k.removeprefix("model."): v for k, v in cleaned.items()}
    return cleaned, ignored, name


def load_detector_checkpoint(
    model: Detector, checkpoint: str | Path | Mapping[str, Any], strict: bool = True
) -> dict[str, list[str]]:
    """Load a detector checkpoint (see :func:`read_detector_state_dict`) into ``model`` (any :class:`Detector`).

    A checkpoint for a different number of classes, a different backbone variant or another detector, and missing
    or unexpected keys raise :class:`CheckpointError` naming them. Returns ``{"loaded": [...], "ignored": [...]}``.
    """
    cleaned, ignored, source = read_detector_state_dict(checkpoint)
    if ignored:
        _log.info(
            "%s: loaded the plain keys, which hold the EMA weights (MMDetection's EMA hook swaps them in before "
            "saving); ignored %d ema_* buffer(s) holding the raw training weights",
            source,
            len(ignored),
        )
    have = model.checkpoint_num_classes(cleaned)
    if have is not None and have != model.num_classes:
        raise CheckpointError(
            f"{source}: checkpoint was trained for {have} classes but the model has {model.num_classes}; "
            f"build the model with num_classes={have}"
        )
    load_state_dict_checked(model, cleaned, source=source, what=f"the {type(model).__name__} model", strict=strict)
    return {"loaded": sorted(cleaned), "ignored": sorted(ignored)}


def load_detector_weights(
    model: Detector, checkpoint: str | Path | None = None, backbone_checkpoint: str | Path | None = None
) -> Detector:
    """A builder's last step: the whole ``checkpoint`` (:func:`load_detector_checkpoint`), else ImageNet
    ``backbone_checkpoint`` weights into the backbone, else nothing; returns ``model``."""
    if checkpoint is not None:
        load_detector_checkpoint(model, checkpoint)
    elif backbone_checkpoint is not None:
        load_backbone_weights(model.backbone, backbone_checkpoint)
    return model
