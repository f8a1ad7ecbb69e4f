"""Checkpoint layouts, strict loading, and an independent functional oracle of the LSKNet forward pass."""

from __future__ import annotations

import logging
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import lsknet
from lsknet.errors import CheckpointError
from lsknet.models.checkpoint import load_backbone_weights, read_checkpoint

DIMS = {"lsknet_t": (32, 64, 160, 256), "lsknet_s": (64, 128, 320, 512)}
DEPTHS = {"lsknet_t": (3, 3, 5, 2), "lsknet_s": (2, 2, 4, 2)}


# ---- the oracle: LSKNet written as plain functions of the raw state dict, straight from the paper ----------------
def _bn(sd, p, x):
    mean, var = sd[p + "running_mean"], sd[p + "running_var"]
    w, b = sd[p + "weight"], sd[p + "bias"]
    return (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5) * w[:, None, None] + b[:, None, None]


def _conv(sd, p, x, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(x, sd[p + "weight"], sd[p + "bias"], stride, padding, dilation, groups)


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def reference_lsknet(sd: dict, x: torch.Tensor, depths, with_head: bool = True):
    """Returns (list of 4 stage maps, logits or None). Eval-mode semantics (BN running statistics)."""
    feats = []
    for i in range(4):
        k, s = (7, 4) if i == 0 else (3, 2)
        x = _conv(sd, f"patch_embed{i + 1}.proj.", x, stride=s, padding=k // 2)
        x = _bn(sd, f"patch_embed{i + 1}.norm.", x)
        c = x.shape[1]
        for j in range(depths[i]):
            p = f"block{i + 1}.{j}."
            # token mixer: x + ls1 * (proj_2(LSK(GELU(proj_1(BN(x))))) + BN(x))
            y = _bn(sd, p + "norm1.", x)
            u = _gelu(_conv(sd, p + "attn.proj_1.", y))
            g = p + "attn.spatial_gating_unit."
            a1 = _conv(sd, g + "conv0.", u, padding=2, groups=c)  # dw 5x5
            a2 = _conv(sd, g + "conv_spatial.", a1, padding=9, dilation=3, groups=c)  # dw 7x7 dilation 3
            b1, b2 = _conv(sd, g + "conv1.", a1), _conv(sd, g + "conv2.", a2)  # each to C/2
            cat = torch.cat([b1, b2], 1)
            desc = torch.cat([cat.mean(1, keepdim=True), cat.max(1, keepdim=True).values], 1)
            w = torch.sigmoid(_conv(sd, g + "conv_squeeze.", desc, padding=3))
            attn = _conv(sd, g + "conv.", b1 * w[:, :1] + b2 * w[:, 1:2])
            u = _conv(sd, p + "attn.proj_2.", u * attn) + y
            x = x + sd[p + "layer_scale_1"][:, None, None] * u
            # channel mixer: x + ls2 * fc2(GELU(dw3x3(fc1(BN(x)))))
            z = _conv(sd, p + "mlp.fc1.", _bn(sd, p + "norm2.", x))
            z = _gelu(_conv(sd, p + "mlp.dwconv.dwconv.", z, padding=1, groups=z.shape[1]))
            x = x + sd[p + "layer_scale_2"][:, None, None] * _conv(sd, p + "mlp.fc2.", z)
        mu = x.mean(1, keepdim=True)
        var = ((x - mu) ** 2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + 1e-6) * sd[f"norm{i + 1}.weight"][:, None, None]
        x = x + sd[f"norm{i + 1}.bias"][:, None, None]
        feats.append(x)
    logits = x.mean((2, 3)) @ sd["head.weight"].T + sd["head.bias"] if with_head else None
    return feats, logits


def random_official_state_dict(name: str, seed: int, num_classes: int = 1000) -> dict:
    """A state dict with the official keys, every tensor random (BN statistics too, variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    sd = timm.create_model(name, num_classes=num_classes).state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=gen) + 0.5
        elif "layer_scale" in k:
            out[k] = torch.randn(v.shape, generator=gen) * 0.5
        elif "norm" in k:  # BatchNorm / LayerNorm affine and running mean
            out[k] = torch.randn(v.shape, generator=gen) * 0.3 + (1.0 if k.endswith("weight") else 0.0)
        else:
            fan_in = v[0].numel() if v.ndim > 1 else 1
            out[k] = torch.randn(v.shape, generator=gen) / math.sqrt(fan_in)
    return out


@pytest.fixture(scope="module")
def t_weights():
    return random_official_state_dict("lsknet_t", seed=0)


@pytest.fixture(scope="module")
def t_ema_weights():
    return random_official_state_dict("lsknet_t", seed=1)


def _x(seed=0, size=64, chans=3):
    return torch.randn(2, chans, size, size, generator=torch.Generator().manual_seed(seed))


def _close(a, b, tol=1e-4):
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


# ---- oracle agreement --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lsknet_t", "lsknet_s"])
def test_loaded_model_matches_functional_reference(tmp_path, name):
    sd = random_official_state_dict(name, seed=3)
    path = tmp_path / "official.pth"
    torch.save({"state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "epoch": 300}, path)
    model = lsknet.create_model(name, checkpoint=path).eval()
    x = _x(size=64 if name == "lsknet_t" else 32)
    ref_feats, ref_logits = reference_lsknet(sd, x, DEPTHS[name])
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert _close(logits, ref_logits)
    for f, r, c in zip(feats, ref_feats, DIMS[name]):
        assert f.shape[1] == c and _close(f, r)


def test_reference_detects_a_wrong_architecture(t_weights):
    """Guard that the oracle is sensitive: dropping the attention residual changes the output."""
    x = _x()
    ref, _ = reference_lsknet(t_weights, x, DEPTHS["lsknet_t"], with_head=False)
    model = lsknet.create_model("lsknet_t", num_classes=0).eval()
    load_backbone_weights(model, t_weights)
    for blk in model.block1:
        blk.attn.forward = lambda y, a=blk.attn: a.proj_2(a.spatial_gating_unit(a.activation(a.proj_1(y))))
    with torch.no_grad():
        out = model.forward_intermediates(x, intermediates_only=True)
    assert not _close(out[0], ref[0])


# ---- layouts -----------------------------------------------------------------------------------------------------
def _layouts(sd, ema):
    backbone = {k: v for k, v in sd.items() if not k.startswith("head.")}
    return {
        "plain": (sd, sd),
        "state_dict": ({"state_dict": sd, "optimizer": {"lr": 0.1}, "epoch": 3}, sd),
        "state_dict_ema": ({"state_dict": sd, "state_dict_ema": ema, "optimizer": {}}, ema),
        "model": ({"model": sd}, sd),
        "module": ({"state_dict": {"module." + k: v for k, v in sd.items()}}, sd),
        "mmrotate": (
            {
                "meta": {"epoch": 12, "CLASSES": ("plane", "ship"), "mmcv_version": "1.6.0"},
                "state_dict": {
                    **{"backbone." + k: v for k, v in backbone.items()},
                    "neck.lateral_convs.0.conv.weight": torch.zeros(256, 32, 1, 1),
                    "rpn_head.rpn_cls.weight": torch.zeros(3, 256, 1, 1),
                },
            },
            backbone,
        ),
    }


@pytest.mark.parametrize("layout", ["plain", "state_dict", "state_dict_ema", "model", "module", "mmrotate"])
def test_every_official_layout_loads(tmp_path, t_weights, t_ema_weights, layout, caplog):
    obj, expected = _layouts(t_weights, t_ema_weights)[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(obj, path)
    assert read_checkpoint(path).keys() == expected.keys()
    caplog.set_level(logging.WARNING)
    model = lsknet.create_model("lsknet_t", checkpoint=path)
    got = model.state_dict()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    if layout == "mmrotate":  # detector file has no head: the model keeps its own and says so
        assert "head" in caplog.text
    # the same file through timm's own pretrained mechanism
    via_timm = timm.create_model("lsknet_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for k, v in expected.items():
        assert torch.equal(via_timm.state_dict()[k], v), k


def test_ema_can_be_declined(tmp_path, t_weights, t_ema_weights):
    path = tmp_path / "ema.pth"
    torch.save({"state_dict": t_weights, "state_dict_ema": t_ema_weights}, path)
    raw = read_checkpoint(path, use_ema=False)
    assert torch.equal(raw["patch_embed1.proj.weight"], t_weights["patch_embed1.proj.weight"])


def test_features_only_and_new_head_load_backbone(tmp_path, t_weights):
    path = tmp_path / "t.pth"
    torch.save({"state_dict": t_weights}, path)
    x = _x()
    ref, _ = reference_lsknet(t_weights, x, DEPTHS["lsknet_t"], with_head=False)
    feats = lsknet.create_model("lsknet_t", checkpoint=path, features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        out = feats(x)
    assert _close(out[0], ref[1]) and _close(out[1], ref[3])
    timm_feats = timm.create_model(
        "lsknet_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), features_only=True
    ).eval()
    with torch.no_grad():
        assert all(_close(a, b) for a, b in zip(timm_feats(x), ref))
    clf = lsknet.create_model("lsknet_t", checkpoint=path, num_classes=30)  # head skipped, backbone loaded
    assert clf.head.weight.shape == (30, 256)
    assert torch.equal(clf.state_dict()["block3.4.mlp.fc2.weight"], t_weights["block3.4.mlp.fc2.weight"])
    report = load_backbone_weights(clf, t_weights)
    assert report.head.startswith("skipped")


def test_in_chans_adapts_first_conv(tmp_path, t_weights):
    path = tmp_path / "t.pth"
    torch.save(t_weights, path)
    w = t_weights["patch_embed1.proj.weight"]
    for make in (
        lambda: lsknet.create_model("lsknet_t", checkpoint=path, in_chans=4),
        lambda: timm.create_model("lsknet_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), in_chans=4),
    ):
        got = make().state_dict()["patch_embed1.proj.weight"]
        # repeat the RGB filters cyclically (R, G, B, R) and rescale by 3/4 so activations keep their magnitude
        expected = torch.cat([w, w[:, :1]], dim=1) * 3 / 4
        assert got.shape == (32, 4, 7, 7) and torch.allclose(got, expected)
    gray = lsknet.create_model("lsknet_t", checkpoint=path, in_chans=1).state_dict()["patch_embed1.proj.weight"]
    assert torch.allclose(gray, w.sum(1, keepdim=True))


# ---- errors ------------------------------------------------------------------------------------------------------
def test_missing_file_is_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        lsknet.create_model("lsknet_t", checkpoint=tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")


def test_t_file_into_s_model_names_the_keys(tmp_path, t_weights):
    path = tmp_path / "t.pth"
    torch.save({"state_dict": t_weights}, path)
    with pytest.raises(CheckpointError, match=r"patch_embed1\.proj\.weight.*\(32, 3, 7, 7\).*\(64, 3, 7, 7\)"):
        lsknet.create_model("lsknet_s", checkpoint=path)
    with pytest.raises(CheckpointError, match="variant"):
        timm.create_model("lsknet_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_missing_key_is_named(tmp_path, t_weights):
    broken = dict(t_weights)
    del broken["block2.1.attn.spatial_gating_unit.conv_squeeze.weight"]
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"missing key.*block2\.1\.attn\.spatial_gating_unit\.conv_squeeze"):
        lsknet.create_model("lsknet_t", checkpoint=path)


def test_unsafe_or_corrupt_files_are_refused(tmp_path, t_weights):
    torch.save({"state_dict": t_weights, "obj": logging.Formatter()}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="unpickle"):
        read_checkpoint(tmp_path / "unsafe.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_checkpoint(tmp_path / "junk.pth")
    torch.save({"epoch": 1, "optimizer": {}}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no weights"):
        read_checkpoint(tmp_path / "empty.pth")


def test_unknown_model_name():
    with pytest.raises(lsknet.ConfigError, match="lsknet_t"):
        lsknet.create_model("lsknet_xl")


def test_generic_load_checkpoint_for_non_backbone_models(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    torch.save({"state_dict": {"module." + k: v + 1 for k, v in net.state_dict().items()}}, tmp_path / "n.pth")
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    lsknet.load_checkpoint(other, tmp_path / "n.pth")
    assert torch.equal(other[0].weight, net[0].weight + 1)
    wrong = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3))
    with pytest.raises(CheckpointError, match=r"0\.weight"):
        lsknet.load_checkpoint(wrong, tmp_path / "n.pth")


def test_real_world_metadata_loads(tmp_path, t_weights):
    """timm training files carry argparse ``args``; MMCV ``meta`` may hold NumPy scalars. Both are plain data."""
    import argparse

    import numpy as np

    meta = {"hook_msgs": {"best_score": np.float64(0.81), "best_epoch": np.int64(11)}, "dtype": np.dtype("float32")}
    torch.save(
        {"state_dict": t_weights, "args": argparse.Namespace(lr=1e-3, model="lsk_t"), "meta": meta}, tmp_path / "c.pth"
    )
    loaded = read_checkpoint(tmp_path / "c.pth")
    assert torch.equal(loaded["patch_embed1.proj.weight"], t_weights["patch_embed1.proj.weight"])
