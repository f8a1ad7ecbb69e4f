"""Semantic segmenter = timm ``features_only`` backbone + decode head (+ auxiliary head), and its loss.

    from lsknet.models.segmentation import build_segmenter
    model = build_segmenter("lsknet_t", "unetformer", num_classes=6)   # or lsknet.create_model("lsknet_t_unetformer")
    logits = model(images)            # (B, K, H, W) at the input size; images ImageNet-normalised NCHW floats

Any timm backbone works (``variant="resnet18"``, ``backbone_kwargs={"out_indices": (1, 2, 3, 4)}``); the heads read
the channels from ``feature_info``. Inputs of any size are padded to a multiple of ``size_divisor`` (32) and the
logits cropped back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsknet.errors import CheckpointError, ConfigError
from lsknet.models.unetformer import OLD_LAYOUT_PREFIXES, UNetFormerHead
from lsknet.models.upernet import FCNAuxHead, UPerNetHead

__all__ = ["Segmenter", "SegmentationLoss", "build_segmenter", "dice_loss", "soft_cross_entropy", "HEADS"]

_log = logging.getLogger(__name__)
HEADS = ("unetformer", "upernet")


class Segmenter(nn.Module):
    """``backbone`` (timm features_only) -> ``decode_head`` -> logits upsampled to the input size.

    ``forward(x)`` returns logits ``(B, K, H, W)``; ``forward_with_aux(x)`` returns ``(logits, aux_logits)`` where
    ``aux_logits`` (same size) is ``None`` when there is no auxiliary head.
    """

    def __init__(
        self, backbone: nn.Module, decode_head: nn.Module, aux_head: nn.Module | None = None, size_divisor: int = 32
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.size_divisor = size_divisor
        self.num_classes = [m for m in decode_head.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

    def _features(self, x: Tensor) -> tuple[list[Tensor], tuple[int, int]]:
        h, w = x.shape[-2:]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        return list(self.backbone(x)), (h, w)

    def _logits(self, logits: Tensor, size: tuple[int, int], padded: tuple[int, int]) -> Tensor:
        ph, pw = padded
        logits = F.interpolate(logits, size=(ph, pw), mode="bilinear", align_corners=False)
        return logits[..., : size[0], : size[1]]

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        feats, size = self._features(x)
        padded = (size[0] + (-size[0]) % self.size_divisor, size[1] + (-size[1]) % self.size_divisor)
        aux = None
        if isinstance(self.decode_head, UNetFormerHead):  # GeoSeg layout: the auxiliary head lives in the decoder
            logits, aux = self.decode_head(feats, return_aux=True)
        else:
            logits = self.decode_head(feats)
            if self.aux_head is not None:
                aux = self.aux_head(feats[-2])
        out = self._logits(logits, size, padded)
        return out, (self._logits(aux, size, padded) if aux is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        feats, size = self._features(x)
        padded = (size[0] + (-size[0]) % self.size_divisor, size[1] + (-size[1]) % self.size_divisor)
        return self._logits(self.decode_head(feats), size, padded)


def _backbone_name(variant: str) -> str:
    v = variant.lower()
    return {"t": "lsknet_t", "s": "lsknet_s", "lsknet-t": "lsknet_t", "lsknet-s": "lsknet_s"}.get(v, v)


def build_segmenter(
    variant: str = "lsknet_t",
    head: str = "unetformer",
    num_classes: int = 6,
    checkpoint: str | Path | None = None,
    *,
    backbone_checkpoint: str | Path | None = None,
    aux_head: bool = True,
    decode_channels: int | None = None,
    window_size: int = 8,
    num_heads: int = 8,
    pool_scales: tuple[int, ...] = (1, 2, 3, 6),
    aux_channels: int = 256,
    dropout: float = 0.1,
    drop_path_rate: float = 0.0,
    backbone_kwargs: dict[str, Any] | None = None,
) -> Segmenter:
    """Build a segmenter: ``variant`` is ``lsknet_t``/``lsknet_s`` (or ``t``/``s``) or any timm model name;
    ``head`` is ``unetformer`` (decode channels 64) or ``upernet`` (channels 512).

    ``checkpoint``: a full segmenter checkpoint (our Lightning ``.ckpt`` or a state dict with ``decode_head.`` keys),
    loaded strictly; a backbone-only checkpoint (official LSKNet ImageNet weights) given here or as
    ``backbone_checkpoint`` is loaded into the backbone only (strict for its keys).
    """
    head = head.lower()
    if head not in HEADS:
        raise ConfigError(f"unknown segmentation head {head!r}; expected one of {', '.join(HEADS)}")
    name = _backbone_name(variant)
    if name.startswith("lsknet"):
        import lsknet.models.backbone  # noqa: F401  (registers lsknet_t / lsknet_s in timm)
    kwargs = dict(backbone_kwargs or {})
    kwargs.setdefault("out_indices", (0, 1, 2, 3))
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        backbone = timm.create_model(name, features_only=True, pretrained=False, **kwargs)
    except RuntimeError as err:
        raise ConfigError(f"cannot build backbone {name!r} with features_only: {err}") from err
    channels = list(backbone.feature_info.channels())
    aux: nn.Module | None
    if head == "unetformer":
        decode = UNetFormerHead(
            channels, num_classes, decode_channels or 64, dropout, window_size, num_heads=num_heads, aux_head=aux_head
        )
        aux = None  # decode_head.aux_head, as in GeoSeg's Decoder
    else:
        decode = UPerNetHead(channels, num_classes, decode_channels or 512, pool_scales, dropout)
        aux = FCNAuxHead(channels[-2], num_classes, aux_channels, dropout) if aux_head else None
    model = Segmenter(backbone, decode, aux)
    if backbone_checkpoint is not None:
        load_backbone(model, backbone_checkpoint)
    if checkpoint is not None:
        load_segmenter_checkpoint(model, checkpoint)
    return model


def load_backbone(model: Segmenter, path: str | Path) -> None:
    """Load backbone weights (official LSKNet layouts via ``load_backbone_weights``; else a timm state dict)."""
    from lsknet.models.checkpoint import load_backbone_weights, read_checkpoint

    inner = getattr(model.backbone, "model", model.backbone)
    if hasattr(inner, "patch_embed1"):
        load_backbone_weights(model.backbone, path)
        return
    sd = read_checkpoint(path, prefix="")
    missing, _ = model.backbone.load_state_dict(sd, strict=False)
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} backbone key(s) missing, e.g. {', '.join(missing[:5])}")


def from_geoseg_layout(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """GeoSeg UNetFormer keys (``[net.]backbone.*`` + ``[net.]decoder.*``, the Lightning ``Supervision_Train``
    module holding the model as ``net``) -> this segmenter's (``backbone.*`` + ``decode_head.*``); other keys kept."""
    if any(k.startswith("net.decoder.") for k in state_dict):
        state_dict = {k[len("net.") :]: v for k, v in state_dict.items() if k.startswith("net.")}
    renamed = {}
    for k, v in state_dict.items():
        renamed["decode_head." + k[len("decoder.") :] if k.startswith("decoder.") else k] = v
    return renamed


