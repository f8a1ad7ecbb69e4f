"""LSKNet architecture: official parameter counts and key layout, timm integration, training features."""

from __future__ import annotations

import re

import pytest
import timm
import torch

import lsknet  # noqa: F401  (registers the timm models)
from lsknet.models.backbone import LSKNet

# Official numbers (paper Table / official checkpoints): parameters without and with the 1000-class head.
PARAMS = {"lsknet_t": (3_990_190, 4_247_190), "lsknet_s": (13_840_892, 14_353_892)}
BACKBONE_KEYS = {"lsknet_t": 478, "lsknet_s": 376}
DIMS = {"lsknet_t": [32, 64, 160, 256], "lsknet_s": [64, 128, 320, 512]}

OFFICIAL_KEY = re.compile(
    r"^(patch_embed[1-4]\.(proj\.(weight|bias)|norm\.(weight|bias|running_mean|running_var|num_batches_tracked))"
    r"|block[1-4]\.\d+\.(layer_scale_[12]"
    r"|norm[12]\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|attn\.(proj_1|proj_2|spatial_gating_unit\.(conv0|conv_spatial|conv1|conv2|conv_squeeze|conv))\.(weight|bias)"
    r"|mlp\.(fc1|dwconv\.dwconv|fc2)\.(weight|bias))"
    r"|norm[1-4]\.(weight|bias)|head\.(weight|bias))$"
)


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["lsknet_t", "lsknet_s"])
def test_exact_parameter_counts(name):
    without, with_head = PARAMS[name]
    assert _count(timm.create_model(name, num_classes=0)) == without
    assert _count(timm.create_model(name)) == with_head


@pytest.mark.parametrize("name", ["lsknet_t", "lsknet_s"])
def test_official_key_layout(name):
    keys = list(timm.create_model(name).state_dict())
    assert [k for k in keys if not OFFICIAL_KEY.match(k)] == []
    assert len([k for k in keys if not k.startswith("head.")]) == BACKBONE_KEYS[name]


def test_module_hyper_parameters_follow_the_paper():
    m = timm.create_model("lsknet_t")
    sgu = m.block2[0].attn.spatial_gating_unit
    assert (sgu.conv0.kernel_size, sgu.conv0.padding, sgu.conv0.groups) == ((5, 5), (2, 2), 64)
    assert (sgu.conv_spatial.kernel_size, sgu.conv_spatial.dilation, sgu.conv_spatial.padding) == (
        (7, 7),
        (3, 3),
        (9, 9),
    )
    assert sgu.conv1.out_channels == sgu.conv2.out_channels == 32 and sgu.conv.out_channels == 64
    assert (sgu.conv_squeeze.in_channels, sgu.conv_squeeze.out_channels, sgu.conv_squeeze.kernel_size) == (2, 2, (7, 7))
    assert [m.block1[0].mlp.fc1.out_channels, m.block3[0].mlp.fc1.out_channels] == [32 * 8, 160 * 4]
    assert (m.patch_embed1.proj.kernel_size, m.patch_embed1.proj.stride) == ((7, 7), (4, 4))
    assert (m.patch_embed2.proj.kernel_size, m.patch_embed2.proj.stride) == ((3, 3), (2, 2))
    assert isinstance(m.block1[0].norm1, torch.nn.BatchNorm2d) and m.norm1.eps == 1e-6
    assert torch.all(m.block4[1].layer_scale_1 == 1e-2) and torch.all(m.block4[1].layer_scale_2 == 1e-2)
    assert m.pretrained_cfg["mean"] == (0.485, 0.456, 0.406) and m.pretrained_cfg["first_conv"] == "patch_embed1.proj"


@pytest.mark.parametrize("name", ["lsknet_t", "lsknet_s"])
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.channels() == DIMS[name]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // r, 96 // r) for c, r in zip(DIMS[name], [4, 8, 16, 32])]
    sub = timm.create_model(name, features_only=True, out_indices=(0, 2))
    assert sub.feature_info.channels() == [DIMS[name][0], DIMS[name][2]]
    assert not hasattr(sub.model, "block4")  # pruned after the last wanted stage


def test_forward_intermediates_agree_with_forward():
    torch.manual_seed(0)
    model = timm.create_model("lsknet_t", num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == 4 and torch.equal(final, inter[-1])
        assert torch.allclose(model.forward_head(final), model(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [f.shape[1] for f in last_two] == [160, 256] and torch.equal(last_two[1], inter[3])
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, 256) and torch.allclose(pooled, inter[3].mean((2, 3)))


def test_reset_classifier_and_num_classes():
    model = timm.create_model("lsknet_s", num_classes=45, drop_rate=0.2).eval()
    assert model.head.out_features == 45 and model.head_drop.p == 0.2
    model.reset_classifier(10)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 512)
    assert model.get_classifier() is model.head


def test_in_chans_multispectral():
    model = timm.create_model("lsknet_t", in_chans=4, num_classes=3)
    assert model.patch_embed1.proj.weight.shape == (32, 4, 7, 7)
    assert model(torch.randn(2, 4, 32, 32)).shape == (2, 3)


def test_drop_path_is_stochastic_in_training_only():
    model = timm.create_model("lsknet_t", num_classes=0, drop_path_rate=0.5)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for i in range(1, 5) for b in getattr(model, f"block{i}")]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(x), model(x))


def test_grad_checkpointing_gives_same_values_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model("lsknet_t", num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    out = model(x).square().sum()
    out.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out2 = model(x).square().sum()
    out2.backward()
    assert torch.allclose(out, out2)
    assert all(torch.allclose(g, p.grad, atol=1e-6) for g, p in zip(grads, model.parameters()))


def test_is_a_plain_lsknet_module():
    model = timm.create_model("lsknet_t")
    assert isinstance(model, LSKNet) and model.num_features == 256
    assert "lsknet_t" in timm.list_models("lsknet*") and "lsknet_s" in timm.list_models("lsknet*")
