"""Oriented R-CNN detector = backbone + FPN + oriented RPN + rotated RoI head (the official LSKNet detector).

Usage::

    model = build_oriented_rcnn("lsknet_t", num_classes=15)            # or lsknet.create_model("lsknet_t_orcnn")
    losses = model(images, targets)                                  # train mode: dict of scalar losses
    model.eval(); results = model(images)                            # list of {"rboxes", "scores", "labels"}

``images``: a list of (3, H, W) RGB tensors with values in 0..255 (uint8 or float), any sizes; they are
normalised with the ImageNet mean/std in 0..255 units and padded (bottom/right) to a common size that is a
multiple of 32. ``targets``: per image ``{"rboxes": (N, 5) float, "labels": (N,) int64 in [0, num_classes)}``.
Boxes are ``(cx, cy, w, h, theta)`` in input pixels and radians, le90 (``lsknet.ops``).

Parameter names equal the MMRotate 0.x checkpoints (``backbone.*``, ``neck.*``, ``rpn_head.*``, ``roi_head.*``),
so ``load_detector_checkpoint`` reads official detector files without renaming.
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
from lsknet.models.checkpoint import load_state_dict_checked, normalize_state_dict
from lsknet.models.fpn import FPN
from lsknet.models.roi_head import OrientedRoIHead, RoITestConfig
from lsknet.models.rpn import AnchorGenerator, OrientedRPNHead, ProposalConfig
from lsknet.ops import keep_ratio_size

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "OrientedRCNN",
    "build_oriented_rcnn",
    "detector_from_config",
    "load_detector_checkpoint",
]

_log = logging.getLogger(__name__)

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
_VARIANTS = {"t": "lsknet_t", "s": "lsknet_s", "lsknet_t": "lsknet_t", "lsknet_s": "lsknet_s"}


def _check_images(images: Sequence[torch.Tensor] | torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
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


class OrientedRCNN(nn.Module):
    """Two-stage oriented detector composed of readable parts.

    Args:
        backbone: module producing the 4 feature maps of strides 4, 8, 16, 32 (finest first).
        neck: :class:`~lsknet.models.fpn.FPN` (5 levels, strides 4..64).
        rpn_head: :class:`~lsknet.models.rpn.OrientedRPNHead`.
        roi_head: :class:`~lsknet.models.roi_head.OrientedRoIHead`.
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
        neck: FPN,
        rpn_head: OrientedRPNHead,
        roi_head: OrientedRoIHead,
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
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.backbone_indices = list(backbone_indices) if backbone_indices is not None else None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        self.size_divisor = size_divisor
        self.batch_same_size = batch_same_size
        self.test_resize = test_resize

    @property
    def num_classes(self) -> int:
        """Number of object classes (background excluded)."""
        return self.roi_head.num_classes

    def preprocess(self, images: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalise and pad a list of (3, H, W) 0..255 RGB images into a (B, 3, H', W') batch; also return each
        image's (H, W) before padding."""
        images, sizes = _check_images(images)
        pad_h, pad_w = self.padded_size(max(h for h, _ in sizes), max(w for _, w in sizes))
        device, dtype = self.pixel_mean.device, self.pixel_mean.dtype
        batch = torch.zeros(len(images), 3, pad_h, pad_w, device=device, dtype=dtype)
        for i, img in enumerate(images):
            img = img.to(device=device, dtype=dtype)
            batch[i, :, : img.shape[1], : img.shape[2]] = (img - self.pixel_mean) / self.pixel_std
        return batch, sizes

    def extract_feats(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Pyramid features (5 levels) of a normalised, padded batch."""
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
        """Training (``self.training``, targets required): dict of losses ``loss_rpn_cls``, ``loss_rpn_bbox``,
        ``loss_cls``, ``loss_bbox`` (+ ``acc``, not a loss); the batch is padded to its largest image (as MMDetection's
        collate does). Eval mode: per-image result dicts, each image padded on its own (see :meth:`_predict`)."""
        if not self.training:
            return self._predict(images)
        batch, sizes = self.preprocess(images)
        gt_rboxes, gt_labels = self.check_targets(targets, len(sizes), batch.device)
        feats = self.extract_feats(batch)
        proposals, losses = self.rpn_head.propose(feats, sizes, gt_rboxes)
        losses.update(self.roi_head.loss(feats, proposals, gt_rboxes, gt_labels))
        return losses

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

    def _predict(self, images: Sequence[torch.Tensor] | torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Inference with each image padded on its own to a multiple of ``size_divisor`` and run alone (official
        batch-1 testing), so results never depend on the batch's make-up; see ``batch_same_size``."""
        images, sizes = _check_images(images)
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
            feats = self.extract_feats(batch)
            proposals, _ = self.rpn_head.propose(feats, sub_sizes)
            sub_scales = [scales[i] for i in idx] if scales is not None else None
            for i, res in zip(idx, self.roi_head.predict(feats, proposals, sub_sizes, scale_factors=sub_scales)):
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


def _dataclass_from(cls: type, value: Any, what: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls(**value)
        except TypeError as err:
            raise ConfigError(f"{what}: {err}") from None
    raise ConfigError(f"{what}: expected a mapping, got {type(value).__name__}")


def build_oriented_rcnn(
    variant: str = "lsknet_t",
    num_classes: int = 15,
    checkpoint: str | Path | None = None,
    *,
    backbone_checkpoint: str | Path | None = None,
    drop_path_rate: float = 0.1,
    proj_drop_rate: float = 0.1,
    fpn_channels: int = 256,
    rpn: Mapping[str, Any] | None = None,
    roi: Mapping[str, Any] | None = None,
    **backbone_kwargs: Any,
) -> OrientedRCNN:
    """Oriented R-CNN with an LSKNet (or any timm ``features_only``) backbone, official defaults.

    Args:
        variant: ``"lsknet_t"``/``"t"`` or ``"lsknet_s"``/``"s"``, or any timm model name with 4 feature levels of
            strides 4..32 (e.g. ``"resnet18"`` for quick experiments).
        num_classes: object classes (15 for DOTA-v1.0).
        checkpoint: a detector checkpoint (MMRotate ``{"meta", "state_dict"}`` or this project's), loaded with
            :func:`load_detector_checkpoint`.
        backbone_checkpoint: ImageNet backbone weights (ignored when ``checkpoint`` is given).
        drop_path_rate, proj_drop_rate: backbone stochastic depth and MLP dropout (official detector: 0.1 / 0.1).
        fpn_channels: FPN / RPN / RoI channels (official 256; changing it changes the parameter count).
        rpn: keyword overrides for :class:`~lsknet.models.rpn.OrientedRPNHead` (``train_proposals`` /
            ``test_proposals`` may be mappings of :class:`ProposalConfig` fields, ``anchor_*`` keys set anchors).
        roi: keyword overrides for :class:`~lsknet.models.roi_head.OrientedRoIHead` (``test_cfg`` may be a mapping
            of :class:`RoITestConfig` fields).
    """
    name = _VARIANTS.get(str(variant).lower().removesuffix("_orcnn"), str(variant))
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
        backbone, backbone_indices = inner, indices  # parameter names without a wrapper prefix (official layout)
    else:
        if len(reductions) != 4:
            features = timm.create_model(
                name, features_only=True, out_indices=tuple(indices), drop_path_rate=drop_path_rate, **kwargs
            )
        backbone, backbone_indices = features, None

    rpn_kw = dict(rpn or {})
    anchor_kw = {k.removeprefix("anchor_"): rpn_kw.pop(k) for k in list(rpn_kw) if k.startswith("anchor_")}
    for key in ("train_proposals", "test_proposals"):
        rpn_kw[key] = _dataclass_from(ProposalConfig, rpn_kw.get(key), f"rpn.{key}")
    roi_kw = dict(roi or {})
    roi_kw["test_cfg"] = _dataclass_from(RoITestConfig, roi_kw.get("test_cfg"), "roi.test_cfg")
    try:
        rpn_head = OrientedRPNHead(fpn_channels, fpn_channels, AnchorGenerator(**anchor_kw), **rpn_kw)
        roi_head = OrientedRoIHead(num_classes, fpn_channels, **roi_kw)
    except TypeError as err:
        raise ConfigError(f"bad detector option: {err}") from None
    model = OrientedRCNN(backbone, FPN(channels, fpn_channels, 5), rpn_head, roi_head, backbone_indices)
    if checkpoint is not None:
        load_detector_checkpoint(model, checkpoint)
    elif backbone_checkpoint is not None:
        from lsknet.models.checkpoint import load_backbone_weights

        load_backbone_weights(model.backbone, backbone_checkpoint)
    return model


MODEL_CONFIG_KEYS = (
    "name",
    "checkpoint",
    "backbone_checkpoint",
    "drop_path_rate",
    "proj_drop_rate",
    "fpn_channels",
    "rpn",
    "roi",
    "lsk_kernels",  # LSK block ablation variants (lsknet.models.backbone.LSKModule); null = official
    "lsk_selection",
    "lsk_pool",
)


def detector_from_config(model_cfg: Mapping[str, Any], num_classes: int, load_checkpoint: bool = True) -> OrientedRCNN:
    """Build the detector described by a run config's ``model`` section (keys :data:`MODEL_CONFIG_KEYS`).

    ``load_checkpoint=False`` skips ``checkpoint`` / ``backbone_checkpoint`` (when the weights come from a
    training checkpoint anyway).
    """
    cfg = dict(model_cfg or {})
    unknown = sorted(set(cfg) - set(MODEL_CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown model key(s) {unknown}; known: {', '.join(MODEL_CONFIG_KEYS)}")
    name = cfg.pop("name", "lsknet_t")
    from lsknet.models.backbone import lsk_kwargs

    lsk_kwargs(cfg, str(name).removesuffix("_orcnn"))  # LSK block options only for LSKNet backbones
    checkpoint = cfg.pop("checkpoint", None)
    backbone_checkpoint = cfg.pop("backbone_checkpoint", None)
    kwargs = {k: v for k, v in cfg.items() if v is not None}
    return build_oriented_rcnn(
        name,
        num_classes=num_classes,
        checkpoint=checkpoint if load_checkpoint else None,
        backbone_checkpoint=backbone_checkpoint if load_checkpoint else None,
        **kwargs,
    )


def _read_state_dict(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    from lsknet.models.checkpoint import load_checkpoint_file, unwrap_checkpoint

    if isinstance(source, (str, Path)):
        return unwrap_checkpoint(load_checkpoint_file(source), use_ema=False, source=str(source)), str(source)
    return unwrap_checkpoint(source, use_ema=False, source="state dict"), "state dict"


def load_detector_checkpoint(
    model: OrientedRCNN, checkpoint: str | Path | Mapping[str, Any], strict: bool = True
) -> dict[str, list[str]]:
    """Load an MMRotate 0.x LSKNet detector checkpoint (``{"meta", "state_dict"}``), a plain state dict, or a
    Lightning checkpoint of this project (``model.`` prefix) into ``model``.

    ``ema_*`` entries (MMDetection's EMA hook buffers) are ignored with a log note: that hook swaps the EMA weights into
    the model before each checkpoint is saved, so the plain keys of an official EMA checkpoint (LSKNet-S*) already
    hold the EMA weights and the ``ema_*`` buffers the raw training weights. ``module.`` prefixes are removed.
    A checkpoint for a different number of classes, a different backbone variant, missing or unexpected
    keys raise :class:`CheckpointError` naming them. Returns ``{"loaded": [...], "ignored": [...]}``.
    """
    state, source = _read_state_dict(checkpoint)
    cleaned: dict[str, torch.Tensor] = {}
    ignored = []
    for key, value in normalize_state_dict(state, prefix="").items():
        if key.startswith("ema_"):
            ignored.append(key)
            continue
        cleaned[key] = value
    if cleaned and all(k.startswith("model.") for k in cleaned):
        cleaned = {k.removeprefix("model."): v for k, v in cleaned.items()}
    if ignored:
        _log.info(
            "%s: loaded the plain keys, which hold the EMA weights (MMDetection's EMA hook swaps them in before "
            "saving); ignored %d ema_* buffer(s) holding the raw training weights",
            source,
            len(ignored),
        )
    target = model.state_dict()
    cls_key = "roi_head.bbox_head.fc_cls.weight"
    if cls_key in cleaned and cleaned[cls_key].shape != target[cls_key].shape:
        have = cleaned[cls_key].shape[0] - 1
        raise CheckpointError(
            f"{source}: checkpoint was trained for {have} classes but the model has {model.num_classes}; "
            f"build the model with num_classes={have}"
        )
    load_state_dict_checked(model, cleaned, source=source, what="the Oriented R-CNN model", strict=strict)
    return {"loaded": sorted(cleaned), "ignored": sorted(ignored)}