def reject_old_unetformer_layout(state_dict: dict[str, Tensor], source: str, prefix: str = "") -> None:
    """CheckpointError for segmenter weights with the UNetFormer head lsknet had before it followed GeoSeg (keys
    ``decode_head.pre4.`` ...; ``prefix`` e.g. ``"model."`` for a Lightning module's state dict)."""
    old = tuple(prefix + p for p in OLD_LAYOUT_PREFIXES)
    if any(k.startswith(old) for k in state_dict):
        raise CheckpointError(
            f"{source}: written by an older lsknet whose UNetFormer head (pre4/block4/fuse3/refine) is not GeoSeg's "
            "Decoder (extra BatchNorms and biases, other border padding); it cannot be converted exactly: retrain, "
            "or load only its backbone with model.backbone_checkpoint"
        )


def load_segmenter_checkpoint(model: Segmenter, path: str | Path) -> None:
    """Load a whole-segmenter checkpoint (strict): lsknet's own, or GeoSeg's UNetFormer layout (``backbone.`` +
    ``decoder.`` keys, e.g. their timm ResNet-18 models: build with ``backbone_kwargs={"out_indices": (1, 2, 3,
    4)}``). A backbone-only checkpoint goes into the backbone."""
    from lsknet.models.checkpoint import load_state_dict_checked, read_checkpoint

    sd = read_checkpoint(path, prefix="")
    if any(k.startswith("model.decode_head.") for k in sd):  # Lightning module with the segmenter as .model
        sd = {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
    sd = from_geoseg_layout(sd)
    if not any(k.startswith("decode_head.") for k in sd):
        load_backbone(model, path)
        return
    if isinstance(model.decode_head, UNetFormerHead):
        reject_old_unetformer_layout(sd, str(path))
    if model.aux_head is None:  # a trained checkpoint carries its auxiliary head; inference models may drop it
        sd = {k: v for k, v in sd.items() if not k.startswith("aux_head.")}
    if getattr(model.decode_head, "aux_head", True) is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("decode_head.aux_head.")}
    load_state_dict_checked(
        model, sd, source=str(path), what="this segmenter", hint="(check variant, head, num_classes, out_indices)"
    )


