"""LSKNet backbone (Li et al., "LSKNet: A Foundation Lightweight Backbone for Remote Sensing", IJCV 2024).

Written from the paper's equations. Module names follow the official checkpoints so their state dicts load without
renaming: ``patch_embed{1-4}``, ``block{1-4}.{j}`` (``norm1``/``norm2`` BatchNorm, ``attn.proj_1``,
``attn.spatial_gating_unit.{conv0,conv_spatial,conv1,conv2,conv_squeeze,conv}``, ``attn.proj_2``, ``mlp.fc1``,
``mlp.dwconv.dwconv``, ``mlp.fc2``, ``layer_scale_1/2``), ``norm{1-4}`` (LayerNorm over channels, eps 1e-6), ``head``.

Registered in timm as ``lsknet_t`` and ``lsknet_s`` (``import lsknet`` registers them)::

    timm.create_model("lsknet_t", num_classes=45, drop_path_rate=0.1)
    timm.create_model("lsknet_s", features_only=True)          # 4 NCHW maps, strides 4/8/16/32
    timm.create_model("lsknet_t", pretrained=True, pretrained_cfg_overlay=dict(file="lsk_t_backbone-2ef8a593.pth"))

Inputs are NCHW float images normalised with the ImageNet mean/std; any H, W (multiples of 32 keep all maps exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lsknet.errors import CheckpointError, ConfigError
from lsknet.models.checkpoint import match_state_dict, normalize_state_dict, read_checkpoint, unwrap_checkpoint
from lsknet.models.lsk_block import LSK_POOLS, OFFICIAL_LSK_KERNELS, LSKModule, lsk_options

__all__ = [
    "LSKNET_ARCHS",
    "LSKModule",
    "LSKNet",
    "checkpoint_filter_fn",
    "lsk_kwargs",
    "lsk_options",
    "lsknet_s",
    "lsknet_t",
]

# Official hyper-parameters per variant (embed dims, depths); mlp ratios [8, 8, 4, 4] for both.
LSKNET_ARCHS: dict[str, dict] = {
    "lsknet_t": dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2)),
    "lsknet_s": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2)),
}


class OverlapPatchEmbed(nn.Module):
    """Strided conv (k x k, padding k//2) + BatchNorm: (B, Cin, H, W) -> (B, C, H/stride, W/stride)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


LSK_CONFIG_KEYS = ("lsk_kernels", "lsk_selection", "lsk_pool")


def lsk_kwargs(model_cfg: Any, name: str | None = None) -> dict[str, Any]:
    """The ``lsk_*`` entries of a run config's ``model`` section that are set (not null), as model kwargs.
    With ``name`` (the backbone), setting them for a non-LSKNet backbone raises :class:`ConfigError`."""
    cfg = model_cfg or {}
    out = {k: cfg[k] for k in LSK_CONFIG_KEYS if cfg.get(k) is not None}
    if out and name is not None and str(name) not in LSKNET_ARCHS and str(name).lower() not in ("t", "s"):
        raise ConfigError(f"model.{', model.'.join(out)}: LSK block options apply to lsknet_t / lsknet_s, not {name!r}")
    return out


class Attention(nn.Module):
    """1x1 conv -> GELU -> LSK module -> 1x1 conv, plus the (normalised) input as residual."""

    def __init__(self, dim: int, **lsk: Any) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LSKModule(dim, **lsk)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))
        return out + x


