"""LSK block ablation variants: parameter counts against a hand formula, official layout untouched, weights loading."""

from __future__ import annotations

import logging

import pytest
import timm
import torch

import lsknet
from lsknet.errors import CheckpointError, ConfigError

BACKBONE_PARAMS = {"lsknet_t": 3_990_190, "lsknet_s": 13_840_892}  # official, num_classes=0
ARCH = {"lsknet_t": ((32, 64, 160, 256), (3, 3, 5, 2)), "lsknet_s": ((64, 128, 320, 512), (2, 2, 4, 2))}


def lsk_params(c: int, kernels, selection: str = "spatial", pools: int = 2) -> int:
    """Parameters of one LSK module written out by hand from the issue's definition."""
    n, half = len(kernels), c // 2
    total = sum(c * k * k + c for k, _ in kernels)  # depth-wise convs with bias
    total += n * (c * half + half)  # 1x1 C -> C/2 per branch
    if selection == "spatial":
        total += pools * n * 7 * 7 + n  # one 7x7 conv pools -> n
    elif selection == "channel":
        hidden = max(half // 16, 32)
        total += half * hidden + hidden + hidden * n * half + n * half
    return total + half * c + c  # 1x1 C/2 -> C


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


VARIANTS = [
    dict(lsk_kernels=[(23, 1)]),
    dict(lsk_kernels=[(3, 1), (5, 2), (7, 3)]),
    dict(lsk_selection="none"),
    dict(lsk_selection="channel"),
    dict(lsk_pool=("avg",)),
    dict(lsk_pool=["max"], lsk_kernels=[[3, 1], [5, 2], [7, 3]]),
]


@pytest.mark.parametrize("name", ["lsknet_t", "lsknet_s"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={v[k]}" for k in v))
def test_variant_parameter_count_matches_hand_formula(name, variant):
    dims, depths = ARCH[name]
    kernels = variant.get("lsk_kernels", [(5, 1), (7, 3)])
    selection = variant.get("lsk_selection", "spatial")
    pools = len(variant.get("lsk_pool", ("avg", "max")))
    delta = sum(
        d * (lsk_params(c, kernels, selection, pools) - lsk_params(c, [(5, 1), (7, 3)])) for c, d in zip(dims, depths)
    )
    model = timm.create_model(name, num_classes=0, **variant)
    assert count(model) == BACKBONE_PARAMS[name] + delta
    assert model.lsk_is_official is False
    out = model.forward_features(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, dims[-1], 2, 2)


@pytest.mark.parametrize("name", ["lsknet_t", "lsknet_s"])
def test_default_is_official(name):
    dims, depths = ARCH[name]
    model = timm.create_model(name, num_classes=0)
    explicit = timm.create_model(
        name, num_classes=0, lsk_kernels=[[5, 1], [7, 3]], lsk_selection="spatial", lsk_pool=["avg", "max"]
    )
    assert count(model) == count(explicit) == BACKBONE_PARAMS[name]
    assert model.lsk_is_official and explicit.lsk_is_official
    keys = sorted(k.split("spatial_gating_unit.")[1] for k in model.state_dict() if k.startswith("block1.0.attn.s"))
    want = ["conv", "conv0", "conv1", "conv2", "conv_spatial", "conv_squeeze"]
    assert keys == sorted(f"{m}.{p}" for m in want for p in ("weight", "bias"))
    sgu = model.block1[0].attn.spatial_gating_unit
    assert sgu.conv_spatial.dilation == (3, 3) and sgu.conv_spatial.padding == (9, 9)
    assert tuple(sgu.conv_squeeze.weight.shape) == (2, 2, 7, 7)


def test_variants_reach_every_task_builder():
    kw = dict(lsk_kernels=[[3, 1], [5, 2], [7, 3]], lsk_selection="spatial")
    det = lsknet.create_model("lsknet_t_orcnn", num_classes=3, **kw)
    assert det.backbone.block1[0].attn.spatial_gating_unit.conv_spatial2.dilation == (3, 3)
    from lsknet.models.detectors import detector_from_config
    from lsknet.tasks.classification import build_classifier

    det = detector_from_config({"name": "lsknet_t", "lsk_selection": "none", "lsk_pool": None}, 3)
    assert not hasattr(det.backbone.block1[0].attn.spatial_gating_unit, "conv_squeeze")
    clf = build_classifier({"name": "lsknet_t", "lsk_selection": "channel", "lsk_kernels": None}, 5)
    assert clf.lsk_config["selection"] == "channel"
    from lsknet.config import load_config
    from lsknet.tasks.segmentation import SegmentationTask

    cfg = load_config("segment")
    cfg["model"]["lsk_pool"] = ["max"]
    cfg["data"]["num_classes"] = 3
    seg = SegmentationTask(cfg)
    assert seg.model.backbone.model.lsk_config["pool"] == ("max",)


@pytest.mark.parametrize("bad", [dict(lsk_kernels=[(4, 1)]), dict(lsk_selection="soft"), dict(lsk_pool=["min"])])
def test_bad_variant_options_raise(bad):
    with pytest.raises(ConfigError):
        timm.create_model("lsknet_t", **bad)


def test_variant_loads_official_weights_where_shapes_allow(tmp_path, caplog):
    torch.manual_seed(0)
    official = timm.create_model("lsknet_t", num_classes=0)
    path = tmp_path / "official.pth"
    torch.save({"state_dict": official.state_dict()}, path)
    kw = dict(lsk_kernels=[(3, 1), (5, 2), (7, 3)])
    torch.manual_seed(1)
    fresh = timm.create_model("lsknet_t", num_classes=0, **kw)
    torch.manual_seed(1)
    with caplog.at_level(logging.WARNING):
        model = lsknet.create_model("lsknet_t", checkpoint=path, num_classes=0, **kw)
    assert "LSK ablation variant" in caplog.text
    src, got, init = official.state_dict(), model.state_dict(), fresh.state_dict()
    for key, value in got.items():
        if key in src and src[key].shape == value.shape:
            assert torch.equal(value, src[key]), key  # everything that fits is loaded (incl. conv1/conv2/conv)
        else:
            assert "spatial_gating_unit" in key and torch.equal(value, init[key]), key  # the rest keeps init
    sgu = "block1.0.attn.spatial_gating_unit."
    assert torch.equal(got[sgu + "conv1.weight"], src[sgu + "conv1.weight"])
    assert not torch.equal(got[sgu + "conv0.weight"][:, :, :3, :3], src[sgu + "conv0.weight"][:, :, :3, :3])
    # the same file through timm's pretrained path
    overlay = dict(file=str(path))
    via_timm = timm.create_model("lsknet_t", num_classes=0, pretrained=True, pretrained_cfg_overlay=overlay, **kw)
    assert torch.equal(via_timm.state_dict()[sgu + "conv2.weight"], src[sgu + "conv2.weight"])
    # the official model stays strict: a file without an LSK key still fails
    broken = {k: v for k, v in official.state_dict().items() if not k.endswith("conv_squeeze.bias")}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="conv_squeeze"):
        lsknet.create_model("lsknet_t", checkpoint=tmp_path / "broken.pth", num_classes=0)


def test_optimize_for_inference_falls_back_to_eager_for_variants(caplog):
    model = timm.create_model("lsknet_t", num_classes=0, lsk_selection="none").eval()
    x = torch.randn(1, 3, 64, 64)
    with caplog.at_level(logging.WARNING):
        fast = lsknet.optimize_for_inference(model)
    assert "no fused kernels" in caplog.text
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))


def test_lsk_options_for_another_backbone_are_a_config_error():
    from lsknet.models.detectors import detector_from_config
    from lsknet.tasks.classification import build_classifier

    with pytest.raises(ConfigError, match="lsknet_t / lsknet_s"):
        build_classifier({"name": "resnet18", "lsk_selection": "none"}, 3)
    with pytest.raises(ConfigError, match="lsknet_t / lsknet_s"):
        detector_from_config({"name": "resnet18", "lsk_kernels": [[3, 1]]}, 3)