def dice_loss(
    logits: Tensor, target: Tensor, ignore_index: int = 255, smooth: float = 0.05, average: str = "all"
) -> Tensor:
    """Soft multi-class Dice loss over the batch: per class ``1 - (2|P∩T| + s) / (|P| + |T| + s)`` with the batch and
    all pixels summed (ignored pixels count for neither prediction nor target); classes absent from the target count
    0. ``average="all"``: mean over all ``K`` classes (GeoSeg's ``DiceLoss``); ``"present"``: mean over the classes
    present in the target."""
    k = logits.shape[1]
    valid = target != ignore_index
    prob = logits.float().softmax(1) * valid.unsqueeze(1)
    onehot = F.one_hot(target.clamp(0, k - 1) * valid, k).permute(0, 3, 1, 2).to(prob.dtype) * valid.unsqueeze(1)
    inter = (prob * onehot).sum((0, 2, 3))
    card = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * inter + smooth) / (card + smooth).clamp_min(1e-7)
    present = onehot.sum((0, 2, 3)) > 0
    if average == "all":
        return ((1 - dice) * present).mean()
    if average != "present":
        raise ConfigError(f"dice average must be all or present, got {average!r}")
    if not present.any():
        return logits.sum() * 0.0
    return (1 - dice)[present].mean()


def soft_cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int = 255, smoothing: float = 0.05, average: str = "all"
) -> Tensor:
    """Label-smoothed cross-entropy ``(1 - e) * nll + e / K * sum_k(-log p_k)`` per pixel, ignored pixels 0.
    ``average="all"``: mean over all pixels, ignored ones included (GeoSeg's ``SoftCrossEntropyLoss``);
    ``"valid"``: mean over the non-ignored pixels (torch's ``cross_entropy``)."""
    valid = target != ignore_index
    if average == "valid":
        if not valid.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), target, ignore_index=ignore_index, label_smoothing=smoothing)
    if average != "all":
        raise ConfigError(f"cross-entropy average must be all or valid, got {average!r}")
    logp = logits.float().log_softmax(1)
    nll = -logp.gather(1, target.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
    per_pixel = (1 - smoothing) * nll - smoothing / logits.shape[1] * logp.sum(1)
    return (per_pixel * valid).mean()


class SegmentationLoss(nn.Module):
    """``CE(label smoothing) + dice_weight * Dice`` on the main logits ``+ aux_weight * CE`` on the auxiliary logits.

    Defaults follow GeoSeg's ``UnetFormerLoss``: label smoothing 0.05, Dice (smooth 0.05) weight 1, auxiliary weight
    0.4, ``averaging="geoseg"``: CE averaged over all pixels (ignored ones count as 0) and Dice over all classes.
    ``averaging="valid"`` (opt-in): CE over non-ignored pixels, Dice over the classes present. ``ignore_index``
    pixels contribute to no term. Returns a dict with ``loss`` (the total) and its parts.
    """

    def __init__(
        self, ignore_index: int = 255, label_smoothing: float = 0.05, dice_weight: float = 1.0, aux_weight: float = 0.4,
        averaging: str = "geoseg",
    ) -> None:  # fmt: skip
        super().__init__()
        if averaging not in ("geoseg", "valid"):
            raise ConfigError(f"loss.averaging must be geoseg or valid, got {averaging!r}")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.dice_weight = dice_weight
        self.aux_weight = aux_weight
        self.ce_average, self.dice_average = ("all", "all") if averaging == "geoseg" else ("valid", "present")

    def ce(self, logits: Tensor, target: Tensor) -> Tensor:
        return soft_cross_entropy(logits, target, self.ignore_index, self.label_smoothing, self.ce_average)

    def forward(self, logits: Tensor, target: Tensor, aux_logits: Tensor | None = None) -> dict[str, Tensor]:
        parts = {"loss_ce": self.ce(logits, target)}
        if self.dice_weight:
            dice = dice_loss(logits, target, self.ignore_index, 0.05, self.dice_average)
            parts["loss_dice"] = self.dice_weight * dice
        if aux_logits is not None and self.aux_weight:
            parts["loss_aux"] = self.aux_weight * self.ce(aux_logits, target)
        parts["loss"] = torch.stack(list(parts.values())).sum()
        return parts
