"""optimize_for_inference: the folded channels-last copy computes the same function as the eager model."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import lsknet
from lsknet.inference.optimize import _dw_dilated3, optimize_for_inference


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, incl. BN statistics and large layer scales, so every folded term matters."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = v
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=gen) + 0.5
        elif "layer_scale" in k:
            sd[k] = torch.randn(v.shape, generator=gen) * 0.5
        elif "norm" in k:
            sd[k] = torch.randn(v.shape, generator=gen) * 0.3 + (1.0 if k.endswith("weight") else 0.0)
        else:
            sd[k] = torch.randn(v.shape, generator=gen) / math.sqrt(v[0].numel() if v.ndim > 1 else 1)
    model.load_state_dict(sd)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name,size", [("lsknet_t", (64, 64)), ("lsknet_t", (70, 95)), ("lsknet_s", (32, 40))])
def test_same_function_as_eager(name, size):
    model = _randomize(timm.create_model(name, num_classes=10), seed=0).eval()
    fast = optimize_for_inference(model)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(x), fast(x)
        ref_feats = model.forward_intermediates(x, intermediates_only=True)
        got_feats = fast.forward_features(x)
    assert got.shape == ref.shape and _rel(got, ref) < 1e-4
    for r, g in zip(ref_feats, got_feats):
        assert g.shape == r.shape and _rel(g, r) < 1e-4


def test_features_only_and_multispectral_models():
    model = _randomize(timm.create_model("lsknet_t", features_only=True, out_indices=(1, 3), in_chans=4), 2).eval()
    fast = optimize_for_inference(model)
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        ref, got = model(x), fast(x)
    assert len(got) == 2 and all(_rel(g, r) < 1e-4 for g, r in zip(got, ref))


def test_source_model_untouched_and_copy_is_eval_without_grad():
    model = timm.create_model("lsknet_t", num_classes=0)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    assert model.training and not fast.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in fast.parameters())
    with pytest.raises(TypeError):
        optimize_for_inference(torch.nn.Conv2d(3, 3, 1))
    assert lsknet.optimize_for_inference is optimize_for_inference


@pytest.mark.parametrize("h,w", [(9, 9), (10, 14), (31, 7), (2, 5)])
def test_polyphase_dilated_conv_is_exact(h, w):
    x = torch.randn(2, h, w, 6)
    weight, bias = torch.randn(6, 1, 7, 7), torch.randn(6)
    ref = F.conv2d(x.permute(0, 3, 1, 2).contiguous(), weight, bias, padding=9, dilation=3, groups=6)
    got = _dw_dilated3(x, weight, bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 5])
def test_row_banded_mlp_is_exact(rows):
    """The MLP runs over bands of rows with a 1-row halo; any band height must give the same maps."""
    model = _randomize(timm.create_model("lsknet_t", num_classes=0), seed=4).eval()
    fast = optimize_for_inference(model)
    for stage in fast.stages:
        for blk in stage.blocks:
            blk.band_rows = rows
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        got = fast.forward_features(x)
    assert all(_rel(g, r) < 1e-4 for g, r in zip(got, ref))


def test_plain_op_path_matches_too(monkeypatch):
    """Without oneDNN's fused kernels (GPU, other builds, float64) the plain-op path gives the same function."""
    import lsknet.inference.optimize as opt

    monkeypatch.setattr(opt, "_FUSED_OK", False)
    model = _randomize(timm.create_model("lsknet_t", num_classes=4), seed=5).eval().double()
    fast = optimize_for_inference(model)
    x = torch.randn(1, 3, 40, 56, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(fast(x), model(x)) < 1e-10