class DWConv(nn.Module):
    """Depthwise 3x3 conv (kept as a wrapper so the official key ``mlp.dwconv.dwconv`` loads)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.dwconv(x)


class Mlp(nn.Module):
    """1x1 conv -> depthwise 3x3 -> GELU -> dropout -> 1x1 conv -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class Block(nn.Module):
    """``x + drop_path(ls1 * Attention(BN(x)))`` then ``x + drop_path(ls2 * Mlp(BN(x)))``; layer scales start at
    1e-2 per channel."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        drop: float = 0.0,
        drop_path: float = 0.0,
        ls_init: float = 1e-2,
        lsk: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = Attention(dim, **(lsk or {}))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.layer_scale_1 = nn.Parameter(ls_init * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(ls_init * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (keys ``weight``/``bias`` like ``nn.LayerNorm``)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LSKNet(nn.Module):
    """LSKNet backbone + optional linear classifier on the globally averaged last stage.

    Args:
        embed_dims: channels of the 4 stages.
        depths: blocks per stage.
        mlp_ratios: MLP hidden width / channels per stage (official [8, 8, 4, 4]).
        in_chans: input channels (pretrained RGB first-conv weights are adapted when loading, see checkpoint.py).
        num_classes: classifier outputs; 0 = no head (``forward`` returns pooled features).
        global_pool: ``"avg"`` or ``""`` (no pooling in ``forward_head``).
        drop_rate: dropout before the classifier (timm meaning).
        proj_drop_rate: dropout inside the MLPs (the official code's ``drop_rate``; 0 for the official models).
        drop_path_rate: stochastic depth, increasing linearly over all blocks up to this value.
        ls_init_value: initial value of the per-channel layer scales.
        lsk_kernels, lsk_selection, lsk_pool: ablation variants of the LSK block (see :class:`LSKModule`); ``None``
            = official ``((5, 1), (7, 3))``, ``"spatial"``, ``("avg", "max")``. ``lsk_is_official`` tells which.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (2, 2, 4, 2),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        ls_init_value: float = 1e-2,
        lsk_kernels: Sequence[Sequence[int]] | None = None,
        lsk_selection: str | None = None,
        lsk_pool: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        kernels, selection, pool = lsk_options(lsk_kernels, lsk_selection, lsk_pool)
        self.lsk_config = dict(kernels=kernels, selection=selection, pool=pool)
        self.lsk_is_official = (kernels, selection, pool) == (OFFICIAL_LSK_KERNELS, "spatial", LSK_POOLS)
        assert global_pool in ("avg", ""), "global_pool must be 'avg' or ''"
        self.num_stages = len(depths)
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.grad_checkpointing = False
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.feature_info: list[dict] = []
        cursor = 0
        for i in range(self.num_stages):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            prev = in_chans if i == 0 else embed_dims[i - 1]
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(prev, embed_dims[i], patch, stride))
            blocks = [
                Block(embed_dims[i], mlp_ratios[i], proj_drop_rate, rates[cursor + j], ls_init_value, self.lsk_config)
                for j in range(depths[i])
            ]
            setattr(self, f"block{i + 1}", nn.ModuleList(blocks))
            setattr(self, f"norm{i + 1}", LayerNorm2d(embed_dims[i], eps=1e-6))
            cursor += depths[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"norm{i + 1}"))
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- timm model interface -------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed1", blocks=r"^(?:patch_embed|block|norm)(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``num_classes``-way linear layer (0 = none)."""
        self.num_classes = num_classes
        if global_pool is not None:
            assert global_pool in ("avg", ""), "global_pool must be 'avg' or ''"
            self.global_pool = global_pool
        last_norm = getattr(self, f"norm{self.num_stages}")
        dd = dict(device=last_norm.weight.device, dtype=last_norm.weight.dtype)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)
        self.head.train(self.training)

    def _stage(self, i: int, x: Tensor) -> Tensor:
        x = getattr(self, f"patch_embed{i + 1}")(x)
        for blk in getattr(self, f"block{i + 1}"):
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return getattr(self, f"norm{i + 1}")(x)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (after each stage's LayerNorm; ``norm`` has no further effect), NCHW.

        ``indices``: last n stages if int, all if None, else the listed stage indices (0..3, negatives allowed).
        Returns the list, or ``(final_features, list)`` unless ``intermediates_only``.
        """
        assert output_fmt == "NCHW", "only NCHW output is supported"
        take, max_index = feature_take_indices(self.num_stages, indices)
        last = max_index if (stop_early or intermediates_only) else self.num_stages - 1
        feats = []
        for i in range(last + 1):
            x = self._stage(i, x)
            if i in take:
                feats.append(x)
        if intermediates_only:
            return feats
        return x, feats

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last wanted index (and the head); returns the absolute indices."""
        take, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            for name in (f"patch_embed{i + 1}", f"block{i + 1}", f"norm{i + 1}"):
                delattr(self, name)
        if max_index + 1 < self.num_stages:
            self.num_stages = max_index + 1
            self.num_features = self.head_hidden_size = self.embed_dims[max_index]
            self.feature_info = self.feature_info[: max_index + 1]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> last stage map (B, C4, H/32, W/32)."""
        for i in range(self.num_stages):
            x = self._stage(i, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool (if ``global_pool='avg'``) -> dropout -> linear head."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes), or pooled features (B, C4) when ``num_classes=0``."""
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: LSKNet) -> dict[str, Tensor]:
    """timm filter: official layouts (plain, ``state_dict``/``state_dict_ema``/``model`` nesting, ``module.`` and
    ``backbone.`` prefixes) -> this model's keys, strict for the backbone (raises ``CheckpointError``).

    A head whose shape does not fit is replaced by the model's own initial head (timm drops it anyway when
    ``num_classes`` differs). The first conv is left for timm to adapt when ``in_chans != 3``.
    """
    sd = normalize_state_dict(unwrap_checkpoint(state_dict, source="pretrained file"))
    out, _ = match_state_dict(model, sd, source="pretrained file", adapt_first_conv=False)
    return out


def _pretrained_weights(variant: str, kwargs: dict) -> None:
    """``pretrained=True``: lsknet downloads nothing, so the weights must come as ``pretrained_cfg_overlay=dict(file=
    PATH)`` (or ``state_dict=...``). A file is read here with lsknet's safe reader (hash prefix checked, MMCV/timm
    metadata allowed) and handed to timm as a state dict; without one, a :class:`CheckpointError` says how to pass it.
    """
    from lsknet.models.official import official_weights_for

    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    cfg = kwargs.get("pretrained_cfg")
    file = overlay.get("file") or (cfg.get("file") if isinstance(cfg, dict) else None)
    if overlay.get("state_dict") is None and not file:
        where = "; ".join(f"{w.file} from {w.url}" for w in official_weights_for(variant)[:1])
        raise CheckpointError(
            f"{variant}: pretrained=True needs the official weights file, which lsknet does not download: "
            f'pass timm.create_model("{variant}", pretrained=True, pretrained_cfg_overlay=dict(file=PATH)) or '
            f'lsknet.create_model("{variant}", checkpoint=PATH) (download: {where})'
        )
    if file:
        overlay.pop("file", None)
        overlay["state_dict"] = read_checkpoint(file)
        kwargs["pretrained_cfg_overlay"] = overlay
        if isinstance(cfg, dict):
            kwargs["pretrained_cfg"] = {k: v for k, v in cfg.items() if k != "file"}


def _create_lsknet(variant: str, pretrained: bool = False, **kwargs) -> LSKNet:
    if pretrained:
        _pretrained_weights(variant, kwargs)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    args = dict(LSKNET_ARCHS[variant], **kwargs)
    return build_model_with_cfg(
        LSKNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **args,
    )


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed1.proj",
        "classifier": "head",
        "fixed_input_size": False,
        "license": "cc-by-nc-4.0",  # of the official weights; this code is the project's own
        "paper_ids": "arXiv:2403.11735",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        # Official ImageNet-1k weights: pass them with pretrained_cfg_overlay=dict(file=PATH) (no download here).
        "lsknet_t.in1k": _cfg(),
        "lsknet_s.in1k": _cfg(),
    }
)


@register_model
def lsknet_t(pretrained: bool = False, **kwargs) -> LSKNet:
    """LSKNet-T: dims (32, 64, 160, 256), depths (3, 3, 5, 2); 4.25M params with the 1000-class head."""
    return _create_lsknet("lsknet_t", pretrained=pretrained, **kwargs)


@register_model
def lsknet_s(pretrained: bool = False, **kwargs) -> LSKNet:
    """LSKNet-S: dims (64, 128, 320, 512), depths (2, 2, 4, 2); 14.35M params with the 1000-class head."""
    return _create_lsknet("lsknet_s", pretrained=pretrained, **kwargs)
